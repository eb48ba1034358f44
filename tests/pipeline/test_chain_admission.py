"""Fallback chains with admission: waiting for a busy engine is not failing.

Scripted engines with a scheduler (as the registry gives every engine), on the loop's virtual
clock: a call that waits longer than the first-output deadline for its turn still succeeds,
since the deadline starts once it has the engine; a refusal moves the call on without counting
against the refusing backend's breaker; and under saturation the breaker stays closed while
the excess is refused at once.
"""

from __future__ import annotations

import asyncio

import pytest

from pipeline.errors import EngineBusy, EngineTimeout
from pipeline.fallback import (
    BreakerState,
    Fallback,
    FallbackLLM,
    FallbackPolicy,
    FallbackSTT,
    collect_reports,
)
from pipeline.priority import Priority, priority
from pipeline.stages import CallRecord
from pipeline.types import AudioChunk, Message
from tests.fakes import Plan, ScriptedLLM, ScriptedSTT, loop_time, scheduled, tone

pytestmark = pytest.mark.looptime

POLICY = FallbackPolicy(first_output_timeout_s=5.0, gap_timeout_s=5.0, failure_threshold=2)
AUDIO = AudioChunk(tone(0.5, 16_000), 16_000)
CHAT = [Message("user", "Hi")]


async def reply(llm: FallbackLLM) -> str:
    return "".join([d.text async for d in llm.stream(CHAT)])


async def test_a_call_that_waits_past_the_deadline_for_its_turn_is_served_not_timed_out() -> None:
    engine = scheduled(ScriptedLLM("llm", ttft_s=3.0), capacity=1, max_wait_s=60)
    records: list[CallRecord] = []
    engine.listeners.append(records.append)
    chain = FallbackLLM([engine], POLICY)
    # three at once on an engine that serves one: the third waits 6 s, past the 5 s deadline
    replies = await asyncio.gather(*(reply(chain) for _ in range(3)))
    assert replies == ["Hello, world. How are you?"] * 3
    assert [c.started for c in engine.calls] == [0.0, 3.0, 6.0]  # one at a time
    state = chain.backend_states()[0]
    assert state.state is BreakerState.CLOSED and state.consecutive_failures == 0
    # each call's own time, not its wait: the engine took 3 s to its first output every time
    assert [r.first_output_ms for r in records] == [3000.0] * 3
    assert state.p95_first_output_ms == 3000.0


async def test_without_admission_the_same_load_would_have_timed_out() -> None:
    # the control: an engine that serialises calls by itself (a lock inside, as llama.cpp's
    # used to) makes the waiting count against the deadline, and the breaker opens
    lock = asyncio.Lock()

    class Serialised(ScriptedLLM):
        async def _stream(self, messages, params):  # type: ignore[no-untyped-def, override]
            async with lock:
                async for delta in super()._stream(messages, params):
                    yield delta

    chain = FallbackLLM([Serialised("llm", ttft_s=3.0)], POLICY)
    results = await asyncio.gather(*(reply(chain) for _ in range(3)), return_exceptions=True)
    assert any(isinstance(r, EngineTimeout) for r in results)


async def test_a_refusal_moves_the_call_on_and_is_no_failure_of_the_refusing_backend() -> None:
    busy = scheduled(ScriptedSTT("gpu", latency_s=1.0), capacity=1, max_queue=0)
    spare = scheduled(ScriptedSTT("cpu"))
    chain = FallbackSTT([busy, spare], POLICY)
    first = asyncio.create_task(anext(chain.transcribe(AUDIO)))
    await asyncio.sleep(0.1)  # the first call holds the gpu
    with collect_reports() as reports:
        texts = [t.text async for t in chain.transcribe(AUDIO) if t.final]
    assert texts == ["hello there world"]
    (report,) = reports.reports
    assert report.served_by == "cpu"
    assert report.fallbacks == (Fallback("gpu", "cpu", "overloaded", "EngineBusy"),)
    gpu = chain.backend_states()[0]
    assert gpu.state is BreakerState.CLOSED and gpu.consecutive_failures == 0
    assert len(busy.calls) == 1  # the refused call cost the busy engine nothing
    await first


