"""The LLM stage served by an OpenAI-compatible ``/chat/completions`` endpoint.

Always streamed: a voice turn speaks the first phrase while the rest is still being generated, so
a non-streamed answer would cost the whole generation time in latency. We ask for
``stream_options.include_usage`` so the last delta can carry token counts; a peer that ignores the
option (some do) simply leaves ``usage`` unset on it rather than us inventing numbers.

Function tools pass through: ``tools`` and ``tool_choice`` go to the peer in OpenAI's Chat shape,
the conversation's calls and results too, and the peer's streamed ``delta.tool_calls`` come back
as ``ToolCallDelta`` pieces (checked against their schemas by the stage base class like any
engine's).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

import httpx

from models._hosted_http import (
    HostedClient,
    PeerProtocolError,
    iter_sse_data,
    json_object,
    raise_for_error_event,
)
from models._tool_prompt import tool_specs
from pipeline.settings import HostedSettings
from pipeline.stages import LLM
from pipeline.tool_calls import new_call_id
from pipeline.types import (
    ForcedTool,
    GenerationParams,
    LLMCapabilities,
    Message,
    TextDelta,
    ToolCallDelta,
    Usage,
)

DEFAULT_MODEL = "gpt-4o-mini"
"""Model name sent when the settings name none."""


class HostedLLM(LLM):
    """Chat completions from an OpenAI-compatible endpoint, streamed over server-sent events.

    Args:
        settings: Endpoint, key, model and timeouts.
        defaults: Sampling options used where a call's ``GenerationParams`` leaves a field unset;
            a field unset in both is left out of the request (the peer's default applies).
        context_tokens: The peer model's context window, declared in ``capabilities``.
        transport: An httpx transport to use instead of the network.

    Raises:
        ModelLoadError: no usable base URL is configured.
    """

    def __init__(
        self,
        settings: HostedSettings,
        *,
        defaults: GenerationParams | None = None,
        context_tokens: int = 2048,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = HostedClient(
            settings, stage="llm", default_model=DEFAULT_MODEL, transport=transport
        )
        super().__init__(name=self._client.name, device="remote")
        self._defaults = defaults or GenerationParams()
        self.capabilities = LLMCapabilities(
            streaming=True, context_tokens=context_tokens, tools=True
        )

    @property
    def model(self) -> str:
        """The model name sent to the peer."""
        return self._client.model

    async def probe(self) -> tuple[str, ...]:
        """The model ids the peer serves (``GET /models``); a ``StageError`` if it is down."""
        return await self._client.probe()

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()

    def _stream(
        self, messages: list[Message], params: GenerationParams
    ) -> AsyncIterator[TextDelta]:
        body = self._request_body(messages, params)
        return self._client.retrying(lambda: self._attempt(body))

    def _request_body(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._client.model,
            "messages": [_message(m) for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        d = self._defaults
        options = {
            "max_tokens": params.max_tokens if params.max_tokens is not None else d.max_tokens,
            "temperature": params.temperature if params.temperature is not None else d.temperature,
            "top_p": params.top_p if params.top_p is not None else d.top_p,
            "seed": params.seed if params.seed is not None else d.seed,
        }
        body.update({k: v for k, v in options.items() if v is not None})
        stop = params.stop or d.stop
        if stop:
            body["stop"] = list(stop)
        if params.tools:
            body["tools"] = tool_specs(params.tools)
            choice = params.tool_choice
            body["tool_choice"] = (
                {"type": "function", "function": {"name": choice.name}}
                if isinstance(choice, ForcedTool)
                else choice
            )
        return body

    async def _attempt(self, body: dict[str, Any]) -> AsyncGenerator[TextDelta, None]:
        usage: Usage | None = None
        finish: str | None = None
        done = False
        calls = _Calls()
        async with self._client.open("POST", "/chat/completions", json=body) as response:
            async for data in iter_sse_data(response):
                if data == "[DONE]":
                    done = True
                    break
                event = json_object(data)
                raise_for_error_event(event)
                for choice in event.get("choices") or ():
                    delta = choice.get("delta") or {}
                    text = delta.get("content")
                    if text:
                        yield TextDelta(str(text))
                    for piece in delta.get("tool_calls") or ():
                        yield TextDelta("", tool_call=calls.piece(piece))
                    finish = choice.get("finish_reason") or finish
                if event.get("usage"):
                    usage = _usage(event["usage"])
        if not done and finish is None:
            # The body ended cleanly but early: a proxy cut it, or the peer gave up.
            raise PeerProtocolError("the stream ended before a finish_reason or [DONE]")
        yield TextDelta("", usage=usage, finish_reason=_finish_reason(finish))


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        raise PeerProtocolError(f"usage is not an object: {raw!r}")
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
    )


def _finish_reason(raw: str | None) -> Literal["stop", "length", "tool_calls"]:
    # Our contract knows stop, length and tool_calls; content_filter etc. all ended the text.
    if raw in ("length", "tool_calls"):
        return raw  # type: ignore[return-value]  # narrowed by the membership test
    return "stop"


def _message(m: Message) -> dict[str, Any]:
    """A message in OpenAI's Chat shape."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["content"] = m.content or None
        out["tool_calls"] = [
            {
                "id": c.call_id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


class _Calls:
    """The peer's streamed ``tool_calls`` pieces: the first piece of a call has its id and
    name, the next ones (same ``index``) only argument text."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[str, str]] = {}

    def piece(self, raw: object) -> ToolCallDelta:
        if not isinstance(raw, dict) or not isinstance(raw.get("index", 0), int):
            raise PeerProtocolError(f"a tool call piece is not an object: {raw!r}"[:200])
        index = int(raw.get("index", 0))
        function = raw.get("function") or {}
        if index not in self._known:
            call_id, name = raw.get("id"), function.get("name")
            if not isinstance(name, str):
                raise PeerProtocolError("the first piece of a tool call has no function name")
            self._known[index] = (str(call_id or new_call_id()), name)
        call_id, name = self._known[index]
        arguments = function.get("arguments") or ""
        return ToolCallDelta(index, call_id, name, str(arguments))
