"""``POST /v1/chat/completions``: the LLM stage behind OpenAI's chat API, streamed or not.

The request is validated completely (``validate_chat``, the same check every engine runs) before
any engine work, so a bad request costs nothing and is a 400 in OpenAI's error shape. A streamed
answer waits for the first delta before it sends its headers: errors the engine raises before
producing anything (a conversation longer than the context, an engine down) are then still a
proper HTTP status rather than an error event behind a 200. Once streaming has started, an engine
error becomes an SSE ``error`` event (OpenAI's error object) and the stream ends without
``[DONE]``. A client that goes away closes the stream (or cancels a non-streamed answer), which
stops the LLM's worker thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from pipeline.errors import VoxlineError
from pipeline.types import TextDelta
from server.accounting import metered
from server.errors import body_of, error_body
from server.logging_setup import current_request_id
from server.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatUsage,
    Choice,
    ChunkChoice,
    ChunkDelta,
    FinishReason,
    completion_id,
    now,
)
from server.state import release_of, state_of
from server.streaming import EventStream, cancel_on_disconnect, client_gone, sse

log = logging.getLogger("voxline.server.chat")

router = APIRouter()


def _finish(delta: TextDelta | None) -> FinishReason:
    return "length" if delta is not None and delta.finish_reason == "length" else "stop"


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
    engines, llm = live.engines, live.settings.llm
    # the release's sampling defaults, not the engine's own: releases share an engine
    params = dataclasses.replace(
        params,
        max_tokens=params.max_tokens or llm.max_tokens,
        temperature=llm.temperature if params.temperature is None else params.temperature,
        top_p=llm.top_p if params.top_p is None else params.top_p,
    )
    model = body.model or llm.model
    state = state_of(request)

    async def charge(_: list[TextDelta], __: float) -> None:
        await state.accounting.settle(current_request_id() or completion_id())

    deltas = metered(engines.llm.stream(messages, params), charge)
    if not body.stream:
        try:
            return await cancel_on_disconnect(request, _complete(deltas, model))
        except ClientDisconnect:
            return client_gone()
    try:
        first: TextDelta | None = await anext(deltas)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await deltas.aclose()
        raise
    chunks = _chunks(first, deltas, model, include_usage=body.include_usage)
    return EventStream(chunks, on_close=deltas.aclose)


async def _complete(deltas: AsyncGenerator[TextDelta, None], model: str) -> ChatCompletion:
    parts: list[str] = []
    last: TextDelta | None = None
    async with contextlib.aclosing(deltas):
        async for delta in deltas:
            parts.append(delta.text)
            if delta.usage is not None or delta.finish_reason is not None:
                last = delta
    return ChatCompletion(
        id=completion_id(),
        created=now(),
        model=model,
        choices=[
            Choice(message=AssistantMessage(content="".join(parts)), finish_reason=_finish(last))
        ],
        usage=_usage(last),
    )


async def _chunks(
    first: TextDelta | None,
    deltas: AsyncGenerator[TextDelta, None],
    model: str,
    *,
    include_usage: bool,
) -> AsyncGenerator[bytes, None]:
    """The SSE body: role chunk, content chunks, finish chunk, usage chunk, ``[DONE]``."""
    cid, created = completion_id(), now()
    # OpenAI sends "usage": null on every chunk when usage was asked for, and no key otherwise.
    exclude = None if include_usage else {"usage"}

    def chunk(choices: list[ChunkChoice], usage: ChatUsage | None = None) -> bytes:
        out = ChatCompletionChunk(
            id=cid, created=created, model=model, choices=choices, usage=usage
        )
        return sse(out.model_dump_json(exclude=exclude))

    async with contextlib.aclosing(deltas):
        yield chunk([ChunkChoice(delta=ChunkDelta(role="assistant", content=""))])
        last: TextDelta | None = None
        try:
            delta = first
            while delta is not None:
                if delta.text:
                    yield chunk([ChunkChoice(delta=ChunkDelta(content=delta.text))])
                if delta.usage is not None or delta.finish_reason is not None:
                    last = delta
                delta = await anext(deltas, None)
        except VoxlineError as exc:
            yield sse(body_of(exc), event="error")
            return
        except Exception:  # a bug: the client gets a generic error, the log the traceback
            log.exception("chat stream failed")
            yield sse(error_body("internal server error", type_="server_error"), event="error")
            return
        yield chunk([ChunkChoice(delta=ChunkDelta(), finish_reason=_finish(last))])
        if include_usage:
            yield chunk([], usage=_usage(last))
        yield sse("[DONE]")
