"""The TTS stage served by an OpenAI-compatible ``/audio/speech`` endpoint.

We ask for ``response_format: "pcm"``: raw samples need no decoder and can be played the moment
they arrive, whereas mp3/opus/wav would have to be buffered up to a frame or header boundary. We
read the body as the peer sends it (chunked transfer) and yield each piece as audio at once; a
network read can end in the middle of a sample, so an odd trailing byte is carried to the next
piece.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx

from models._hosted_http import HostedClient, PeerProtocolError
from pipeline.audio import decode_pcm16
from pipeline.settings import HostedSettings
from pipeline.stages import TTS
from pipeline.types import AudioChunk, TTSCapabilities

log = logging.getLogger("voxline.hosted")

DEFAULT_MODEL = "tts-1"
"""Model name sent when the settings name none."""
DEFAULT_VOICE = "alloy"
"""Voice sent when neither the call nor the settings name one."""
OPENAI_PCM_SAMPLE_RATE = 24_000
"""OpenAI's ``pcm`` format: 16-bit little-endian mono at 24 kHz, no header."""

# Containers a peer may send when it ignored response_format; read as pcm they would be noise.
_NOT_PCM = ("audio/mpeg", "audio/wav", "audio/x-wav", "audio/ogg", "audio/flac", "audio/aac")


class HostedTTS(TTS):
    """Speech from an OpenAI-compatible endpoint, streamed as raw PCM.

    Args:
        settings: Endpoint, key, model, default voice and timeouts.
        sample_rate: The rate of the peer's ``pcm`` output. OpenAI's is 24 kHz; a peer that sends
            its model's native rate instead must be configured with that rate.
        max_input_chars: The longest input sent in one request (OpenAI's limit is 4096).
        transport: An httpx transport to use instead of the network.

    Raises:
        ModelLoadError: no usable base URL is configured.
    """

    def __init__(
        self,
        settings: HostedSettings,
        *,
        sample_rate: int = OPENAI_PCM_SAMPLE_RATE,
        max_input_chars: int = 4096,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = HostedClient(
            settings, stage="tts", default_model=DEFAULT_MODEL, transport=transport
        )
        super().__init__(name=self._client.name, device="remote")
        self._default_voice = settings.voice or DEFAULT_VOICE
        # voices=(): the peer's voice list is unknown here, so any name is passed through.
        self.capabilities = TTSCapabilities(
            sample_rate=sample_rate, streaming=True, max_input_chars=max_input_chars
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

    def _synthesize(
        self, text: str, voice: str | None, speed: float, language: str | None = None
    ) -> AsyncIterator[AudioChunk]:
        body: dict[str, Any] = {
            "model": self._client.model,
            "input": text,
            "voice": voice or self._default_voice,
            "response_format": "pcm",
        }
        if speed != 1.0:
            body["speed"] = speed
        return self._client.retrying(lambda: self._attempt(body))

    async def _attempt(self, body: dict[str, Any]) -> AsyncGenerator[AudioChunk, None]:
        rate = self.capabilities.sample_rate
        async with self._client.open("POST", "/audio/speech", json=body) as response:
            content_type = response.headers.get("content-type", "").split(";")[0].strip()
            if content_type in _NOT_PCM or content_type.startswith("application/json"):
                raise PeerProtocolError(f"asked for pcm, the peer sent {content_type}")
            carry = b""
            received = 0
            async for data in response.aiter_bytes():
                received += len(data)
                data = carry + data
                whole = len(data) - len(data) % 2
                carry = data[whole:]
                if whole:
                    yield decode_pcm16(data[:whole], rate)
        if not received:
            raise PeerProtocolError("the peer answered with no audio")
        if carry:
            log.warning("%s: dropped a trailing odd byte of pcm", self.name)
