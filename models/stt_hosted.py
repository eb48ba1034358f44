"""The STT stage served by an OpenAI-compatible ``/audio/transcriptions`` endpoint.

We upload 16 kHz 16-bit wav: every Whisper-family server decodes it, and it is what those models
consume, so nothing is resampled twice. We ask for ``stream=true``: peers that can stream a
transcript (OpenAI's gpt-4o-transcribe models, speaches, vLLM) answer with server-sent
``transcript.text.delta`` / ``transcript.text.done`` events and we yield partials from them; peers
that cannot (whisper-1 ignores the flag) answer plain JSON, and we yield the final alone. We tell
the two apart by the response's content type, never by the model name.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx

from models._hosted_http import (
    HostedClient,
    PeerProtocolError,
    iter_sse_data,
    json_object,
    raise_for_error_event,
)
from pipeline.audio import encode_wav
from pipeline.settings import HostedSettings
from pipeline.stages import STT
from pipeline.types import AudioChunk, STTCapabilities, Transcript

DEFAULT_MODEL = "whisper-1"
"""Model name sent when the settings name none."""


class HostedSTT(STT):
    """Transcription by an OpenAI-compatible endpoint.

    Args:
        settings: Endpoint, key, model and timeouts.
        stream: Ask the peer to stream the transcript (``stream=true``). Turn it off for a peer
            that rejects the field instead of ignoring it.
        transport: An httpx transport to use instead of the network.

    Raises:
        ModelLoadError: no usable base URL is configured.
    """

    def __init__(
        self,
        settings: HostedSettings,
        *,
        stream: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = HostedClient(
            settings, stage="stt", default_model=DEFAULT_MODEL, transport=transport
        )
        super().__init__(name=self._client.name, device="remote")
        self._streaming = stream
        self.capabilities = STTCapabilities(partials=stream)

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

    def _transcribe(
        self, audio: AudioChunk, *, language: str | None, prompt: str | None
    ) -> AsyncIterator[Transcript]:
        fields = {"model": self._client.model, "response_format": "json"}
        if language:
            fields["language"] = language
        if prompt:
            fields["prompt"] = prompt
        if self._streaming:
            fields["stream"] = "true"
        wav = encode_wav(audio)
        return self._client.retrying(lambda: self._attempt(wav, fields, language, audio.duration))

    async def _attempt(
        self, wav: bytes, fields: dict[str, str], language: str | None, seconds: float
    ) -> AsyncGenerator[Transcript, None]:
        files = {"file": ("audio.wav", wav, "audio/wav")}
        async with self._client.open(
            "POST", "/audio/transcriptions", data=fields, files=files
        ) as response:
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                async for transcript in _read_events(response, language, seconds):
                    yield transcript
                return
            await response.aread()
            body = json_object(response.text)
            raise_for_error_event(body)
            yield Transcript(
                _text(body), final=True, language=_language(body, language), audio_seconds=seconds
            )


async def _read_events(
    response: httpx.Response, language: str | None, seconds: float
) -> AsyncIterator[Transcript]:
    text = ""
    async for data in iter_sse_data(response):
        if data == "[DONE]":
            break
        event = json_object(data)
        raise_for_error_event(event)
        kind = event.get("type")
        if kind == "transcript.text.delta":
            text += str(event.get("delta") or "")
            yield Transcript(text.strip(), final=False, language=language, audio_seconds=seconds)
        elif kind == "transcript.text.done":
            final = _text(event)
            yield Transcript(final, final=True, language=language, audio_seconds=seconds)
            return
    raise PeerProtocolError("the transcript stream ended without transcript.text.done")


def _text(body: dict[str, Any]) -> str:
    text = body.get("text")
    if not isinstance(text, str):
        raise PeerProtocolError("the transcription has no 'text'")
    return text.strip()


def _language(body: dict[str, Any], asked: str | None) -> str | None:
    # verbose_json peers report the language; plain json ones do not, so keep what was asked.
    found = body.get("language")
    return found if isinstance(found, str) and found else asked
