"""A voice turn from a recorded clip runs on the realtime session's ``Reply``: phrase events before
their audio, one definition of the timings, speed and output rate honoured, and a TTS failure that
stops the LLM at once."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import EngineUnavailable, InvalidInput
from pipeline.turn import ReplyAudio, ReplyText, TranscriptReady, TurnEvent, run_turn
from pipeline.types import AudioChunk
from tests.fakes import ScriptedLLM, ScriptedSTT, ScriptedTTS

pytestmark = pytest.mark.looptime

QUESTION = AudioChunk(np.full(16_000 * 2, 0.1, np.float32), 16_000)
REPLY = ["Paris", ".", " It", " is", " in", " France", "."]


class Ticks:
    """A clock that moves one second per reading: timings become counts of readings."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


async def test_phrases_are_announced_before_their_audio_and_timed_like_realtime() -> None:
    events: list[TurnEvent] = []
    stt, llm, tts = ScriptedSTT(), ScriptedLLM(reply=REPLY), ScriptedTTS()
    result = await run_turn(
        QUESTION, stt=stt, llm=llm, tts=tts, system_prompt="Be brief.", on_event=events.append
    )

    assert isinstance(events[0], TranscriptReady)
    texts = [e.text for e in events if isinstance(e, ReplyText)]
    assert "".join(texts) == result.reply == "Paris. It is in France."
    assert texts == ["Paris.", " It is in France."] == [result.phrases[0], " " + result.phrases[1]]
    # each phrase's text comes just before its first audio
    kinds = [type(e).__name__ for e in events]
    first_audio = kinds.index("ReplyAudio")
    assert kinds[first_audio - 1] == "ReplyText"
    audio = np.concatenate([e.chunk.samples for e in events if isinstance(e, ReplyAudio)])
    assert np.array_equal(audio, result.audio.samples)
    t = result.timings
    assert t.endpoint_ms is None  # no VAD on a recorded clip
    assert t.v2v_ms is not None and t.stt_ms is not None and t.llm_first_phrase_ms is not None
    assert t.v2v_ms >= t.stt_ms  # the first audio comes after the transcript
    assert t.total_ms is not None and t.total_ms >= t.v2v_ms
    assert result.usage.completion_tokens == len(REPLY)
    assert result.backends.tts == tts.name


async def test_timings_follow_the_one_definition_on_a_controlled_clock() -> None:
    clock = Ticks()
    result = await run_turn(
        QUESTION,
        stt=ScriptedSTT(),
        llm=ScriptedLLM(reply=["Paris", "."]),
        tts=ScriptedTTS(),
        system_prompt="Be brief.",
        clock=clock,
    )
    t = result.timings
    # readings: start 1, transcript 2 (stt 1 s), reply start 3, first token 4 (ttft 1 s), ...
    assert (t.stt_ms, t.llm_ttft_ms) == (1000.0, 1000.0)
    assert t.llm_first_phrase_ms is not None and t.llm_first_phrase_ms > t.llm_ttft_ms
    assert t.tts_ttfb_ms is not None and t.tts_ttfb_ms > 0
    assert t.v2v_ms is not None and t.v2v_ms > t.stt_ms + t.llm_first_phrase_ms


async def test_speed_and_output_rate_reach_the_voice() -> None:
    tts = ScriptedTTS(sample_rate=22_050)
    slow = await run_turn(
        QUESTION,
        stt=ScriptedSTT(),
        llm=ScriptedLLM(reply=["Paris", "."]),
        tts=tts,
        system_prompt="Be brief.",
        speed=0.5,
        output_rate=24_000,
    )
    assert slow.audio.sample_rate == 24_000
    assert tts.calls[0].speed == 0.5  # at half speed the voice says it in twice the time
    assert slow.audio.duration == pytest.approx(tts.samples_for("Paris.", 0.5) / 22_050, abs=0.01)


async def test_a_tts_failure_stops_the_llm_at_once() -> None:
    words = [f" word{i}" for i in range(40)]
    llm = ScriptedLLM(reply=["Paris", ".", *words, "."], ttft_s=0.1, token_s=0.02)
    down = EngineUnavailable("scripted failure", stage="tts", backend="fake-tts")
    with pytest.raises(EngineUnavailable):
        await run_turn(
            QUESTION,
            stt=ScriptedSTT(),
            llm=llm,
            tts=ScriptedTTS(fail_times=1, error=down),  # its first phrase, "Paris."
            system_prompt="Be brief.",
        )
    [call] = llm.calls
    assert call.closed_early and call.outputs < len(words)


async def test_silence_is_refused_before_any_engine_runs() -> None:
    stt = ScriptedSTT()
    with pytest.raises(InvalidInput) as info:
        await run_turn(
            AudioChunk(np.zeros(16_000, np.float32), 16_000),
            stt=stt,
            llm=ScriptedLLM(),
            tts=ScriptedTTS(),
            system_prompt="x",
        )
    assert info.value.code == "no_speech" and stt.calls == []
