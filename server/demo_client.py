"""The demo's realtime client: one browser tab's conversation over ``/v1/realtime``.

The demo is a client of the realtime WebSocket, not a second way into the pipeline, so what it
shows (partial transcripts, the reply audio as it streams, the stage timings of ``response.done``)
is what any realtime client gets from the same session core. It sends audio the way a microphone
does: 24 kHz pcm16 at real-time pace, then silence until the server's VAD ends the turn. So the
endpoint and voice-to-voice numbers it shows mean what they mean for a caller, and an uploaded
clip is "spoken" the same way rather than dumped into the buffer at once (which would make the
endpoint delay meaningless). The socket and the pacing are the one realtime client's
(``client.realtime``); what the events mean for the page is ``server.demo_conversation``'s
business; this module puts the two together, one session per browser tab.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterable

from client.realtime import RealtimeClient, Received, Tick
from pipeline.types import AudioChunk
from server.demo_conversation import SAMPLE_RATE, Conversation, DemoView, TurnState

FRAME_MS = 40
"""Audio per ``input_audio_buffer.append`` when a clip is spoken at real-time pace."""
MAX_TRAILING_SILENCE_S = 3.0
"""Silence sent after the speech for the server's VAD to end the turn; past it the turn is ended
by hand (``commit`` + ``response.create``)."""
REPLY_TIMEOUT_S = 120.0
"""Longest wait for the reply once the turn has ended (a cold CPU server can be slow)."""


class RealtimeDemoClient:
    """One realtime session: ``async with RealtimeDemoClient(url) as c: async for v in
    c.speak(clip): ...``.

    Args:
        url: The voxline server (``http://host:port``, ``ws://...`` or the full realtime URL).
        api_key: Sent as ``Authorization: Bearer`` to a server with API keys.
        connect_timeout_s: Seconds to connect and receive ``session.created``.
        clock: Monotonic seconds (pacing).
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 10.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        kwargs = {} if clock is None else {"clock": clock}
        self.rt = RealtimeClient(
            url,
            api_key=api_key,
            sample_rate=SAMPLE_RATE,
            frame_ms=FRAME_MS,
            connect_timeout_s=connect_timeout_s,
            **kwargs,
        )
        self.url = self.rt.url
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
        return self.rt.closed

    async def connect(self) -> None:
        """Open the session and wait for ``session.created``.

        Raises:
            EngineUnavailable: the server cannot be reached or did not open a session.
        """
        self._conv.apply(await self.rt.connect())

    async def configure(self, *, instructions: str | None = None, voice: str | None = None) -> None:
        """Send ``session.update`` (server VAD, 24 kHz pcm16; the instructions and voice when
        given) unless nothing changed since the last one."""
        wanted = {k: v for k, v in (("instructions", instructions), ("voice", voice)) if v}
        if self._config and wanted == self._config:
            return
        await self.rt.update_session(instructions=instructions, voice=voice)
        self._config = wanted

    async def speak(self, audio: AudioChunk) -> AsyncIterator[DemoView]:
        """Say ``audio`` at real-time pace, then stay silent until the reply is over; yields a
        view whenever something changed (the last one has ``done`` set)."""
        self._conv.turn = TurnState()
        async for view in self._paced(self.rt.frames(self.rt.pcm(audio)), stop=lambda: False):
            yield view
        async for view in self.finish():
            yield view

    async def append(self, audio: AudioChunk) -> DemoView:
        """Send one piece of live microphone audio now; the view keeps reply audio back for
        ``finish`` (one consumer of the audio)."""
        if self._conv.turn.over:
            self._conv.turn = TurnState()
        await self.rt.append(self.rt.pcm(audio))
        self._apply(await self.rt.receive_for(0.0))
        return self._conv.view(take_audio=False)

    async def finish(self) -> AsyncIterator[DemoView]:
        """End the current turn as a quiet microphone would (silence until the server's VAD
        ends it) and follow the reply to its end; yields views, the last with ``done`` set."""
        if self._conv.turn.over:  # no audio since the last turn
            self._conv.turn = TurnState()
        conv, turn, rt = self._conv, self._conv.turn, self.rt
        frames = itertools.repeat(rt.silence(), int(MAX_TRAILING_SILENCE_S * 1000 / FRAME_MS))
        async for view in self._paced(frames, stop=lambda: turn.heard and not conv.speaking):
            yield view
        if not turn.heard and not rt.closed:
            turn.errors.append("no speech was heard in the audio")
        elif conv.speaking and not rt.closed:  # the VAD never heard the end: end it by hand
            await rt.send({"type": "input_audio_buffer.commit"})
            await rt.send({"type": "response.create"})
        deadline = rt.clock() + REPLY_TIMEOUT_S
        while turn.heard and not conv.settled() and not rt.closed:
            if rt.clock() > deadline:
                turn.errors.append(f"no reply within {REPLY_TIMEOUT_S:.0f} s")
                break
            if self._apply(await rt.receive_for(0.05)):
                yield conv.view()
        if rt.closed and not conv.settled():
            turn.errors.append("the server closed the connection")
        turn.over = True
        yield conv.view(done=True)

    async def aclose(self) -> None:
        """Close the connection and stop reading."""
        await self.rt.aclose()

    def _apply(self, events: list[Received]) -> bool:
        for received in events:
            self._conv.apply(received.event)
        return bool(events)

    async def _paced(
        self, frames: Iterable[bytes], *, stop: Callable[[], bool]
    ) -> AsyncIterator[DemoView]:
        """Send ``frames`` at real-time pace, applying the events that arrive in between."""
        tick: Tick
        async for tick in self.rt.stream_frames(frames):
            if self._apply(tick.events):
                yield self._conv.view()
            if stop():
                return


class TabSessions:
    """One realtime session per browser tab (by a key such as Gradio's session hash), opened on
    first use and kept for the tab's next turns: the conversation lives in the server's session."""

    def __init__(self) -> None:
        # by tab and credential: a request that names another tab's key (Gradio's session hash
        # is the browser's to choose) but not its credential does not drive, nor bill, its session
        self._clients: dict[tuple[str, str | None], RealtimeDemoClient] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, key: str) -> asyncio.Lock:
        """Serializes one tab's operations (its audio must reach the server in order)."""
        return self._locks.setdefault(key, asyncio.Lock())

    async def client(
        self,
        key: str,
        url: str,
        voice: str | None,
        instructions: str | None,
        *,
        api_key: str | None = None,
    ) -> RealtimeDemoClient:
        """The tab's session at ``url`` (opened if needed, with ``api_key`` as its bearer: a
        key or a client secret), configured with ``voice`` and ``instructions``. Call with
        ``lock(key)`` held.

        Raises:
            EngineUnavailable: the server cannot be reached or opened no session.
        """
        client = self._clients.get((key, api_key))
        if client is None or client.closed:
            client = RealtimeDemoClient(url, api_key=api_key)
            await client.connect()
            self._clients[(key, api_key)] = client
        await client.configure(voice=voice, instructions=instructions)
        return client

    async def close(self, key: str) -> None:
        """Close the tab's session (its conversation starts over)."""
        self._locks.pop(key, None)
        for slot in [slot for slot in self._clients if slot[0] == key]:
            await self._clients.pop(slot).aclose()
