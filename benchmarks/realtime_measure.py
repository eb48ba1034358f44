"""A spoken turn measured the way a user hears it: voice-to-voice on the client's clock.

Server-side timings cannot see what a user hears: audio that queues in a socket, a slow first
delta, gaps in playback. So ``RealtimeSession.play`` streams a clip at real-time pace through the
one realtime client (``client.realtime``), keeps streaming silence after it (server VAD needs
silence to end the turn), and measures voice-to-voice from the moment it sent the last voiced
frame (the clip's known end of speech) to the first ``response.output_audio.delta`` it receives.
It also replays the arrival times of the reply audio against a real-time playback clock and counts
underruns: moments a player would have run out of audio.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from client.realtime import RealtimeClient, Received, audio_seconds, error_message
from pipeline.types import AudioChunk


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
        response: the ``response`` object of the turn's ``response.done`` (``None``: none came).
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
    response: dict[str, Any] | None = None


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
    done: bool = False
    response: dict[str, Any] | None = None


class RealtimeSession:
    """One realtime conversation, measured: ``async with RealtimeSession(url) as s: await
    s.play(...)``.

    Args:
        url: The server (any form ``client.realtime.realtime_url`` accepts).
        api_key: Sent as ``Authorization: Bearer``.
        sample_rate: Input and output pcm16 rate asked for in ``session.update``.
        connect_timeout_s: Seconds to connect and receive ``session.created``.
        clock: Seconds of the client's own clock: pacing and arrival times (tests pass the
            event loop's virtual one).
        session: Extra ``session.update`` fields (e.g. ``tools``).

    Raises:
        EngineUnavailable: (on entering) the session could not be opened.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        sample_rate: int = 24_000,
        connect_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.perf_counter,
        session: Mapping[str, Any] | None = None,
    ) -> None:
        self._session_fields = dict(session or {})
        self.client = RealtimeClient(
            url,
            api_key=api_key,
            sample_rate=sample_rate,
            connect_timeout_s=connect_timeout_s,
            clock=clock,
        )
        self.session_errors: list[str] = []
        """``error`` events that arrived outside a turn."""

    async def __aenter__(self) -> RealtimeSession:
        await self.client.connect()
        try:
            await self.client.update_session(**self._session_fields)
        except BaseException:
            await self.client.aclose()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.client.aclose()

    async def play(
        self, audio: AudioChunk, speech_end_s: float, *, timeout_s: float = 30.0
    ) -> TurnMeasurement:
        """Stream ``audio`` at real-time pace, then silence until the reply is done.

        Args:
            audio: The spoken clip (any rate; resampled to the session's).
            speech_end_s: Where its speech ends, in seconds from its start.
            timeout_s: Most seconds to wait for ``response.done`` after the end of speech.
        """
        rt = self.client
        frames = rt.frames(rt.pcm(audio))
        last_voiced = min(len(frames) - 1, max(0, math.ceil(speech_end_s * 1000 / rt.frame_ms) - 1))
        turn = _Turn()
        deadline: float | None = None
        async for tick in rt.stream_frames(itertools.chain(frames, itertools.repeat(rt.silence()))):
            for received in tick.events:
                self._on_event(turn, received)
            if tick.index == last_voiced:
                turn.speech_end_t = tick.sent_at
                deadline = tick.sent_at + timeout_s
            if turn.done or (deadline is not None and rt.clock() > deadline):
                break
        if rt.closed and not turn.done:
            turn.errors.append("connection closed")
        return self._measure(turn, timed_out=not turn.done)

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
            response=turn.response,
        )

    def _on_event(self, turn: _Turn, received: Received) -> None:
        event, kind, now = received.event, received.type, received.at
        if kind == "error":
            message = error_message(event)
            (turn.errors if turn.speech_end_t is not None else self.session_errors).append(message)
        elif kind == "conversation.item.input_audio_transcription.completed":
            turn.transcript = str(event.get("transcript", ""))
        elif kind == "response.output_audio_transcript.delta":
            turn.reply.append(str(event.get("delta", "")))
        elif kind == "response.output_audio.delta":
            if turn.speech_end_t is None:
                return  # audio of a response to a pause mid-sentence: not this turn's answer
            turn.first_audio_t = turn.first_audio_t or now
            turn.arrivals.append((now, audio_seconds(event, self.client.sample_rate)))
        elif kind == "response.done":
            if turn.speech_end_t is None:
                turn.early += 1
                turn.reply.clear()
                return
            turn.response = event.get("response") or {}
            timings = turn.response.get("voxline") or {}
            turn.server = {k: float(v) for k, v in timings.items() if isinstance(v, int | float)}
            turn.done = True
