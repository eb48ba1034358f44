"""``POST /v1/chat/completions``: the LLM stage behind OpenAI's chat API, streamed or not.

The request is validated completely (``validate_chat``, the same check every engine runs) before
any engine work, so a bad request costs nothing and is a 400 in OpenAI's error shape. A streamed
answer waits for the first delta before it sends its headers: errors the engine raises before
producing anything (a conversation longer than the context, an engine down) are then still a
proper HTTP status rather than an error event behind a 200. Once streaming has started, an engine
error becomes an SSE ``error`` event (OpenAI's error object) and the stream ends without
``[DONE]``. A client that goes away closes the stream (or cancels a non-streamed answer), which
stops the LLM's worker thread.

Function tools (``tools``, ``tool_choice``; docs/tools.md): the reply's calls are
``message.tool_calls`` with ``finish_reason: "tool_calls"``. Streamed, a call's id and name go
out as soon as the model has chosen the function, and its arguments once they are checked
against the schema (one chunk per call): Chat clients concatenate argument pieces, so a call
repaired after a bad first attempt must not have sent any. A call still invalid after its repair
is a 502 (``llm_InvalidToolCall``), or an ``error`` event once the stream has started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from pipeline.errors import InvalidInput, VoxlineError
from pipeline.router import Route
from pipeline.tool_calls import must_call
from pipeline.types import TextDelta
from server.accounting import metered
from server.chat_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatUsage,
    Choice,
    ChunkChoice,
    ChunkDelta,
    FinishReason,
    FunctionCallOut,
    ToolCallOut,
    completion_id,
    now,
)
from server.errors import body_of, error_body
from server.logging_setup import current_request_id
from server.state import release_of, state_of
from server.streaming import EventStream, cancel_on_disconnect, client_gone, sse
from server.turn_schemas import route_json

log = logging.getLogger("voxline.server.chat")

router = APIRouter()


def _finish(delta: TextDelta | None) -> FinishReason:
    if delta is not None and delta.finish_reason in ("length", "tool_calls"):
        return "tool_calls" if delta.finish_reason == "tool_calls" else "length"
    return "stop"


def _checked_calls(delta: TextDelta, named: set[int]) -> list[ToolCallOut]:
    """The streamed chunk of each checked call: its arguments (and its id and name too when
    they were never announced: a peer that sent the call whole at the end)."""
    out = []
    for i, done in enumerate(delta.tool_calls):
        if i in named:
            out.append(ToolCallOut(index=i, function=FunctionCallOut(arguments=done.arguments)))
        else:
            function = FunctionCallOut(name=done.name, arguments=done.arguments)
            out.append(ToolCallOut(index=i, id=done.call_id, type="function", function=function))
    return out


def _calls_out(delta: TextDelta | None) -> list[ToolCallOut] | None:
    if delta is None or not delta.tool_calls:
        return None
    return [
        ToolCallOut(
            id=c.call_id,
            type="function",
            function=FunctionCallOut(name=c.name, arguments=c.arguments),
        )
        for c in delta.tool_calls
    ]


def _usage(delta: TextDelta | None) -> ChatUsage:
    usage = delta.usage if delta is not None else None
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    return ChatUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request
) -> ChatCompletion | EventStream | Response:
    """Answer a conversation, as one ``chat.completion`` or as SSE ``chat.completion.chunk`` s.

    Raises:
        InvalidInput: a field no engine should see (400, before any engine work).
        StageError: the LLM failed before producing anything (5xx).
    """
    messages, params = body.to_pipeline()
    live = release_of(request)
    engines, defaults = live.engines, live.settings.llm
    # the release's sampling defaults, not the engine's own: releases share an engine
    params = dataclasses.replace(
        params,
        max_tokens=params.max_tokens or defaults.max_tokens,
        temperature=defaults.temperature if params.temperature is None else params.temperature,
        top_p=defaults.top_p if params.top_p is None else params.top_p,
    )
    model = body.model or defaults.model
    state = state_of(request)

    async def charge(_: list[TextDelta], __: float) -> None:
        await state.accounting.settle(current_request_id() or completion_id())

    llm, route = engines.llm, None
    if engines.router is not None:
        # ``model`` naming a tier pins it; any other model name leaves the choice to the router
        route = engines.router.route(messages, params, pinned=body.model)
        llm = engines.router.llm(route)
        state.observe_route(route, "chat completion")
    if must_call(params) and not llm.capabilities.tools:
        raise InvalidInput(
            "this server's model cannot call functions: use tool_choice 'auto'",
            param="tool_choice",
        )
    deltas = metered(llm.stream(messages, params), charge)
    if not body.stream:
        try:
            return await cancel_on_disconnect(request, _complete(deltas, model, route))
        except ClientDisconnect:
            return client_gone()
    try:
        first: TextDelta | None = await anext(deltas)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await deltas.aclose()
        raise
    chunks = _chunks(first, deltas, model, include_usage=body.include_usage, route=route)
    return EventStream(chunks, on_close=deltas.aclose)


async def _complete(
    deltas: AsyncGenerator[TextDelta, None], model: str, route: Route | None
) -> ChatCompletion:
    parts: list[str] = []
    last: TextDelta | None = None
    async with contextlib.aclosing(deltas):
        async for delta in deltas:
            parts.append(delta.text)
            if delta.usage is not None or delta.finish_reason is not None:
                last = delta
    calls = _calls_out(last)
    content = "".join(parts)
    message = AssistantMessage(content=(content or None) if calls else content, tool_calls=calls)
    return ChatCompletion(
        id=completion_id(),
        created=now(),
        model=model,
        choices=[Choice(message=message, finish_reason=_finish(last))],
        usage=_usage(last),
        voxline=route_json(route) or None,
    )


async def _chunks(
    first: TextDelta | None,
    deltas: AsyncGenerator[TextDelta, None],
    model: str,
    *,
    include_usage: bool,
    route: Route | None = None,
) -> AsyncGenerator[bytes, None]:
    """The SSE body: role chunk, content chunks, finish chunk, usage chunk, ``[DONE]``."""
    cid, created = completion_id(), now()
    # OpenAI sends "usage": null on every chunk when usage was asked for, and no key otherwise.
    exclude = None if include_usage else {"usage"}

    def chunk(
        choices: list[ChunkChoice],
        usage: ChatUsage | None = None,
        voxline: dict[str, str] | None = None,
    ) -> bytes:
        out = ChatCompletionChunk(
            id=cid, created=created, model=model, choices=choices, usage=usage, voxline=voxline
        )
        return sse(out.model_dump_json(exclude=exclude))

    async with contextlib.aclosing(deltas):
        yield chunk([ChunkChoice(delta=ChunkDelta(role="assistant", content=""))])
        last: TextDelta | None = None
        named: set[int] = set()  # calls whose id and name were sent
        try:
            delta = first
            while delta is not None:
                piece = delta.tool_call
                if piece is not None and not piece.arguments and piece.index not in named:
                    # the function is chosen: its id and name go out now, its arguments once
                    # they are checked (see the module docstring)
                    named.add(piece.index)
                    call = ToolCallOut(
                        index=piece.index,
                        id=piece.call_id,
                        type="function",
                        function=FunctionCallOut(name=piece.name, arguments=""),
                    )
                    yield chunk([ChunkChoice(delta=ChunkDelta(tool_calls=[call]))])
                if delta.text:
                    yield chunk([ChunkChoice(delta=ChunkDelta(content=delta.text))])
                if delta.usage is not None or delta.finish_reason is not None:
                    last = delta
                    for call in _checked_calls(delta, named):
                        yield chunk([ChunkChoice(delta=ChunkDelta(tool_calls=[call]))])
                delta = await anext(deltas, None)
        except VoxlineError as exc:
            yield sse(body_of(exc), event="error")
            return
        except Exception:  # a bug: the client gets a generic error, the log the traceback
            log.exception("chat stream failed")
            yield sse(error_body("internal server error", type_="server_error"), event="error")
            return
        finish = ChunkChoice(delta=ChunkDelta(), finish_reason=_finish(last))
        yield chunk([finish], voxline=route_json(route) or None)
        if include_usage:
            yield chunk([], usage=_usage(last))
        yield sse("[DONE]")
