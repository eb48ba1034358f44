"""The one realtime client: a voxline (or any OpenAI Realtime) session over the WebSocket.

The demo, the benchmark and the tests all talk to ``/v1/realtime`` through ``RealtimeClient``, so
the socket, the session configuration and the real-time pacing of audio are written once. The
client speaks the way a microphone does: pcm16 frames of ``frame_ms`` sent on a real-time
schedule (``stream_frames``), never dumped at once (which would make the server's endpoint delay
meaningless). Everything the server says arrives on one reader task and is queued with its
arrival time on the client's clock, so a caller can time what a user would hear.

The protocol is the OpenAI Realtime API (GA event names): ``session.update`` and
``input_audio_buffer.append`` (base64 pcm16 mono) in; ``session.created``, transcripts,
``response.output_audio.delta``, ``response.done`` (with voxline's ``voxline`` timings) and
``error`` out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from pipeline.audio import resample, to_pcm16
from pipeline.errors import EngineBusy, EngineUnavailable
from pipeline.types import AudioChunk

TRY_AGAIN_LATER = 1013
"""Close code of a session the server could not open now (busy, engines still loading)."""

FRAME_MS = 20
"""Audio per ``input_audio_buffer.append``: what a browser's audio worklet typically sends."""

Event = dict[str, Any]