async def test_when_no_backend_admits_the_call_it_is_refused_at_once_with_retry_after() -> None:
    engine = scheduled(ScriptedLLM("llm", ttft_s=1.0), capacity=1, max_queue=0)
    chain = FallbackLLM([engine], POLICY)
    running = asyncio.create_task(reply(chain))
    await asyncio.sleep(0.1)
    before = loop_time()
    with collect_reports() as reports:
        with pytest.raises(EngineBusy) as refused:
            await reply(chain)
    assert loop_time() == before
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 1
    assert reports.reports[0].error == "EngineBusy"
    assert len(engine.calls) == 1
    await running


async def test_under_saturation_the_excess_is_refused_and_the_breaker_stays_closed() -> None:
    engine = scheduled(ScriptedLLM("llm", ttft_s=0.5, token_s=0.1), capacity=1, max_queue=3)
    chain = FallbackLLM([engine], POLICY)
    results = await asyncio.gather(*(reply(chain) for _ in range(20)), return_exceptions=True)
    served = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, EngineBusy)]
    assert len(served) == 4 and len(refused) == 16  # one running, three waiting
    assert len(served) + len(refused) == 20  # nothing else: no timeout, no failure
    state = chain.backend_states()[0]
    assert state.state is BreakerState.CLOSED and state.consecutive_failures == 0
    assert len(engine.calls) == 4


async def test_partials_are_dropped_by_a_busy_engine_and_finals_go_first() -> None:
    stt = scheduled(ScriptedSTT("stt", latency_s=1.0, partials=False), capacity=1)
    chain = FallbackSTT([stt], POLICY)

    async def transcribe(prio: Priority, seconds: float) -> None:
        with priority(prio):  # the clip's length tells the calls apart
            [_ async for _ in chain.transcribe(AudioChunk(tone(seconds, 16_000), 16_000))]

    tasks = [asyncio.create_task(transcribe(Priority.INTERACTIVE, 0.5))]  # holds the engine
    await asyncio.sleep(0.1)
    tasks.append(asyncio.create_task(transcribe(Priority.SPECULATIVE, 0.6)))
    await asyncio.sleep(0.1)
    tasks.append(asyncio.create_task(transcribe(Priority.INTERACTIVE, 0.7)))
    await asyncio.sleep(0.1)
    with pytest.raises(EngineBusy):
        await transcribe(Priority.PARTIAL, 0.8)
    await asyncio.gather(*tasks)
    # the final that asked last ran before the speculative one; the partial never ran
    assert [(c.started, round(c.input.duration, 1)) for c in stt.calls] == [
        (0.0, 0.5),
        (1.0, 0.7),
        (2.0, 0.6),
    ]


async def test_a_hung_engine_is_still_timed_out_and_its_waiters_move_on() -> None:
    # admission changes nothing for an engine that fails on its own time
    hung = scheduled(ScriptedLLM("hung", plans=[Plan(hang=True)]), capacity=1, max_wait_s=60)
    spare = scheduled(ScriptedLLM("spare"))
    chain = FallbackLLM([hung, spare], POLICY)
    with collect_reports() as reports:
        assert await reply(chain) == "Hello, world. How are you?"
    assert reports.reports[0].fallbacks[0].reason == "first_output_timeout"
    assert hung.scheduler is not None and hung.scheduler.in_use == 0


async def test_a_function_call_that_cannot_move_on_gives_back_the_next_backends_slot() -> None:
    """A backend fails after streaming part of a function call: the call cannot be started over
    on the next backend (the client has its id), and the slot the chain took there for it is
    given back, not lost (with capacity 1, a lost slot would refuse every later call)."""
    from pipeline.errors import StageError
    from pipeline.types import FunctionTool, GenerationParams

    weather = FunctionTool("get_weather", "Weather.", {"type": "object", "properties": {}})
    tools = GenerationParams(tools=(weather,))
    first = ScriptedLLM(
        "gpu", tool_calls=[("get_weather", "{}")], plans=[Plan(error=OSError, after=1)]
    )
    second = scheduled(
        ScriptedLLM("cpu", tool_calls=[("get_weather", "{}")]), capacity=1, max_queue=0
    )
    chain = FallbackLLM([first, second], POLICY)
    with pytest.raises(StageError, match="cannot be continued"):
        async for _ in chain.stream(CHAT, tools):
            pass
    assert second.scheduler is not None and second.scheduler.in_use == 0
    assert await reply(FallbackLLM([second], POLICY)) == "Hello, world. How are you?"
