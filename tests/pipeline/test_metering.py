"""Metering: every engine call lands, once, in the meter of the context that made it, with the
engine's own counts; a chain's calls are not counted on top of its backends'."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from pipeline.errors import EngineUnavailable
from pipeline.fallback import FallbackLLM
from pipeline.metering import Meter, current
from pipeline.types import AudioChunk, Message
from tests.fakes import Plan, ScriptedLLM, ScriptedSTT, ScriptedTTS

pytestmark = pytest.mark.looptime

PARIS = ("Paris", " is", " the", " capital", " of", " France", ".")
MESSAGES = [Message("system", "Be brief."), Message("user", "What is the capital of France?")]


async def test_a_meter_collects_the_calls_of_its_context_and_of_tasks_created_in_it() -> None:
    stt, llm, tts = ScriptedSTT(), ScriptedLLM(reply=PARIS), ScriptedTTS()
    audio = AudioChunk(np.full(32_000, 0.1, np.float32), 16_000)

    async def speak() -> None:
        async for _ in tts.synthesize("Paris is the capital."):
            pass

    outside = Meter()
    with outside.bind():
        pass
    with Meter().bind() as meter:
        async for _ in stt.transcribe(audio):
            pass
        async for _ in llm.stream(MESSAGES):
            pass
        await asyncio.create_task(speak())  # a child task inherits the meter
    async for _ in llm.stream(MESSAGES):  # no meter bound: nobody bills it
        pass

    assert current() is None and outside.calls == ()
    stt_call, llm_call, tts_call = meter.calls
    assert (stt_call.stage, stt_call.audio_in_seconds) == ("stt", pytest.approx(2.0))
    assert (llm_call.tokens_in, llm_call.tokens_out) == (llm.count_tokens(MESSAGES), 7)
    assert tts_call.chars == len("Paris is the capital.")
    samples = tts.samples_for("Paris is the capital.")
    assert tts_call.audio_out_seconds == pytest.approx(samples / tts.capabilities.sample_rate)
    assert all(call.error is None and call.total_ms >= 0 for call in meter.calls)
    assert meter.take() == (stt_call, llm_call, tts_call) and meter.calls == ()


async def test_a_chain_reports_each_backend_call_and_not_its_own() -> None:
    down = EngineUnavailable("scripted failure", stage="llm", backend="broken")
    broken = ScriptedLLM("broken", reply=PARIS, plans=[Plan(error=down)])
    spare = ScriptedLLM("spare", reply=PARIS)
    chain = FallbackLLM([broken, spare])
    with Meter().bind() as meter:
        text = "".join([d.text async for d in chain.stream(MESSAGES)])
    await chain.aclose()

    assert text == "Paris is the capital of France."
    failed, served = meter.calls
    assert (failed.backend, failed.error) == ("broken", EngineUnavailable.__name__)
    assert (served.backend, served.error, served.tokens_out) == ("spare", None, 7)


async def test_a_call_cut_short_counts_what_the_engine_did() -> None:
    llm = ScriptedLLM(reply=PARIS)
    with Meter().bind() as meter:
        stream = llm.stream(MESSAGES)
        async with contextlib.aclosing(stream):
            async for delta in stream:
                if delta.text == " the":  # the third token: the consumer stops here
                    break

    [call] = meter.calls
    assert llm.calls[0].closed_early and llm.calls[0].outputs == 3
    # no final usage came: the prompt as the engine tokenizes it, a token per delta
    assert (call.tokens_in, call.tokens_out) == (llm.count_tokens(MESSAGES), 3)
    assert call.error is None  # cut short by its consumer: work done, not a failure
