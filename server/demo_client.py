"""The demo's realtime client: one browser tab's conversation over ``/v1/realtime``.

The demo is a client of the realtime WebSocket, not a second way into the pipeline, so what it
shows (partial transcripts, the reply audio as it streams, the stage timings of ``response.done``)
is what any realtime client gets from the same session core. It sends audio the way a microphone
does: 24 kHz pcm16 at real-time pace, then silence until the server's VAD ends the turn. So the
endpoint and voice-to-voice numbers it shows mean what they mean for a caller, and an uploaded
clip is "spoken" the same way rather than dumped into the buffer at once (which would make the
endpoint delay meaningless). What the events mean for the page is ``server.demo_conversation``'s
business; this module owns the socket and the pacing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from itertools import repeat
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from benchmarks.realtime_client import realtime_url
from pipeline.audio import resample, to_pcm16
from pipeline.errors import EngineUnavailable
from pipeline.types import AudioChunk
from server.demo_conversation import SAMPLE_RATE, Conversation, DemoView, TurnState

FRAME_MS = 40
"""Audio per ``input_audio_buffer.append`` when a clip is spoken at real-time pace."""
MAX_TRAILING_SILENCE_S = 3.0
"""Silence sent after the speech for the server's VAD to end the turn; past it the turn is ended
by hand (``commit`` + ``response.create``)."""
REPLY_TIMEOUT_S = 120.0
"""Longest wait for the reply once the turn has ended (a cold CPU server can be slow)."""
_FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000 * 2


class RealtimeDemoClient:
    """One realtime session: ``async with RealtimeDemoClient(url) as c: async for v in
    c.speak(clip): ...``.

    Args:
        url: The voxline server (``http://host:port``, ``ws://...`` or the full realtime URL).
        connect_timeout_s: Seconds to connect and receive ``session.created``.
        clock: Monotonic seconds (pacing).
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.url = realtime_url(url)
        self.connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._closed = False
        self._config: dict[str, str] = {}
        self._conv = Conversation()

    async def __aenter__(self) -> RealtimeDemoClient:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """The connection is gone (closed by either side)."""
        return self._closed

    async def connect(self) -> None:
        """Open the session and wait for ``session.created``.

        Raises:
            EngineUnavailable: the server cannot be reached or did not open a session.
        """
        try:
            self._ws = await connect(self.url, max_size=None, open_timeout=self.connect_timeout_s)
            self._reader = asyncio.create_task(self._read())
            async with asyncio.timeout(self.connect_timeout_s):
                while (event := await self._events.get()) is not None:
                    self._conv.apply(event)
                    if event.get("type") == "session.created":
                        return
            self._closed = True
            reason = "; ".join(self._conv.turn.errors) or "it closed the connection"
            raise EngineUnavailable(
                f"{self.url} opened no session: {reason}", stage="pipeline", backend="realtime"
            )
        except (OSError, TimeoutError, WebSocketException) as exc:
            await self.aclose()
            raise EngineUnavailable(
                f"cannot open a realtime session at {self.url}: {type(exc).__name__}: {exc}",
                stage="pipeline",
                backend="realtime",
                retryable=True,
            ) from exc

    async def configure(self, *, instructions: str | None = None, voice: str | None = None) -> None:
        """Send ``session.update`` (server VAD, 24 kHz pcm16; the instructions and voice when
        given) unless nothing changed since the last one."""
        wanted = {k: v for k, v in (("instructions", instructions), ("voice", voice)) if v}
        if self._config and wanted == self._config:
            return
        pcm = {"type": "audio/pcm", "rate": SAMPLE_RATE}
        output: dict[str, Any] = {"format": pcm}
        if "voice" in wanted:
            output["voice"] = wanted["voice"]
        session: dict[str, Any] = {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": pcm, "turn_detection": {"type": "server_vad"}},
                "output": output,
            },
        }
        if "instructions" in wanted:
            session["instructions"] = wanted["instructions"]
        await self._send({"type": "session.update", "session": session})
        self._config = wanted

    async def speak(self, audio: AudioChunk) -> AsyncIterator[DemoView]:
        """Say ``audio`` at real-time pace, then stay silent until the reply is over; yields a
        view whenever something changed (the last one has ``done`` set)."""
        self._conv.turn = TurnState()
        pcm = to_pcm16(resample(audio, SAMPLE_RATE).samples).tobytes()
        frames = (pcm[i : i + _FRAME_BYTES] for i in range(0, len(pcm), _FRAME_BYTES))
        async for view in self._paced(frames, stop=lambda: False):
            yield view
        async for view in self.finish():
            yield view

    async def append(self, audio: AudioChunk) -> DemoView:
        """Send one piece of live microphone audio now; the view keeps reply audio back for
        ``finish`` (one consumer of the audio)."""
        if self._conv.turn.over:
            self._conv.turn = TurnState()
        await self._send_audio(to_pcm16(resample(audio, SAMPLE_RATE).samples).tobytes())
        await self._pump(0.0)
        return self._conv.view(take_audio=False)

    async def finish(self) -> AsyncIterator[DemoView]:
        """End the current turn as a quiet microphone would (silence until the server's VAD
        ends it) and follow the reply to its end; yields views, the last with ``done`` set."""
        if self._conv.turn.over:  # no audio since the last turn
            self._conv.turn = TurnState()
        conv, turn = self._conv, self._conv.turn
        frames = repeat(bytes(_FRAME_BYTES), int(MAX_TRAILING_SILENCE_S * 1000 / FRAME_MS))
        async for view in self._paced(frames, stop=lambda: turn.heard and not conv.speaking):
            yield view
        if not turn.heard and not self._closed:
            turn.errors.append("no speech was heard in the audio")
        elif conv.speaking and not self._closed:  # the VAD never heard the end: end it by hand
            await self._send({"type": "input_audio_buffer.commit"})
            await self._send({"type": "response.create"})
        deadline = self._clock() + REPLY_TIMEOUT_S
        while turn.heard and not conv.settled() and not self._closed:
            if self._clock() > deadline:
                turn.errors.append(f"no reply within {REPLY_TIMEOUT_S:.0f} s")
                break
            if await self._pump(0.05):
                yield conv.view()
        if self._closed and not conv.settled():
            turn.errors.append("the server closed the connection")
        turn.over = True
        yield conv.view(done=True)

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

    async def _send(self, event: dict[str, Any]) -> None:
        if self._ws is None or self._closed:
            return
        try:
            await self._ws.send(json.dumps(event))
        except (OSError, WebSocketException):
            self._closed = True

    async def _send_audio(self, pcm: bytes) -> None:
        audio = base64.b64encode(pcm).decode("ascii")
        await self._send({"type": "input_audio_buffer.append", "audio": audio})

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                with contextlib.suppress(ValueError):
                    event = json.loads(message)
                    if isinstance(event, dict):
                        self._events.put_nowait(event)
        except (OSError, WebSocketException):
            pass
        finally:
            self._events.put_nowait(None)

    async def _paced(
        self, frames: Iterable[bytes], *, stop: Callable[[], bool]
    ) -> AsyncIterator[DemoView]:
        """Send ``frames`` one per ``FRAME_MS``, taking events in between."""
        start = self._clock()
        for i, frame in enumerate(frames):
            if await self._pump(start + i * FRAME_MS / 1000 - self._clock()):
                yield self._conv.view()
            if stop() or self._closed:
                return
            await self._send_audio(frame)

    async def _pump(self, seconds: float) -> bool:
        """Apply the events that arrive within ``seconds`` (at least those already here);
        returns whether any did."""
        deadline = self._clock() + max(0.0, seconds)
        changed = False
        while not self._closed:
            try:
                event = self._events.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(self._events.get(), remaining)
                except TimeoutError:
                    break
            if event is None:
                self._closed = True
                break
            self._conv.apply(event)
            changed = True
        return changed


class TabSessions:
    """One realtime session per browser tab (by a key such as Gradio's session hash), opened on
    first use and kept for the tab's next turns: the conversation lives in the server's session."""

    def __init__(self) -> None:
        self._clients: dict[str, RealtimeDemoClient] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, key: str) -> asyncio.Lock:
        """Serializes one tab's operations (its audio must reach the server in order)."""
        return self._locks.setdefault(key, asyncio.Lock())

    async def client(
        self, key: str, url: str, voice: str | None, instructions: str | None
    ) -> RealtimeDemoClient:
        """The tab's session at ``url`` (opened if needed), configured with ``voice`` and
        ``instructions``. Call with ``lock(key)`` held.

        Raises:
            EngineUnavailable: the server cannot be reached or opened no session.
        """
        client = self._clients.get(key)
        if client is None or client.closed:
            client = RealtimeDemoClient(url)
            await client.connect()
            self._clients[key] = client
        await client.configure(voice=voice, instructions=instructions)
        return client

    async def close(self, key: str) -> None:
        """Close the tab's session (its conversation starts over)."""
        self._locks.pop(key, None)
        client = self._clients.pop(key, None)
        if client is not None:
            await client.aclose()
