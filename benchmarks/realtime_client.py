"""A realtime WebSocket client that speaks like a person and times the answer on its own clock.

Server-side timings cannot see what a user hears: audio that queues in a socket, a slow first
delta, gaps in playback. So the client streams a clip at real-time pace in 20 ms frames, the way
a microphone would, keeps streaming silence after it (server VAD needs silence to end the turn),
and measures voice-to-voice from the moment it sent the last voiced frame (the clip's known end
of speech) to the first ``response.output_audio.delta`` it receives. It also replays the arrival
times of the reply audio against a real-time playback clock and counts underruns: moments a
player would have run out of audio.

The protocol is the OpenAI Realtime API (GA event names): ``session.update``,
``input_audio_buffer.append`` (base64 pcm16 mono) in; ``session.created``,
``conversation.item.input_audio_transcription.completed``,
``response.output_audio_transcript.delta``, ``response.output_audio.delta``, ``response.done``
(with voxline's ``voxline`` timings) and ``error`` out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.exceptions import WebSocketException

from pipeline.audio import resample, to_pcm16
from pipeline.errors import EngineUnavailable
from pipeline.types import AudioChunk

FRAME_MS = 20
"""Audio per ``input_audio_buffer.append``: what a browser's audio worklet typically sends."""


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


def playback_underruns(
    arrivals: Sequence[tuple[float, float]], *, tolerance_s: float = 0.005
) -> tuple[int, float]:
    """Underruns of a player that starts at the first arrival and plays at real-time rate.

    Args:
        arrivals: ``(arrival time s, audio duration s)`` of each received piece, in order.
        tolerance_s: gaps up to this long are scheduling jitter, not underruns.

    Returns:
        The number of underruns and their total length in seconds.
    """
    count, starved = 0, 0.0
    play_end: float | None = None
    for arrived, duration in arrivals:
        if play_end is None:
            play_end = arrived
        gap = arrived - play_end
        if gap > tolerance_s:
            count += 1
            starved += gap
        play_end = max(play_end, arrived) + duration
    return count, starved


@dataclass(frozen=True, slots=True)
class TurnMeasurement:
    """One spoken turn, measured by the client.

    Attributes:
        v2v_ms: first reply audio received - last voiced frame sent (``None``: no audio came).
        audio_s: seconds of reply audio received.
        underruns: playback underruns (see ``playback_underruns``).
        underrun_ms: their total length.
        server: the ``voxline`` timings of ``response.done`` (ms by name).
        transcript: the server's final transcript of the clip.
        reply: the reply's transcript.
        errors: ``error`` events received during the turn (their messages).
        timed_out: no ``response.done`` before the deadline.
        early_responses: responses that finished before the end of speech (false end of turn).
    """

    v2v_ms: float | None
    audio_s: float
    underruns: int
    underrun_ms: float
    server: dict[str, float]
    transcript: str
    reply: str
    errors: tuple[str, ...] = ()
    timed_out: bool = False
    early_responses: int = 0


