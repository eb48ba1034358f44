"""Sessions sharing engines, and clients that do not keep up: real Silero VAD on real speech,
scripted engines with a scheduler (as the registry gives every engine), virtual time.

- Two sessions speaking at once share one STT engine of capacity 1: it never runs two
  transcriptions at once, partials it has no time for are dropped (never an error), and both
  turns get their final transcript and their answer.
- A reply whose consumer does not read pauses its synthesis; a session whose client reads
  nothing fails the response (``client_too_slow``) after the stall timeout, and the engines stop.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from typing import Any

import numpy as np
import pytest

from models.vad_silero import SileroVAD
from pipeline.audio import resample
from pipeline.events import (
    ErrorEvent,
    Event,
    ResponseAudioDelta,
    ResponseDone,
    TranscriptCompleted,
    TranscriptFailed,
)
from pipeline.fallback import FallbackSTT
from pipeline.reply import Reply
from pipeline.session import Session
from pipeline.session_config import SessionConfig, TurnDetection
from pipeline.settings import SessionSettings
from pipeline.types import AudioChunk, Message
from tests.conftest import speak
from tests.fakes import (
    PIPER_PACE,
    SMOLLM2_PACE,
    WHISPER_TINY_PACE,
    ScriptedLLM,
    ScriptedSTT,
    ScriptedTTS,
    loop_time,
    scheduled,
)
from tests.pipeline.test_session import _InlineExecutor

pytestmark = pytest.mark.looptime

RATE = 24_000
QUESTION = "What is the capital of France?"
LONG = [f" Sentence number {i} is here." for i in range(30)]


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    model = SileroVAD()
    model.load()
    return model


@functools.cache
def question(lead_s: float, tail_s: float) -> AudioChunk:
    speech = speak(QUESTION, pad_seconds=0.0).samples
    pieces = [np.zeros(int(lead_s * 16_000)), speech, np.zeros(int(tail_s * 16_000))]
    return resample(AudioChunk(np.concatenate(pieces).astype(np.float32), 16_000), RATE)


def tts() -> ScriptedTTS:
    return ScriptedTTS(sample_rate=22_050, seconds_per_char=0.06, chunk_s=0.2, **PIPER_PACE)


def session_of(
    vad: SileroVAD, stt: Any, llm: Any, speaker: Any, **settings: Any
) -> tuple[Session, SessionSettings]:
    asyncio.get_running_loop().set_default_executor(_InlineExecutor())
    policy = SessionSettings(**settings)
    return Session(
        stt,
        llm,
        speaker,
        vad.fork(),
        config=SessionConfig(
            instructions="Be brief.", turn_detection=TurnDetection.from_settings(policy)
        ),
        settings=policy,
        clock=loop_time,
    ), policy


async def feed(session: Session, audio: AudioChunk) -> None:
    step = RATE // 50
    for offset in range(0, len(audio.samples), step):
        await session.append_audio(AudioChunk(audio.samples[offset : offset + step], RATE))
        await asyncio.sleep(0.02)


async def collect(session: Session, into: list[Event]) -> None:
    async for event in session:
        into.append(event)


async def until(condition: Any, within: float = 30.0) -> None:
    deadline = loop_time() + within
    while not condition():
        assert loop_time() < deadline
        await asyncio.sleep(0.01)


async def test_two_sessions_share_one_stt_engine_partials_yield_and_both_are_answered(
    vad: SileroVAD,
) -> None:
    whisper = scheduled(
        ScriptedSTT(text="what is the capital of france", partials=False, **WHISPER_TINY_PACE)
    )
    stt = FallbackSTT([whisper])
    sessions, logs = [], []
    for _ in range(2):
        session, _ = session_of(
            vad,
            stt,
            ScriptedLLM(reply=("Paris.",), **SMOLLM2_PACE),
            tts(),
            partial_interval_ms=300,
            silence_duration_ms=600,
        )
        log: list[Event] = []
        sessions.append(session)
        logs.append((log, asyncio.create_task(collect(session, log))))
    # both speak at once, the second a little later
    await asyncio.gather(
        feed(sessions[0], question(0.3, 1.5)), feed(sessions[1], question(0.5, 1.3))
    )
    await until(lambda: all(any(isinstance(e, ResponseDone) for e in log) for log, _ in logs))
    for session in sessions:
        await session.aclose()

    calls = sorted(whisper.calls, key=lambda c: c.started)
    for before, after in itertools.pairwise(calls):  # one transcription at a time
        assert before.finished is not None and after.started >= before.finished
    assert whisper.scheduler is not None and whisper.scheduler.refused > 0  # partials dropped
    for log, _ in logs:
        assert not [e for e in log if isinstance(e, ErrorEvent | TranscriptFailed)]
        (done,) = [e for e in log if isinstance(e, TranscriptCompleted)]
        assert done.text == "what is the capital of france"
        (response,) = [e for e in log if isinstance(e, ResponseDone)]
        assert response.status == "completed" and response.transcript == "Paris."


async def test_a_reply_nobody_reads_pauses_its_synthesis_between_phrases() -> None:
    llm, speaker = ScriptedLLM(reply=LONG, **SMOLLM2_PACE), tts()
    reply = Reply(llm, speaker, [Message("user", "Talk.")], buffer_s=3.0)
    reply.start()
    await asyncio.sleep(30)  # far longer than speaking the whole reply takes
    # the LLM was not held up: the whole reply is written
    assert llm.calls[0].finished is not None and len(reply.phrases) >= 10
    # but only about 3 s of audio was made: a phrase is ~1.7 s here
    spoken = len(speaker.calls)
    assert 2 <= spoken <= 3 < len(reply.phrases)
    heard = [chunk async for chunk in reply.chunks()]  # the consumer catches up
    assert len(speaker.calls) == len(reply.phrases)
    assert {c.phrase_index for c in heard} == set(range(len(reply.phrases)))
    await reply.aclose()


async def test_a_client_that_reads_nothing_has_its_response_failed_and_its_engines_freed(
    vad: SileroVAD,
) -> None:
    llm, speaker = ScriptedLLM(reply=LONG, **SMOLLM2_PACE), scheduled(tts())
    asyncio.get_running_loop().set_default_executor(_InlineExecutor())
    session = Session(
        ScriptedSTT(text="talk to me", partials=False, **WHISPER_TINY_PACE),
        llm,
        speaker,
        vad.fork(),
        settings=SessionSettings(),
        clock=loop_time,
        stall_timeout_s=5.0,
    )
    events = session.events()
    await session.add_user_text("Talk to me.")
    await session.create_response()
    seen: list[Event] = []
    while not any(isinstance(e, ResponseAudioDelta) for e in seen):
        seen.append(await anext(events))
    stalled_at = loop_time()
    await asyncio.sleep(30)  # the client reads nothing more
    # the response waited for room, gave up after the stall timeout and freed its engines
    assert all(call.closed for call in speaker.calls)
    assert speaker.scheduler is not None and speaker.scheduler.in_use == 0
    assert len(speaker.calls) < len(LONG)  # synthesis paused, then stopped
    rest: list[Event] = []
    while not any(isinstance(e, ResponseDone) for e in rest):
        rest.append(await anext(events))
    done = next(e for e in rest if isinstance(e, ResponseDone))
    assert done.status == "failed"
    assert done.error is not None and done.error.code == "client_too_slow"
    error = next(e for e in rest if isinstance(e, ErrorEvent))
    assert error.code == "client_too_slow"
    # it failed after the stall timeout, not before: the wait for room had started by then
    assert speaker.calls[-1].started <= stalled_at + 5.0
    await session.aclose()