def realtime_url(url: str) -> str:
    """``ws://host:port/v1/realtime?model=voxline`` from a base URL (http(s) or ws(s), with or
    without the path and the model)."""
    parts = urlsplit(url if "://" in url else f"ws://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if not path.endswith("/realtime"):
        path = (path if path.endswith("/v1") else f"{path}/v1") + "/realtime"
    query = dict(parse_qsl(parts.query))
    query.setdefault("model", "voxline")
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


@dataclass(frozen=True, slots=True)
class Received:
    """A server event and when it arrived (the client's clock)."""

    event: Event
    at: float

    @property
    def type(self) -> str:
        """The event's ``type``."""
        return str(self.event.get("type", ""))


@dataclass(slots=True)
class Tick:
    """One frame of ``stream_frames`` just sent, and the events that arrived before it."""

    index: int
    sent_at: float
    events: list[Received] = field(default_factory=list)


class RealtimeClient:
    """One realtime session: ``async with RealtimeClient(url) as rt: ...``.

    Args:
        url: The server (any form ``realtime_url`` accepts).
        api_key: Sent as ``Authorization: Bearer`` (a server with API keys needs it).
        sample_rate: Input and output pcm16 rate asked for in ``session.update``.
        frame_ms: Audio per append when streaming at real-time pace.
        connect_timeout_s: Seconds to connect and receive ``session.created``.
        clock: Monotonic seconds: pacing and arrival times.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        sample_rate: int = 24_000,
        frame_ms: int = FRAME_MS,
        connect_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.url = realtime_url(url)
        self.api_key = api_key
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.connect_timeout_s = connect_timeout_s
        self.clock = clock
        self.created: Event | None = None
        """The ``session.created`` event."""
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[Received | None] = asyncio.Queue()
        self._closed = False

    @property
    def closed(self) -> bool:
        """The connection is gone (closed by either side)."""
        return self._closed

    @property
    def frame_bytes(self) -> int:
        """Bytes of pcm16 in one frame."""
        return self.sample_rate * self.frame_ms // 1000 * 2

    async def __aenter__(self) -> RealtimeClient:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def connect(self) -> Event:
        """Open the session; returns ``session.created``.

        Raises:
            EngineBusy: the server refused the session for now (503 at the handshake, or
                closed it with 1013 "try again later"); ``retry_after_s`` says when to retry.
            EngineUnavailable: the server cannot be reached, or it opened no session (the
                message carries its ``error`` event, e.g. engines not ready).
        """
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        errors: list[str] = []
        try:
            self._ws = await connect(
                self.url,
                max_size=None,
                open_timeout=self.connect_timeout_s,
                additional_headers=headers,
            )
            self._reader = asyncio.create_task(self._read(), name="realtime-client-reader")
            async with asyncio.timeout(self.connect_timeout_s):
                while (item := await self._inbox.get()) is not None:
                    if item.type == "session.created":
                        self.created = item.event
                        return item.event
                    if item.type == "error":
                        errors.append(error_message(item.event))
        except InvalidStatus as exc:
            await self.aclose()
            response = exc.response
            if response.status_code == 503:
                raise _refused(
                    f"{self.url} refused the session (503): {_error_of(response.body)}",
                    response.headers.get("Retry-After"),
                ) from exc
            raise EngineUnavailable(
                f"cannot open a realtime session at {self.url}: HTTP {response.status_code}",
                stage="pipeline",
                backend="realtime",
                retryable=response.status_code >= 500,
            ) from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            await self.aclose()
            raise EngineUnavailable(
                f"cannot open a realtime session at {self.url}: {type(exc).__name__}: {exc}",
                stage="pipeline",
                backend="realtime",
                retryable=True,
            ) from exc
        code = self._ws.close_code if self._ws is not None else None
        await self.aclose()
        reason = "; ".join(errors) or "it closed the connection"
        if code == TRY_AGAIN_LATER:
            raise _refused(f"{self.url} opened no session, try again later: {reason}", None)
        raise EngineUnavailable(
            f"{self.url} opened no session: {reason}", stage="pipeline", backend="realtime"
        )

    async def send(self, event: Event) -> None:
        """Send one client event (nothing once closed; a failed send marks the client closed)."""
        if self._ws is None or self._closed:
            return
        try:
            await self._ws.send(json.dumps(event))
        except (OSError, WebSocketException):
            self._closed = True

    async def update_session(
        self,
        *,
        instructions: str | None = None,
        voice: str | None = None,
        server_vad: bool = True,
        **fields: Any,
    ) -> None:
        """Send ``session.update``: pcm16 at ``sample_rate`` both ways, server VAD (unless
        ``server_vad`` is false), and the instructions, voice and other session fields given."""
        pcm = {"type": "audio/pcm", "rate": self.sample_rate}
        turn_detection = {"type": "server_vad"} if server_vad else None
        output: dict[str, Any] = {"format": pcm}
        if voice:
            output["voice"] = voice
        session: dict[str, Any] = {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {"input": {"format": pcm, "turn_detection": turn_detection}, "output": output},
            **fields,
        }
        if instructions:
            session["instructions"] = instructions
        await self.send({"type": "session.update", "session": session})

    def pcm(self, audio: AudioChunk) -> bytes:
        """``audio`` as pcm16 bytes at the session's rate."""
        return to_pcm16(resample(audio, self.sample_rate).samples).tobytes()

    def frames(self, pcm: bytes) -> list[bytes]:
        """``pcm`` cut into frames of ``frame_ms``."""
        step = self.frame_bytes
        return [pcm[i : i + step] for i in range(0, len(pcm), step)]

    def silence(self) -> bytes:
        """One frame of silence."""
        return bytes(self.frame_bytes)

    async def append(self, pcm: bytes) -> None:
        """Send audio now (``input_audio_buffer.append``)."""
        await self.send({"type": "input_audio_buffer.append", "audio": _b64(pcm)})

    async def stream_frames(self, frames: Iterable[bytes]) -> AsyncIterator[Tick]:
        """Send ``frames`` at real-time pace (one per ``frame_ms``); after each, yield a ``Tick``
        with the events that arrived while waiting for it. Break out to stop sending."""
        start = self.clock()
        pending: list[Received] = []
        for i, frame in enumerate(frames):
            pending += await self.receive_for(start + i * self.frame_ms / 1000 - self.clock())
            if self._closed:
                return
            await self.append(frame)
            tick = Tick(i, self.clock(), pending)
            pending = []
            yield tick

    async def receive_for(self, seconds: float) -> list[Received]:
        """The events that arrive within ``seconds`` (at least those already here); fewer if
        the connection closes."""
        deadline = self.clock() + max(0.0, seconds)
        out: list[Received] = []
        while not self._closed:
            try:
                item = self._inbox.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._inbox.get(), remaining)
                except TimeoutError:
                    break
            if item is None:
                self._closed = True
                break
            out.append(item)
        return out

    async def aclose(self) -> None:
        """Close the connection and stop reading."""
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            with contextlib.suppress(OSError, WebSocketException):
                await self._ws.close()

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                at = self.clock()
                with contextlib.suppress(ValueError):
                    event = json.loads(message)
                    if isinstance(event, dict):
                        self._inbox.put_nowait(Received(event, at))
        except (OSError, WebSocketException):
            pass
        finally:
            self._inbox.put_nowait(None)


def _refused(message: str, retry_after: str | None) -> EngineBusy:
    try:
        seconds = float(retry_after) if retry_after is not None else None
    except ValueError:  # an HTTP date, or garbage: unknown
        seconds = None
    return EngineBusy(message, stage="pipeline", backend="realtime", retry_after_s=seconds)


def _error_of(body: bytes | bytearray | None) -> str:
    """The message of an OpenAI-shaped error body (or the body's start)."""
    text = bytes(body or b"").decode("utf-8", "replace")
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return str(json.loads(text)["error"]["message"])
    return text[:200] or "no reason given"


def error_message(event: Event) -> str:
    """The message of an ``error`` event."""
    error = event.get("error")
    return str(error.get("message", "error")) if isinstance(error, dict) else "error"


def audio_seconds(event: Event, sample_rate: int) -> float:
    """Seconds of pcm16 audio in a ``response.output_audio.delta``."""
    return len(base64.b64decode(event.get("delta", ""))) / 2 / sample_rate


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
