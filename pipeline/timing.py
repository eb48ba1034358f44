"""The latency vocabulary, defined once (docs/architecture.md, "Latency vocabulary").

Every voice turn, whether it came in as a recorded clip (``/v1/turns``, ``voxline turn``, the
benchmark) or as live audio (a realtime session), is described by the same clock readings: the end
of speech, the moment the end of the turn was decided, when the final transcript was in hand, the
milestones of the spoken reply (``ReplyTimes``) and when its first audio was handed to the client.
``turn_timings`` turns them into the milliseconds every result, event, metric and benchmark
reports. For a recorded clip there is no VAD: the whole clip is in hand when the turn starts, so
its end of speech and its decision are that moment, and V2V is the time to the first audio.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.types import TurnTimings


@dataclass(slots=True)
class TurnMarks:
    """Clock readings of one user turn.

    Attributes:
        speech_end: Arrival of the last voiced frame (a manual commit or a recorded clip: the
            moment the turn was handed over).
        decision: The end-of-turn decision (a manual commit or a recorded clip: the same).
        vad: Whether server VAD decided (else ``endpoint_ms`` is meaningless).
        final: When the final transcript was in hand.
    """

    speech_end: float
    decision: float
    vad: bool
    final: float | None = None


@dataclass(slots=True)
class ReplyTimes:
    """Clock readings of a spoken reply's milestones; ``None`` until they happen."""

    started: float
    first_token: float | None = None
    first_phrase: float | None = None
    llm_done: float | None = None
    first_handed: float | None = None
    first_audio: float | None = None
    tts_done: float | None = None


def ms(start: float | None, end: float | None) -> float | None:
    """Milliseconds from ``start`` to ``end`` (``None`` if either is missing), rounded to 0.1."""
    if start is None or end is None:
        return None
    return round((end - start) * 1000, 1)


def turn_timings(
    marks: TurnMarks | None,
    reply: ReplyTimes | None,
    first_delta_at: float | None,
    done_at: float,
) -> TurnTimings:
    """A turn's latencies in ms (``None`` where a stage did not run or a mark is missing).

    - ``endpoint_ms``: decision - end of speech (server VAD only);
    - ``stt_ms``: final transcript - decision, clamped at 0 (a speculative transcript is often
      ready before the turn is decided; the STT compute is in the call records, not here);
    - ``llm_ttft_ms``, ``llm_first_phrase_ms``, ``llm_total_ms``: from the reply's start (which
      for a speculative reply precedes the decision);
    - ``tts_ttfb_ms``, ``tts_total_ms``: from the first phrase handed to TTS;
    - ``v2v_ms``: first audio handed to the client - end of speech (server side: network and
      client buffering are not in it);
    - ``total_ms``: end of speech (or the reply's start) to ``done_at``.
    """
    times = reply if reply is not None else ReplyTimes(started=done_at)
    stt = ms(marks.decision, marks.final) if marks is not None else None
    return TurnTimings(
        endpoint_ms=ms(marks.speech_end, marks.decision) if marks and marks.vad else None,
        stt_ms=None if stt is None else max(stt, 0.0),
        llm_ttft_ms=ms(times.started, times.first_token),
        llm_first_phrase_ms=ms(times.started, times.first_phrase),
        llm_total_ms=ms(times.started, times.llm_done),
        tts_ttfb_ms=ms(times.first_handed, times.first_audio),
        tts_total_ms=ms(times.first_handed, times.tts_done),
        v2v_ms=ms(marks.speech_end, first_delta_at) if marks is not None else None,
        total_ms=ms(marks.speech_end if marks is not None else times.started, done_at),
    )