@dataclass(slots=True)
class _Turn:
    speech_end_t: float | None = None
    first_audio_t: float | None = None
    arrivals: list[tuple[float, float]] = field(default_factory=list)
    transcript: str = ""
    reply: list[str] = field(default_factory=list)
    server: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    early: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class RealtimeSession:
    """One realtime conversation: ``async with RealtimeSession(url) as s: await s.play(...)``.

    Args:
        url: the server (any form ``realtime_url`` accepts).
        sample_rate: input and output pcm16 rate asked for in ``session.update``.
        connect_timeout_s: seconds to connect and receive ``session.created``.
        clock: seconds of the client's own clock (tests pass the event loop's virtual one).
    """

    def __init__(
        self,
        url: str,
        *,
        sample_rate: int = 24_000,
        connect_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.url = realtime_url(url)
        self._clock = clock
        self.sample_rate = sample_rate
        self.connect_timeout_s = connect_timeout_s
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._created = asyncio.Event()
        self._turn = _Turn()
        self._closed = False
        self.session_errors: list[str] = []

    async def __aenter__(self) -> RealtimeSession:
        from websockets.asyncio.client import connect

        try:
            self._ws = await connect(self.url, max_size=None, open_timeout=self.connect_timeout_s)
            self._reader = asyncio.create_task(self._read())
            await asyncio.wait_for(self._created.wait(), self.connect_timeout_s)
            await self._send({"type": "session.update", "session": self._session_config()})
        except (OSError, TimeoutError, WebSocketException) as exc:
            await self.aclose()
            raise EngineUnavailable(
                f"realtime session at {self.url} failed to open: {type(exc).__name__}: {exc}",
                stage="pipeline",
                backend="realtime",
                retryable=True,
            ) from exc
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the socket and stop reading."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    def _session_config(self) -> dict[str, Any]:
        pcm = {"type": "audio/pcm", "rate": self.sample_rate}
        return {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": pcm, "turn_detection": {"type": "server_vad"}},
                "output": {"format": pcm},
            },
        }

    async def _send(self, event: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(event))

    async def play(
        self, audio: AudioChunk, speech_end_s: float, *, timeout_s: float = 30.0
    ) -> TurnMeasurement:
        """Stream ``audio`` at real-time pace, then silence until the reply is done.

        Args:
            audio: the spoken clip (any rate; resampled to the session's).
            speech_end_s: where its speech ends, in seconds from its start.
            timeout_s: most seconds to wait for ``response.done`` after the end of speech.
        """
        pcm = to_pcm16(resample(audio, self.sample_rate).samples).tobytes()
        frame_bytes = self.sample_rate * FRAME_MS // 1000 * 2
        frames = [pcm[i : i + frame_bytes] for i in range(0, len(pcm), frame_bytes)]
        last_voiced = min(len(frames) - 1, max(0, math.ceil(speech_end_s * 1000 / FRAME_MS) - 1))
        silence = bytes(frame_bytes)
        turn = self._turn = _Turn()
        start = self._clock()
        deadline: float | None = None
        i = 0
        while not (turn.done.is_set() or self._closed):
            await asyncio.sleep(max(0.0, start + i * FRAME_MS / 1000 - self._clock()))
            frame = frames[i] if i < len(frames) else silence
            try:
                await self._send({"type": "input_audio_buffer.append", "audio": _b64(frame)})
            except WebSocketException:
                self._closed = True
                break
            if i == last_voiced:
                turn.speech_end_t = self._clock()
                deadline = turn.speech_end_t + timeout_s
            if deadline is not None and self._clock() > deadline:
                break
            i += 1
        if self._closed:
            turn.errors.append("connection closed")
        return self._measure(turn, timed_out=not turn.done.is_set())

    def _measure(self, turn: _Turn, *, timed_out: bool) -> TurnMeasurement:
        count, starved = playback_underruns(turn.arrivals)
        v2v = None
        if turn.first_audio_t is not None and turn.speech_end_t is not None:
            v2v = round((turn.first_audio_t - turn.speech_end_t) * 1000, 1)
        return TurnMeasurement(
            v2v_ms=v2v,
            audio_s=round(sum(d for _, d in turn.arrivals), 3),
            underruns=count,
            underrun_ms=round(starved * 1000, 1),
            server=turn.server,
            transcript=turn.transcript,
            reply="".join(turn.reply),
            errors=tuple(turn.errors),
            timed_out=timed_out,
            early_responses=turn.early,
        )

    async def _read(self) -> None:
        with contextlib.suppress(WebSocketException):
            await self._read_events()
        self._turn.done.set()  # the socket closed: no reply will come; play() stops waiting
        self._closed = True

    async def _read_events(self) -> None:
        async for message in self._ws:
            now = self._clock()
            try:
                event = json.loads(message)
            except ValueError:
                self._turn.errors.append("undecodable server event")
                continue
            self._on_event(event, now)

    def _on_event(self, event: dict[str, Any], now: float) -> None:
        turn, kind = self._turn, event.get("type")
        if kind == "session.created":
            self._created.set()
        elif kind == "error":
            message = str((event.get("error") or {}).get("message", "error"))
            (turn.errors if turn.speech_end_t is not None else self.session_errors).append(message)
        elif kind == "conversation.item.input_audio_transcription.completed":
            turn.transcript = str(event.get("transcript", ""))
        elif kind == "response.output_audio_transcript.delta":
            turn.reply.append(str(event.get("delta", "")))
        elif kind == "response.output_audio.delta":
            if turn.speech_end_t is None:
                return  # audio of a response to a pause mid-sentence: not this turn's answer
            seconds = len(base64.b64decode(event.get("delta", ""))) / 2 / self.sample_rate
            turn.first_audio_t = turn.first_audio_t or now
            turn.arrivals.append((now, seconds))
        elif kind == "response.done":
            if turn.speech_end_t is None:
                turn.early += 1
                turn.reply.clear()
                return
            timings = ((event.get("response") or {}).get("voxline")) or {}
            turn.server = {k: float(v) for k, v in timings.items() if isinstance(v, int | float)}
            turn.done.set()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
