"""The LLM stage served by an OpenAI-compatible ``/chat/completions`` endpoint.

Always streamed: a voice turn speaks the first phrase while the rest is still being generated, so
a non-streamed answer would cost the whole generation time in latency. We ask for
``stream_options.include_usage`` so the last delta can carry token counts; a peer that ignores the
option (some do) simply leaves ``usage`` unset on it rather than us inventing numbers.
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
from pipeline.settings import HostedSettings
from pipeline.stages import LLM
from pipeline.types import GenerationParams, LLMCapabilities, Message, TextDelta, Usage

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
        self.capabilities = LLMCapabilities(streaming=True, context_tokens=context_tokens)

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
            "messages": [{"role": m.role, "content": m.content} for m in messages],
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
        return body

    async def _attempt(self, body: dict[str, Any]) -> AsyncGenerator[TextDelta, None]:
        usage: Usage | None = None
        finish: str | None = None
        done = False
        async with self._client.open("POST", "/chat/completions", json=body) as response:
            async for data in iter_sse_data(response):
                if data == "[DONE]":
                    done = True
                    break
                event = json_object(data)
                raise_for_error_event(event)
                for choice in event.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield TextDelta(str(text))
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


def _finish_reason(raw: str | None) -> Literal["stop", "length"]:
    # Our contract knows stop and length; content_filter, tool_calls etc. all ended the text.
    return "length" if raw == "length" else "stop"
