"""The realtime session: real Silero VAD on real speech, scripted STT/LLM/TTS (tests/fakes).

Everything runs on the event loop's virtual clock (``looptime``), which is also the session's
clock: audio is fed in 20 ms chunks paced on it, the scripted engines take the time measured for
the CPU defaults on it (Whisper tiny ~0.35 s + 0.06 s per second of audio, SmolLM2 on llama.cpp
0.11 s to the first token then 18 ms a token, Piper 0.12 s to first audio), and the VAD's
inference, run inline, takes none of it. So timings are exact and the same on a loaded machine,
and what overlaps with what (speculation, barge-in) is what happens with the real engines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from models.vad_silero import SileroVAD
from pipeline.audio import resample
from pipeline.errors import EngineUnavailable
from pipeline.events import (
    ErrorEvent,
    Event,
    InputCleared,
    InputCommitted,
    ItemAdded,
    ItemTruncated,
    ResponseAudioDelta,
    ResponseAudioDone,
    ResponseCreated,
    ResponseDone,
    ResponseTranscriptDelta,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TranscriptCompleted,
    TranscriptFailed,
    TranscriptPartial,
)
from pipeline.history import Item, heard_text
from pipeline.session import Session
from pipeline.session_config import SessionConfig, TurnDetection
from pipeline.settings import SessionSettings
from pipeline.types import AudioChunk, GenerationParams
from tests.conftest import speak
from tests.fakes import (
    PIPER_PACE,
    SMOLLM2_PACE,
    WHISPER_TINY_PACE,
    Plan,
    ScriptedLLM,
    ScriptedSTT,
    ScriptedTTS,
    loop_time,
)

pytestmark = pytest.mark.looptime

RATE = 24_000
QUESTION = "What is the capital of France?"
PARIS = ("Paris", " is", " the", " capital", " of", " France", ".")


def whisper_stt(**kwargs: Any) -> ScriptedSTT:
    """Whisper tiny's pace; says the question (no partials of its own: the session makes them)."""
    fields: dict[str, Any] = {"text": "what is the capital of france", "partials": False}
    return ScriptedSTT(**(fields | WHISPER_TINY_PACE | kwargs))


def smollm_llm(reply: tuple[str, ...] | list[str] = PARIS, **kwargs: Any) -> ScriptedLLM:
    """SmolLM2 on llama.cpp's pace."""
    return ScriptedLLM(reply=reply, **(SMOLLM2_PACE | kwargs))


def piper_tts(**kwargs: Any) -> ScriptedTTS:
    """Piper's pace, at natural speech length (60 ms a character), in 200 ms chunks."""
    fields: dict[str, Any] = {"sample_rate": 22_050, "seconds_per_char": 0.06, "chunk_s": 0.2}
    return ScriptedTTS(**(fields | PIPER_PACE | kwargs))


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    model = SileroVAD()
    model.load()
    return model


