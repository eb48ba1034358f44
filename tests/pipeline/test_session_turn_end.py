"""Smart turn end in the realtime session: real Silero VAD on real speech, scripted engines at
measured paces, on the loop's virtual clock (see test_session.py)."""

from __future__ import annotations

import pytest

from models.vad_silero import SileroVAD
from pipeline.events import ResponseDone, SpeechStopped, TranscriptCompleted
from tests.conftest import speak
from tests.pipeline.test_session import clip, feed, make, vad, whisper_stt

pytestmark = pytest.mark.looptime

__all__ = ["vad"]  # the fixture, shared with test_session

FRAGMENT, REST = "I'd like to book a table for", "four people."


def fast_stt(text: str) -> object:
    """An STT at the pace a short encoder window gives (~0.1 s for a 2 s clip)."""
    return whisper_stt(text=text, latency_s=0.08, per_audio_s=0.01)


async def endpoint_ms(vad: SileroVAD, **settings: object) -> float:
    session, rec = make(vad, stt=fast_stt("What is the capital of France?"), **settings)
    await feed(session, clip(0.5, "What is the capital of France?", 1.5))
    await rec.wait_for(ResponseDone)
    await session.aclose()
    t = rec.of(ResponseDone)[0].timings
    assert t.endpoint_ms is not None
    return t.endpoint_ms


async def test_smart_ends_a_complete_question_sooner(vad: SileroVAD) -> None:
    common = {"partial_interval_ms": 0, "silence_duration_ms": 400}
    fixed = await endpoint_ms(vad, **common)
    smart = await endpoint_ms(
        vad, turn_end="smart", complete_silence_ms=200, incomplete_silence_ms=1200, **common
    )
    assert 400 <= fixed <= 500
    assert 200 <= smart <= 300  # the transcript, ready at ~0.1 s, reads complete


def paused_request_stt() -> object:
    """Says the fragment for a snapshot of it (any pause before "four"), all of it after."""
    fragment_s = 0.3 + len(speak(FRAGMENT, pad_seconds=0.0).samples) / 16_000
    return whisper_stt(
        script=lambda seconds: FRAGMENT if seconds < fragment_s + 0.4 else f"{FRAGMENT} {REST}"
    )


async def test_smart_waits_through_a_pause_after_an_unfinished_phrase(vad: SileroVAD) -> None:
    session, rec = make(
        vad,
        stt=paused_request_stt(),
        partial_interval_ms=0,
        turn_end="smart",
        incomplete_silence_ms=1200,
    )
    await feed(session, clip(0.3, FRAGMENT, 0.8, REST, 1.5))
    await rec.wait_for(ResponseDone)
    await session.aclose()
    assert len(rec.of(SpeechStopped)) == 1  # one turn: the pause after "for" did not end it
    assert [c.text for c in rec.of(TranscriptCompleted)] == [f"{FRAGMENT} {REST}"]


async def test_fixed_silence_ends_the_turn_at_the_same_pause(vad: SileroVAD) -> None:
    session, rec = make(vad, stt=paused_request_stt(), partial_interval_ms=0)
    await feed(session, clip(0.3, FRAGMENT, 0.8, REST, 1.5))
    await rec.wait_for(ResponseDone, count=2)
    await session.aclose()
    assert len(rec.of(SpeechStopped)) == 2  # a false end of turn, and a reply to half a request
    assert rec.of(TranscriptCompleted)[0].text == FRAGMENT


async def test_smart_with_a_slow_stt_waits_for_the_transcript_not_longer(vad: SileroVAD) -> None:
    # Whisper tiny's pace with its 30 s window: the pause's transcript takes ~0.5 s, longer than
    # the fixed silence; the turn ends when it lands (it reads complete), and it is final.
    stt = whisper_stt(text="What is the capital of France?")
    session, rec = make(vad, stt=stt, partial_interval_ms=0, turn_end="smart")
    await feed(session, clip(0.5, "What is the capital of France?", 1.5))
    await rec.wait_for(ResponseDone)
    await session.aclose()
    completed, t = rec.of(TranscriptCompleted)[0], rec.of(ResponseDone)[0].timings
    assert completed.speculative and t.stt_ms == 0  # final at the decision: it waited for it
    assert t.endpoint_ms is not None
    assert completed.compute_ms < t.endpoint_ms < 1200  # longer than the fixed silence, not capped
    # the turn ended within a frame (32 ms) of the pause's transcript landing
    stopped = rec.at(SpeechStopped)
    last_job = [c for c in stt.calls if c.started < stopped][-1]
    assert last_job.finished is not None
    assert 0 <= stopped - last_job.finished <= 0.033