@functools.cache
def clip(*parts: str | float) -> AudioChunk:
    """Speech (str) and silence (seconds) in a row, at 24 kHz."""
    pieces = [
        speak(p, pad_seconds=0.0).samples if isinstance(p, str) else np.zeros(int(p * 16_000))
        for p in parts
    ]
    audio = AudioChunk(np.concatenate(pieces).astype(np.float32), 16_000)
    return resample(audio, RATE)


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each job at once on the calling thread, so the VAD (which the listener runs with
    ``asyncio.to_thread``) takes no loop time: the virtual clock then moves only by the feed's
    pace and the engines' scripted time, whatever the machine's load."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class Recorder:
    """Collects a session's events, with the (virtual) time each was received."""

    def __init__(self, session: Session) -> None:
        self.events: list[tuple[float, Event]] = []
        self._task = asyncio.create_task(self._collect(session))

    async def _collect(self, session: Session) -> None:
        async for event in session:
            self.events.append((loop_time(), event))

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for _, e in self.events if isinstance(e, kind)]

    def index(self, kind: type[Any], nth: int = 0) -> int:
        return [i for i, (_, e) in enumerate(self.events) if isinstance(e, kind)][nth]

    def at(self, kind: type[Any], nth: int = 0) -> float:
        return self.events[self.index(kind, nth)][0]

    async def settle(self) -> None:
        """Let the collector catch up with the events already emitted."""
        for _ in range(5):
            await asyncio.sleep(0)

    async def wait(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        deadline = loop_time() + within
        while not condition():
            assert loop_time() < deadline, [type(e).__name__ for _, e in self.events]
            await asyncio.sleep(0.01)

    async def wait_for(self, kind: type[Any], count: int = 1, within: float = 10.0) -> None:
        await self.wait(lambda: len(self.of(kind)) >= count, within)


async def feed(session: Session, audio: AudioChunk, *, speed: float | None = 1.0) -> None:
    """Append ``audio`` in 20 ms chunks, ``speed`` times real time (``None``: at once)."""
    step = RATE // 50
    for offset in range(0, len(audio.samples), step):
        await session.append_audio(AudioChunk(audio.samples[offset : offset + step], RATE))
        if speed is not None:
            await asyncio.sleep(0.02 / speed)


def make(
    vad: SileroVAD,
    *,
    stt: ScriptedSTT | None = None,
    llm: ScriptedLLM | None = None,
    tts: ScriptedTTS | None = None,
    config: SessionConfig | None = None,
    **settings: Any,
) -> tuple[Session, Recorder]:
    asyncio.get_running_loop().set_default_executor(_InlineExecutor())
    # the fixed silence unless a test asks otherwise: these tests time turns by it (the smart
    # turn end has its own, tests/pipeline/test_session_turn_end.py)
    policy = SessionSettings(**({"turn_end": "fixed"} | settings))
    session = Session(
        stt or whisper_stt(),
        llm or smollm_llm(),
        tts or piper_tts(),
        vad.fork(),
        config=config
        or SessionConfig(
            instructions="Be brief.", turn_detection=TurnDetection.from_settings(policy)
        ),
        settings=policy,
        clock=loop_time,
    )
    return session, Recorder(session)


async def test_voice_turn_events_in_order_with_timings(vad: SileroVAD) -> None:
    # A silence longer than transcription + first phrase + first audio (~1.1 s at these paces,
    # the slot busy with a partial when the pause comes): the reply runs ahead during it, so the
    # audio is ready the moment the turn ends. (At the default 400 ms it cannot: see below.)
    llm = smollm_llm()
    session, rec = make(vad, llm=llm, partial_interval_ms=300, silence_duration_ms=1200)
    await feed(session, clip(0.5, QUESTION, 1.8))
    await rec.wait_for(ResponseDone)
    await session.aclose()

    order = [
        rec.index(SpeechStarted),
        rec.index(TranscriptPartial),
        rec.index(SpeechStopped),
        rec.index(InputCommitted),
        rec.index(ItemAdded),
        rec.index(TranscriptCompleted),
        rec.index(ResponseCreated),
        rec.index(ResponseTranscriptDelta),
        rec.index(ResponseAudioDelta),
        rec.index(ResponseAudioDone),
        rec.index(ResponseDone),
    ]
    assert order == sorted(order)
    assert rec.index(ResponseAudioDelta, -1) < rec.index(ResponseAudioDone)
    assert max(i for i, (_, e) in enumerate(rec.events) if isinstance(e, TranscriptPartial)) < (
        rec.index(TranscriptCompleted)
    )
    started, stopped = rec.of(SpeechStarted)[0], rec.of(SpeechStopped)[0]
    assert started.item_id == stopped.item_id == rec.of(TranscriptCompleted)[0].item_id
    assert 200 <= started.audio_start_ms <= 500  # 0.5 s of silence, minus the 300 ms padding
    speech_end_ms = 500 + len(speak(QUESTION, pad_seconds=0.0).samples) / 16
    assert speech_end_ms <= stopped.audio_end_ms <= speech_end_ms + 1350

    completed = rec.of(TranscriptCompleted)[0]
    assert completed.text == "what is the capital of france"
    assert completed.speculative  # transcribed during the silence, from its first frame
    done = rec.of(ResponseDone)[0]
    assert done.status == "completed" and done.transcript == "Paris is the capital of France."
    assert (done.backends.stt, done.backends.llm, done.backends.tts) == (
        "fake-stt",
        "fake-llm",
        "fake-tts",
    )
    t = done.timings
    assert t.endpoint_ms is not None and 1200 <= t.endpoint_ms <= 1300  # 38 frames + the VAD's lag
    assert t.stt_ms == 0  # the speculative transcript was ready
    assert t.llm_ttft_ms is not None and t.llm_first_phrase_ms is not None
    assert t.tts_ttfb_ms is not None and t.v2v_ms is not None
    # the reply ran ahead during the silence: the first audio left as soon as the turn ended
    assert t.v2v_ms == pytest.approx(t.endpoint_ms)
    assert llm.calls[0].started < rec.at(SpeechStopped)
    deltas = rec.of(ResponseAudioDelta)
    assert {d.audio.sample_rate for d in deltas} == {24_000}
    assert "".join(d.text for d in rec.of(ResponseTranscriptDelta)) == done.transcript
    assert [m.role for m in llm.calls[0].input] == ["system", "user"]
    assert [(i.role, i.text) for i in session.items] == [
        ("user", "what is the capital of france"),
        ("assistant", "Paris is the capital of France."),
    ]


async def test_at_the_default_silence_the_transcription_outlasts_it(vad: SileroVAD) -> None:
    # 400 ms of silence is shorter than Whisper takes: the transcription started at the pause
    # still saves its first 400 ms, and every stage after it starts the moment the one before
    # it has something (on the virtual clock, nothing but the engines takes time).
    llm = smollm_llm()
    session, rec = make(vad, llm=llm, partial_interval_ms=0, silence_duration_ms=400)
    await feed(session, clip(0.5, QUESTION, 1.0))
    await rec.wait_for(ResponseDone)
    await session.aclose()
    completed, t = rec.of(TranscriptCompleted)[0], rec.of(ResponseDone)[0].timings
    assert completed.speculative
    assert t.endpoint_ms is not None and t.stt_ms is not None and t.v2v_ms is not None
    assert t.llm_first_phrase_ms is not None and t.tts_ttfb_ms is not None
    assert 0 < t.stt_ms < completed.compute_ms  # it began before the turn's end
    assert llm.calls[0].started == pytest.approx(rec.at(TranscriptCompleted))  # no speculative LLM
    overhead = t.v2v_ms - (t.endpoint_ms + t.stt_ms + t.llm_first_phrase_ms + t.tts_ttfb_ms)
    assert overhead == pytest.approx(0, abs=1)


async def test_without_speculative_reply_the_llm_waits_for_the_turn(vad: SileroVAD) -> None:
    llm = smollm_llm()
    session, rec = make(vad, llm=llm, speculative_response=False, silence_duration_ms=900)
    await feed(session, clip(0.3, QUESTION, 1.2), speed=2.0)
    await rec.wait_for(ResponseDone)
    await session.aclose()
    t = rec.of(ResponseDone)[0].timings
    assert t.v2v_ms is not None and t.endpoint_ms is not None and t.stt_ms is not None
    assert t.llm_first_phrase_ms is not None and t.tts_ttfb_ms is not None
    # the reply began only once the turn had ended and its transcript was final
    after_stt = t.v2v_ms - t.endpoint_ms - t.stt_ms
    assert after_stt == pytest.approx(t.llm_first_phrase_ms + t.tts_ttfb_ms, abs=1)
    assert llm.calls[0].started >= rec.at(SpeechStopped)


async def test_speech_resuming_after_a_pause_drops_the_speculative_reply(vad: SileroVAD) -> None:
    # says more the longer the snapshot: the words of a pause's snapshot are a prefix
    stt = whisper_stt(text="what is the capital of france please", words_per_second=2.5)
    llm = smollm_llm([f" word{i}" for i in range(60)])  # still generating when the user resumes
    session, rec = make(vad, stt=stt, llm=llm, silence_duration_ms=1000, partial_interval_ms=0)
    await feed(session, clip(0.3, "What is the capital", 0.75, "of France, please?", 1.2))
    await rec.wait_for(ResponseDone)
    await session.aclose()

    assert len(rec.of(SpeechStarted)) == 1  # one turn: the pauses did not end it
    assert len(rec.of(ResponseCreated)) == 1
    *dropped, answered = llm.calls
    assert dropped  # at least the long pause started a speculative reply...
    assert all(call.closed_early for call in dropped)  # ...whose LLM stream was closed
    final = rec.of(TranscriptCompleted)[0].text
    assert final == "what is the capital of france please"
    assert answered.input[-1].content == final
    assert len(dropped[0].input[-1].content) < len(final)
    assert rec.of(ResponseDone)[0].status == "completed"


async def test_barge_in_cancels_the_reply_and_truncates_it(vad: SileroVAD) -> None:
    words = [f" word{i}" for i in range(40)]
    long_reply = ["Here", " is", " a", " long", " answer,", *words, "."]
    llm, tts = smollm_llm(long_reply), piper_tts()
    session, rec = make(vad, llm=llm, tts=tts)
    await feed(session, clip(0.3, QUESTION, 0.6), speed=3.0)
    # the user speaks while both the LLM and the TTS are busy with the reply
    await rec.wait(
        lambda: bool(rec.of(ResponseAudioDelta)) and any(not c.closed for c in tts.calls)
    )
    assert not llm.calls[-1].closed
    llm.reply = ["Berlin is big."]  # the next reply is short
    await feed(session, clip("Tell me about Berlin instead.", 0.8), speed=None)
    await rec.wait_for(ResponseDone, 2)
    await session.aclose()

    first, second = rec.of(ResponseDone)
    assert (first.status, first.reason) == ("cancelled", "turn_detected")
    assert rec.index(SpeechStarted, 1) < rec.index(ResponseDone, 0)
    assert llm.calls[0].closed_early and any(c.closed_early for c in tts.calls)
    full = "".join(long_reply)
    assert len(first.transcript) < len(full) and full.startswith(first.transcript)
    cancelled = [e for _, e in rec.events if getattr(e, "response_id", None) == first.response_id]
    assert isinstance(cancelled[-1], ResponseDone)  # nothing of it after its end
    assert not any(isinstance(e, ResponseAudioDone) for e in cancelled)
    assert second.status == "completed"
    assistant = next(i for i in session.items if i.item_id == first.item_id)
    assert assistant.text == first.transcript


async def test_truncate_maps_played_audio_to_text(vad: SileroVAD) -> None:
    llm = smollm_llm(["Paris is the capital.", " It is big, old and very pretty."])
    tts = piper_tts(seconds_per_char=0.05)
    session, rec = make(vad, llm=llm, tts=tts)
    await session.add_user_text("Tell me about Paris.")
    await session.create_response()
    await rec.wait_for(ResponseDone)
    item_id = rec.of(ResponseDone)[0].item_id
    await session.truncate(item_id, 1200)  # the first phrase is 21 * 50 = 1050 ms
    await rec.settle()
    truncated = rec.of(ItemTruncated)[0]
    assert truncated.text == "Paris is the capital. It is big,"[: len(truncated.text)]
    assert truncated.text.startswith("Paris is the capital.")
    assert len(truncated.text) < len("Paris is the capital. It is big,")
    assert session.messages()[-1].content == truncated.text
    await session.truncate(item_id, 5000)  # past the (now shorter) audio
    await session.truncate("item_nope", 10)
    await rec.settle()
    errors = rec.of(ErrorEvent)
    assert [e.param for e in errors] == ["audio_end_ms", "item_id"]
    await session.truncate(item_id, 0)
    assert session.messages()[-1].role == "user"  # nothing heard: nothing said
    await session.aclose()


async def test_audio_goes_out_before_the_llm_finishes(vad: SileroVAD) -> None:
    tokens = ["The", " first", " part", " is", " short.", *[f" more{i}" for i in range(20)], "."]
    llm = smollm_llm(tokens)
    session, rec = make(vad, llm=llm)
    await session.add_user_text("Talk.")
    await session.create_response()
    await rec.wait_for(ResponseDone)
    await session.aclose()
    finished = llm.calls[0].finished
    assert finished is not None and rec.at(ResponseAudioDelta) < finished
    phrases = [d.text for d in rec.of(ResponseTranscriptDelta)]
    assert phrases[0] == "The first part is short." and len(phrases) >= 2


async def test_output_is_resampled_as_one_stream(vad: SileroVAD) -> None:
    tts = piper_tts(sample_rate=22_050)
    session, rec = make(vad, tts=tts, llm=smollm_llm(["One, two.", " Three four."]))
    await session.add_user_text("Count.")
    await session.create_response()
    await rec.wait_for(ResponseDone)
    await session.aclose()
    seconds = sum(d.audio.duration for d in rec.of(ResponseAudioDelta))
    expected = sum(len(tts.render(c.input, c.speed)) for c in tts.calls) / 22_050
    assert seconds == pytest.approx(expected, abs=0.005)


async def test_stage_errors_fail_the_response_and_the_session_goes_on(vad: SileroVAD) -> None:
    down = EngineUnavailable("scripted failure", stage="llm", backend="fake-llm")
    llm, tts = smollm_llm(plans=[Plan(error=down, after=2)]), piper_tts()
    session, rec = make(vad, llm=llm, tts=tts)
    await session.add_user_text("Hello?")
    await session.create_response()
    await rec.wait_for(ResponseDone)
    failed = rec.of(ResponseDone)[0]
    assert failed.status == "failed" and failed.error is not None
    assert (failed.error.stage, failed.error.type) == ("llm", "server_error")
    assert rec.index(ErrorEvent) < rec.index(ResponseDone)

    await session.create_response()  # the LLM works again
    await rec.wait_for(ResponseDone, 2)
    assert rec.of(ResponseDone)[1].status == "completed"

    llm.reply = ["Nope."]
    tts.plans.append(Plan(error=EngineUnavailable("scripted", stage="tts", backend="fake-tts")))
    await session.create_response()
    await rec.wait_for(ResponseDone, 3)
    assert rec.of(ResponseDone)[2].status == "failed"
    assert rec.of(ResponseDone)[2].error.stage == "tts"
    await session.aclose()


async def test_stt_failure_is_reported_and_nothing_is_answered(vad: SileroVAD) -> None:
    down = EngineUnavailable("down", stage="stt", backend="fake-stt")
    stt = whisper_stt(fail_times=100, error=down)  # every call
    session, rec = make(vad, stt=stt)
    await feed(session, clip(0.3, QUESTION, 0.8), speed=None)
    await rec.wait_for(TranscriptFailed)
    await asyncio.sleep(0.2)
    await session.aclose()
    assert rec.of(TranscriptFailed)[0].error.stage == "stt"
    assert not rec.of(ResponseCreated)


async def test_bad_operations_are_errors_and_the_session_stays_open(vad: SileroVAD) -> None:
    session, rec = make(vad)
    await session.commit()  # nothing spoken
    await session.cancel_response()  # nothing to cancel
    await session.update(no_such_field=1)
    await session.update(speed=10.0)
    await session.append_audio(AudioChunk(np.full(480, np.nan, np.float32), RATE))
    await session.add_user_text("  ")
    await rec.settle()
    codes = [e.code for e in rec.of(ErrorEvent)]
    assert codes[:2] == ["input_audio_buffer_commit_empty", "response_cancel_not_active"]
    assert len(codes) == 6 and {e.type for e in rec.of(ErrorEvent)} == {"invalid_request_error"}

    await session.add_user_text("Hi.")
    await session.create_response()
    await session.create_response()  # one at a time
    await rec.wait_for(ResponseDone)
    assert rec.of(ErrorEvent)[-1].code == "conversation_already_has_active_response"
    assert rec.of(ResponseDone)[0].status == "completed"
    await session.aclose()
    await session.add_user_text("after close")  # a no-op
    assert rec.of(ResponseDone)[0].status == "completed"


async def test_manual_turns_commit_then_respond(vad: SileroVAD) -> None:
    config = SessionConfig(turn_detection=None)
    session, rec = make(vad, config=config)
    await session.append_audio(AudioChunk(np.zeros(RATE // 20, np.float32), RATE))
    await session.commit()  # 50 ms: too short
    await rec.settle()
    assert rec.of(ErrorEvent)[0].code == "input_audio_buffer_commit_empty"
    await feed(session, clip(0.2, QUESTION, 0.2), speed=None)
    await session.commit()
    await rec.wait_for(TranscriptCompleted)
    await asyncio.sleep(0.2)
    assert not rec.of(SpeechStarted) and not rec.of(ResponseCreated)  # no VAD, no auto reply
    await session.create_response()
    await rec.wait_for(ResponseDone)
    await session.aclose()
    t = rec.of(ResponseDone)[0].timings
    # no VAD decision, and no speculation: the whole transcription is waited for after the commit
    assert t.endpoint_ms is None and t.stt_ms is not None
    assert t.stt_ms == pytest.approx(rec.of(TranscriptCompleted)[0].compute_ms, abs=1)
    assert t.v2v_ms is not None and t.v2v_ms > t.stt_ms


async def test_update_switches_turn_detection_and_instructions(vad: SileroVAD) -> None:
    llm = smollm_llm()
    session, rec = make(vad, llm=llm, config=SessionConfig(turn_detection=None))
    await session.update(turn_detection=TurnDetection(silence_duration_ms=200))
    await session.update(instructions="Speak like a pirate.")
    await rec.settle()
    assert len(rec.of(SessionUpdated)) == 2
    await feed(session, clip(0.3, QUESTION, 0.6), speed=None)
    await rec.wait_for(ResponseDone)
    await session.aclose()
    assert llm.calls[0].input[0].content == "Speak like a pirate."


async def test_history_is_bounded_and_keeps_the_system_prompt(vad: SileroVAD) -> None:
    llm = smollm_llm(["Ok."])
    session, rec = make(vad, llm=llm, history_max_tokens=40, chars_per_token=4.0)
    for i in range(10):
        await session.add_user_text(f"message {i} " + "x" * 28)  # 40 chars: 10 + 4 tokens
    await session.create_response()
    await rec.wait_for(ResponseDone)
    await session.aclose()
    sent = llm.calls[0].input
    assert [m.role for m in sent] == ["system", "user", "user"]
    assert sent[0].content == "Be brief."
    assert sent[-1].content.startswith("message 9")
    assert len(session.items) <= 3


@pytest.mark.looptime(False)  # real engines in real threads, on the real clock
async def test_with_real_engines() -> None:
    """One voice turn through faster-whisper, transformers and Piper (the packaged models)."""
    from models.llm_transformers import TransformersLLM
    from models.stt_whisper import WhisperSTT
    from models.tts_piper import PiperTTS
    from pipeline.settings import Settings

    settings = Settings()
    stt = WhisperSTT(settings.stt)
    llm = TransformersLLM(settings.llm, cache_dir=settings.cache_dir)
    tts = PiperTTS(settings.tts)
    await asyncio.gather(stt.start(), llm.start(), tts.start())
    config = SessionConfig.from_settings(settings)
    config = dataclasses.replace(config, params=GenerationParams(max_tokens=24, temperature=0))
    policy = settings.session.model_copy(update={"partial_interval_ms": 0})  # fewer STT runs
    session = Session(stt, llm, tts, SileroVAD(), config=config, settings=policy)
    rec = Recorder(session)
    try:
        # the default (smart) turn end waits up to 1.2 s of silence for a transcript
        await feed(session, clip(0.3, QUESTION, 1.5), speed=4.0)
        await rec.wait_for(ResponseDone, within=120)
    finally:
        await session.aclose()
        await asyncio.gather(stt.aclose(), llm.aclose(), tts.aclose())
    transcript = rec.of(TranscriptCompleted)[0].text.lower()
    assert "capital" in transcript and "france" in transcript
    done = rec.of(ResponseDone)[0]
    print(f"\nreal engines (cold, 4x feed): {done.timings}\n{done.transcript!r}")
    assert done.status in ("completed", "incomplete") and done.transcript
    assert sum(d.audio.duration for d in rec.of(ResponseAudioDelta)) > 0.5
    assert done.backends.stt.startswith("whisper") and done.backends.tts.startswith("piper")


async def test_clear_drops_the_open_utterance(vad: SileroVAD) -> None:
    session, rec = make(vad)
    speech = clip(0.3, QUESTION)
    await feed(
        session, AudioChunk(speech.samples[: len(speech.samples) * 2 // 3], RATE), speed=None
    )
    await rec.wait_for(SpeechStarted)
    await session.clear()
    await feed(session, clip(1.0), speed=None)
    await asyncio.sleep(0.2)
    await session.aclose()
    assert rec.index(SpeechStarted) < rec.index(InputCleared)
    assert not rec.of(SpeechStopped) and not rec.of(InputCommitted) and not rec.of(ResponseCreated)


async def test_a_turn_longer_than_the_limit_is_ended(vad: SileroVAD) -> None:
    session, rec = make(vad, max_utterance_seconds=1.0)
    await feed(session, clip(0.3, QUESTION, 0.8), speed=None)
    await rec.wait_for(ResponseDone)
    await session.aclose()
    stops = rec.of(SpeechStopped)
    assert stops[0].audio_end_ms - rec.of(SpeechStarted)[0].audio_start_ms <= 1100
    assert len(rec.of(SpeechStarted)) == 2  # the rest of the question is a new turn


def test_heard_text_maps_audio_time_to_whole_words() -> None:
    spoken = [("Paris is the capital.", 1000.0), ("It is big and old.", 1000.0)]
    assert heard_text(spoken, 0) == ""
    assert heard_text(spoken, 999) == "Paris is the"  # not "capital" half-said
    assert heard_text(spoken, 1000) == "Paris is the capital."
    assert heard_text(spoken, 1500) == "Paris is the capital. It is big"
    assert heard_text(spoken, 5000) == "Paris is the capital. It is big and old."
    item = Item("item_1", "assistant", "", audio=True, spoken=list(spoken))
    item.truncate(1500)
    assert item.text == "Paris is the capital. It is big" and item.audio_ms == 1500
    item.truncate(1200)  # again: 200 of the 500 ms left of "It is big" -> 40 % -> "It"
    assert item.text == "Paris is the capital. It" and item.audio_ms == 1200


async def test_a_reply_failing_midway_keeps_what_was_heard(vad: SileroVAD) -> None:
    tokens = ["First sentence here.", " Second one", " fails", " now."]
    down = EngineUnavailable("scripted failure", stage="llm", backend="fake-llm")
    # a slow LLM (e.g. a hosted one): the first phrase is spoken before it fails
    llm = smollm_llm(tokens, plans=[Plan(error=down, after=3, gap_s=0.3)])
    session, rec = make(vad, llm=llm)
    await session.add_user_text("Go.")
    await session.create_response()
    await rec.wait_for(ResponseDone)
    await session.aclose()
    done = rec.of(ResponseDone)[0]
    assert done.status == "failed" and rec.of(ResponseAudioDelta)
    assert done.transcript == "First sentence here."
    assert session.items[-1].text == "First sentence here."
