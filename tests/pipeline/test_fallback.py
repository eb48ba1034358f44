"""Fallback chains driven by scripted engines: which backend serves, nothing said twice,
deadlines, breakers and their recovery, concurrent reports, cancellation.

The engines are the scripted doubles (tests/fakes) because the failures under test (an
out-of-memory error halfway through a reply, a hung GPU worker, NaN audio) cannot be produced on
demand by the real ones; they are real STT/LLM/TTS subclasses, so the stage base classes'
validation and error translation run as in production. Every test runs on the event loop's
virtual clock (``looptime``): deadlines, probes and trial intervals are the production defaults
or any other length, they cost no real time, and elapsed times are exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import numpy as np
import pytest

from pipeline.errors import (
    EngineTimeout,
    EngineUnavailable,
    InvalidInput,
    ModelLoadError,
    StageError,
)
from pipeline.fallback import (
    CONTINUE_PROMPT,
    BreakerState,
    Fallback,
    FallbackLLM,
    FallbackPolicy,
    FallbackReport,
    FallbackSTT,
    FallbackTTS,
    collect_reports,
)
from pipeline.types import AudioChunk, GenerationParams, Message, TextDelta, Transcript
from tests.fakes import (
    OutOfMemoryError,
    Plan,
    ScriptedLLM,
    ScriptedSTT,
    ScriptedTTS,
    loop_time,
    tone,
)

T = TypeVar("T")
pytestmark = pytest.mark.looptime

FAST = FallbackPolicy(
    first_output_timeout_s=0.1, gap_timeout_s=0.1, failure_threshold=2, probe_interval_s=0.05
)
AUDIO = AudioChunk(tone(0.5, 16_000), 16_000)
CHAT = [Message("system", "Be brief."), Message("user", "Hi")]
REPLY = "Hello, world. How are you?"


async def _collect(stream: AsyncIterator[T]) -> tuple[list[T], FallbackReport]:
    with collect_reports() as reports:
        items = [item async for item in stream]
    (report,) = reports.reports
    return items, report


def _text(deltas: list[TextDelta]) -> str:
    return "".join(d.text for d in deltas)


def _samples(chunks: list[AudioChunk]) -> np.ndarray:
    return np.concatenate([c.samples for c in chunks])


# -- which backend serves --------------------------------------------------------------------------


async def test_a_healthy_primary_serves_alone() -> None:
    gpu, cpu = ScriptedSTT("gpu"), ScriptedSTT("cpu")
    chain = FallbackSTT([gpu, cpu], FAST)
    items, report = await _collect(chain.transcribe(AUDIO))
    assert [t.text for t in items] == ["hello", "hello there", "hello there world"]
    assert items[-1].final
    assert report == FallbackReport("stt", "gpu>cpu", "gpu", (), None)
    assert (len(gpu.calls), len(cpu.calls)) == (1, 0)


async def test_out_of_memory_before_output_moves_on_transparently() -> None:
    gpu, cpu = ScriptedLLM("gpu", fail_times=1, error=OutOfMemoryError), ScriptedLLM("cpu")
    chain = FallbackLLM([gpu, cpu], FAST)
    deltas, report = await _collect(chain.stream(CHAT))
    assert _text(deltas) == REPLY
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage is not None
    assert report.served_by == "cpu"
    assert report.fallbacks == (Fallback("gpu", "cpu", "error", "EngineOverloaded", False),)
    assert cpu.calls[0].input == CHAT  # the same request, no continuation


async def test_invalid_input_is_not_retried() -> None:
    gpu = ScriptedSTT("gpu", plans=[Plan(error=InvalidInput("unsupported language"))])
    cpu = ScriptedSTT("cpu")
    chain = FallbackSTT([gpu, cpu], FAST)
    with collect_reports() as reports, pytest.raises(InvalidInput):
        await _collect(chain.transcribe(AUDIO))
    assert cpu.calls == [] and reports.reports[0].error == "InvalidInput"
    assert chain.backend_states()[0].consecutive_failures == 0  # not the backend's fault


async def test_a_non_retryable_stage_error_is_raised_unchanged() -> None:
    refusal = StageError("refused", stage="tts", backend="gpu", retryable=False)
    gpu, cpu = ScriptedTTS("gpu", plans=[Plan(error=refusal)]), ScriptedTTS("cpu")
    with pytest.raises(StageError) as caught:
        await _collect(FallbackTTS([gpu, cpu], FAST).synthesize("Hi there."))
    assert caught.value is refusal and cpu.calls == []


async def test_a_model_load_error_moves_on_and_opens_the_breaker_at_once() -> None:
    missing = ModelLoadError("no weights", stage="stt", backend="gpu", retryable=False)
    gpu, cpu = ScriptedSTT("gpu", plans=[Plan(error=missing)]), ScriptedSTT("cpu")
    chain = FallbackSTT([gpu, cpu], FallbackPolicy(failure_threshold=3, probe_interval_s=60))
    _, report = await _collect(chain.transcribe(AUDIO))
    assert report.served_by == "cpu"
    assert chain.backend_states()[0].state is BreakerState.OPEN
    await chain.aclose()


async def test_when_every_backend_fails_the_last_error_is_raised() -> None:
    gpu = ScriptedLLM("gpu", fail_times=1, error=OutOfMemoryError)
    cpu = ScriptedLLM("cpu", fail_times=1, error=ConnectionResetError)
    with collect_reports() as reports, pytest.raises(StageError) as caught:
        await _collect(FallbackLLM([gpu, cpu], FAST).stream(CHAT))
    assert caught.value.backend == "cpu"
    (report,) = reports.reports
    assert report.served_by is None and report.error == "StageError"
    assert [(f.from_backend, f.to_backend) for f in report.fallbacks] == [
        ("gpu", "cpu"),
        ("cpu", None),
    ]


# -- nothing is said twice -------------------------------------------------------------------------


@pytest.mark.parametrize("continuation", ["restart", "resume"])
async def test_llm_continues_after_partial_output_without_repeating(continuation: Any) -> None:
    gpu = ScriptedLLM("gpu", plans=[Plan(error=OutOfMemoryError, after=3)])  # "Hello, world"
    cpu = ScriptedLLM("cpu", continuation=continuation)
    chain = FallbackLLM([gpu, cpu], FAST)
    deltas, report = await _collect(chain.stream(CHAT, GenerationParams(max_tokens=20)))
    assert _text(deltas) == REPLY  # what one healthy backend says, exactly once
    assert report.fallbacks == (Fallback("gpu", "cpu", "error", "EngineOverloaded", True),)
    messages, params = cpu.calls[0].input, cpu.calls[0].params
    assert messages == [
        *CHAT,
        Message("assistant", "Hello, world"),
        Message("user", CONTINUE_PROMPT),
    ]
    assert params.max_tokens is not None and params.max_tokens > 20  # room to repeat the prefix


async def test_an_empty_reply_moves_on_and_is_passed_on_by_the_last_backend() -> None:
    gpu, cpu = ScriptedLLM("gpu", plans=[Plan(garbage=True)]), ScriptedLLM("cpu")
    deltas, report = await _collect(FallbackLLM([gpu, cpu], FAST).stream(CHAT))
    assert _text(deltas) == REPLY and report.served_by == "cpu"
    assert report.fallbacks[0].reason == "unusable_output"
    cpu.plans.append(Plan(garbage=True))
    alone = FallbackLLM([ScriptedLLM("only", plans=[Plan(garbage=True)])], FAST)
    deltas, report = await _collect(alone.stream(CHAT))
    assert [(d.text, d.finish_reason) for d in deltas] == [("", "stop")]
    assert report.served_by == "only"  # the call did not fail: it said nothing


async def test_stt_after_partials_retries_the_clip_and_never_goes_backwards() -> None:
    gpu = ScriptedSTT("gpu", plans=[Plan(error=RuntimeError, after=1)])  # sent "hello"
    cpu = ScriptedSTT("cpu", text="hello their world")
    items, report = await _collect(FallbackSTT([gpu, cpu], FAST).transcribe(AUDIO))
    # cpu's own "hello" would repeat, "hello their" extends what was shown: passed on
    assert [(t.text, t.final) for t in items] == [
        ("hello", False),
        ("hello their", False),
        ("hello their world", True),
    ]
    assert report.served_by == "cpu" and report.fallbacks[0].after_output
    assert np.array_equal(cpu.calls[0].input.samples, AUDIO.samples)  # the whole clip again


async def test_stt_empty_final_is_an_answer_but_no_final_is_not() -> None:
    gpu, cpu = ScriptedSTT("gpu", text=""), ScriptedSTT("cpu")
    items, report = await _collect(FallbackSTT([gpu, cpu], FAST).transcribe(AUDIO))
    assert [(t.text, t.final) for t in items] == [("", True)] and report.served_by == "gpu"
    gpu = ScriptedSTT("gpu", plans=[Plan(garbage=True)])
    items, report = await _collect(FallbackSTT([gpu, cpu], FAST).transcribe(AUDIO))
    assert items[-1] == Transcript("hello there world", True, audio_seconds=0.5)
    assert report.fallbacks[0].reason == "unusable_output"


async def test_tts_resumes_the_phrase_where_the_audio_stopped() -> None:
    text = "A phrase of some length."
    gpu = ScriptedTTS("gpu", plans=[Plan(error=OutOfMemoryError, after=2)])
    cpu = ScriptedTTS("cpu", chunk_s=0.03)  # other chunk borders: skipping is by samples
    chunks, report = await _collect(FallbackTTS([gpu, cpu], FAST).synthesize(text))
    assert np.array_equal(_samples(chunks), cpu.render(text))  # every sample once, in order
    assert report.fallbacks == (Fallback("gpu", "cpu", "error", "EngineOverloaded", True),)


async def test_tts_audio_stays_at_the_first_backends_rate() -> None:
    text = "A phrase of some length."
    gpu = ScriptedTTS("gpu", sample_rate=16_000, plans=[Plan(error=RuntimeError, after=2)])
    hosted = ScriptedTTS("hosted", sample_rate=24_000)
    chain = FallbackTTS([gpu, hosted], FAST)
    assert chain.capabilities.sample_rate == 16_000
    chunks, _ = await _collect(chain.synthesize(text))
    assert {c.sample_rate for c in chunks} == {16_000}
    joined, reference = _samples(chunks), gpu.render(text)
    assert abs(len(joined) - len(reference)) <= 1
    n = min(len(joined), len(reference)) - 100
    assert np.abs(joined[100:n] - reference[100:n]).max() < 0.01  # in phase, nothing repeated


@pytest.mark.parametrize("plan", [Plan(garbage=True), Plan(garbage=True, after=2)])
async def test_nan_audio_is_never_passed_on(plan: Plan) -> None:
    gpu, cpu = ScriptedTTS("gpu", plans=[plan]), ScriptedTTS("cpu")
    chunks, report = await _collect(FallbackTTS([gpu, cpu], FAST).synthesize("Some words."))
    assert np.isfinite(_samples(chunks)).all()
    assert np.array_equal(_samples(chunks), cpu.render("Some words."))
    assert report.fallbacks[0].reason == "unusable_output"
    alone = FallbackTTS([ScriptedTTS("only", plans=[Plan(garbage=True)])], FAST)
    with pytest.raises(EngineUnavailable, match="unusable output"):
        await _collect(alone.synthesize("Some words."))


async def test_silent_audio_moves_on_unless_nothing_else_is_left() -> None:
    gpu, cpu = ScriptedTTS("gpu", plans=[Plan(silent=True)]), ScriptedTTS("cpu")
    chunks, report = await _collect(FallbackTTS([gpu, cpu], FAST).synthesize("Some words."))
    assert np.array_equal(_samples(chunks), cpu.render("Some words."))
    assert report.served_by == "cpu" and report.fallbacks[0].reason == "unusable_output"
    alone = FallbackTTS([ScriptedTTS("only", plans=[Plan(silent=True)])], FAST)
    chunks, report = await _collect(alone.synthesize("Some words."))
    assert not np.any(_samples(chunks)) and len(_samples(chunks)) == 0.11 * 16_000
    assert report.served_by == "only"


async def test_a_voice_the_backend_lacks_becomes_its_default() -> None:
    gpu = ScriptedTTS("gpu", voices=["ana"], fail_times=1)
    hosted = ScriptedTTS("hosted", voices=())  # takes any name
    chain = FallbackTTS([gpu, ScriptedTTS("cpu", voices=["joe"]), hosted], FAST)
    assert chain.capabilities.voices == ()
    await _collect(chain.synthesize("Hi.", "ana"))
    assert gpu.calls[0].voice == "ana" and chain.backends[1].calls[0].voice is None  # type: ignore[attr-defined]
    strict = FallbackTTS([ScriptedTTS("a", voices=["ana"]), ScriptedTTS("b", voices=["joe"])], FAST)
    assert strict.capabilities.voices == ("ana", "joe")
    with pytest.raises(InvalidInput):
        await _collect(strict.synthesize("Hi.", "bob"))


# -- deadlines (the production defaults: 10 s each, on the virtual clock) --------------------------

DEFAULT = FallbackPolicy()


async def test_a_hung_first_output_costs_one_deadline() -> None:
    gpu, cpu = ScriptedLLM("gpu", plans=[Plan(hang=True)]), ScriptedLLM("cpu")
    started = loop_time()
    deltas, report = await _collect(FallbackLLM([gpu, cpu], DEFAULT).stream(CHAT))
    assert loop_time() - started == pytest.approx(DEFAULT.first_output_timeout_s)
    assert _text(deltas) == REPLY
    assert report.fallbacks == (Fallback("gpu", "cpu", "first_output_timeout", "EngineTimeout"),)
    assert gpu.closed == 1  # the hung call was cancelled and closed


async def test_a_hang_between_chunks_costs_one_gap_deadline() -> None:
    gpu = ScriptedTTS("gpu", plans=[Plan(hang=True, after=1, first_delay_s=1.0)])
    cpu = ScriptedTTS("cpu")
    started = loop_time()
    chunks, report = await _collect(FallbackTTS([gpu, cpu], DEFAULT).synthesize("Some words."))
    assert loop_time() - started == pytest.approx(1.0 + DEFAULT.gap_timeout_s)
    assert np.array_equal(_samples(chunks), cpu.render("Some words."))
    assert report.fallbacks == (Fallback("gpu", "cpu", "gap_timeout", "EngineTimeout", True),)


async def test_slow_but_in_time_is_not_a_failure() -> None:
    just_in_time = DEFAULT.first_output_timeout_s - 0.001
    gpu = ScriptedSTT("gpu", plans=[Plan(first_delay_s=just_in_time, gap_s=just_in_time)])
    chain = FallbackSTT([gpu, ScriptedSTT("cpu")], DEFAULT)
    started = loop_time()
    items, report = await _collect(chain.transcribe(AUDIO))
    assert report.served_by == "gpu" and items[-1].final
    assert loop_time() - started == pytest.approx(3 * just_in_time)  # 3 items, each just in time


async def test_the_first_output_deadline_grows_with_the_audio() -> None:
    policy = FallbackPolicy(first_output_timeout_s=1.0, first_output_timeout_per_audio_s=2.0)
    in_time = Plan(first_delay_s=1.9)  # 1.9 < 1 + 2 * 0.5 s of audio
    late = Plan(first_delay_s=2.1)
    gpu = ScriptedSTT("gpu", plans=[in_time, late])
    chain = FallbackSTT([gpu, ScriptedSTT("cpu")], policy)
    _, report = await _collect(chain.transcribe(AUDIO))
    assert report.served_by == "gpu"
    started = loop_time()
    _, report = await _collect(chain.transcribe(AUDIO))
    assert report.fallbacks == (Fallback("gpu", "cpu", "first_output_timeout", "EngineTimeout"),)
    assert loop_time() - started == pytest.approx(2.0)  # the deadline for 0.5 s of audio


async def test_the_last_backend_hanging_raises_a_timeout_in_time() -> None:
    chain = FallbackSTT([ScriptedSTT("only", plans=[Plan(hang=True)])], DEFAULT)
    started = loop_time()
    with pytest.raises(EngineTimeout):
        await _collect(chain.transcribe(AUDIO))
    assert loop_time() - started == pytest.approx(DEFAULT.first_output_timeout_s)


# -- breaker and recovery --------------------------------------------------------------------------


async def test_a_dead_primary_is_skipped_then_comes_back_by_itself() -> None:
    gpu, cpu = ScriptedLLM("gpu"), ScriptedLLM("cpu")
    chain = FallbackLLM([gpu, cpu], FAST)
    gpu.down = True
    for _ in range(2):  # failure_threshold=2
        _, report = await _collect(chain.stream(CHAT))
        assert report.fallbacks[0].reason == "error"
    assert chain.backend_states()[0].state is BreakerState.OPEN
    _, report = await _collect(chain.stream(CHAT))
    assert gpu.opened == 2  # skipped, not asked
    assert report.fallbacks == (Fallback("gpu", "cpu", "circuit_open", "StageError"),)
    await asyncio.sleep(0.08)  # a probe ran: still down
    assert gpu.warm_calls >= 1 and chain.backend_states()[0].state is BreakerState.OPEN
    gpu.down = False
    for _ in range(40):  # the next probe closes it (every 0.05 s)
        if chain.backend_states()[0].state is BreakerState.CLOSED:
            break
        await asyncio.sleep(0.01)
    _, report = await _collect(chain.stream(CHAT))
    assert report == FallbackReport("llm", "gpu>cpu", "gpu", (), None)  # without a restart
    await chain.aclose()


async def test_skipping_an_open_breaker_does_not_wait_on_a_hung_backend() -> None:
    gpu, cpu = ScriptedSTT("gpu"), ScriptedSTT("cpu")
    gpu.plans.extend(Plan(hang=True) for _ in range(2))
    chain = FallbackSTT([gpu, cpu], dataclasses.replace(FAST, probe_interval_s=60))
    for _ in range(2):
        await _collect(chain.transcribe(AUDIO))
    started = loop_time()
    _, report = await _collect(chain.transcribe(AUDIO))
    assert loop_time() == started and report.served_by == "cpu"  # no deadline waited
    await chain.aclose()


async def test_half_open_lets_one_real_call_try_the_primary() -> None:
    class NoProbe(ScriptedTTS):
        async def warm(self) -> None:  # its health check never passes: only real calls tell
            raise ConnectionRefusedError

    gpu, cpu = NoProbe("gpu", fail_times=2), ScriptedTTS("cpu")
    chain = FallbackTTS([gpu, cpu], dataclasses.replace(FAST, trial_interval_s=0.3))
    for _ in range(2):
        await _collect(chain.synthesize("Hi."))
    assert chain.backend_states()[0].state is BreakerState.OPEN
    await asyncio.sleep(0.1)
    _, report = await _collect(chain.synthesize("Hi."))
    assert report.served_by == "cpu"  # probes failed, the trial interval has not passed
    await asyncio.sleep(0.25)
    _, report = await _collect(chain.synthesize("Hi."))
    assert report.served_by == "gpu" and chain.backend_states()[0].state is BreakerState.CLOSED
    await chain.aclose()


async def test_a_backend_probe_is_preferred_to_a_warm_up() -> None:
    class Hosted(ScriptedSTT):
        probes = 0

        async def probe(self) -> tuple[str, ...]:
            self.probes += 1
            return ("whisper-1",)

    hosted = Hosted("hosted", fail_times=2)
    chain = FallbackSTT([hosted, ScriptedSTT("cpu")], FAST)
    for _ in range(2):
        await _collect(chain.transcribe(AUDIO))
    await asyncio.sleep(0.1)
    assert hosted.probes == 1 and hosted.warm_calls == 0
    assert chain.backend_states()[0].state is BreakerState.CLOSED
    await chain.aclose()


async def test_when_every_breaker_is_open_the_backends_are_tried_anyway() -> None:
    gpu, cpu = ScriptedSTT("gpu", fail_times=2), ScriptedSTT("cpu", fail_times=2)
    chain = FallbackSTT([gpu, cpu], dataclasses.replace(FAST, probe_interval_s=60))
    for _ in range(2):
        with pytest.raises(StageError):
            await _collect(chain.transcribe(AUDIO))
    assert {s.state for s in chain.backend_states()} == {BreakerState.OPEN}
    _, report = await _collect(chain.transcribe(AUDIO))
    assert report == FallbackReport("stt", "gpu>cpu", "gpu", (), None)
    await chain.aclose()


async def test_a_slow_primary_is_demoted_then_gets_another_chance() -> None:
    policy = FallbackPolicy(first_output_budget_s=0.02, latency_min_samples=2, trial_interval_s=0.3)
    gpu = ScriptedSTT("gpu", plans=[Plan(first_delay_s=0.03) for _ in range(2)])
    chain = FallbackSTT([gpu, ScriptedSTT("cpu")], policy)
    for _ in range(2):
        _, report = await _collect(chain.transcribe(AUDIO))
        assert report.served_by == "gpu"
    assert chain.backend_states()[0].demoted
    assert chain.backend_states()[0].p95_first_output_ms is not None
    _, report = await _collect(chain.transcribe(AUDIO))
    assert report.served_by == "cpu"
    assert report.fallbacks == (Fallback("gpu", "cpu", "demoted"),)
    await asyncio.sleep(0.31)  # the demotion (trial_interval_s) has passed
    _, report = await _collect(chain.transcribe(AUDIO))
    assert report.served_by == "gpu"


# -- lifecycle -------------------------------------------------------------------------------------


async def test_start_skips_a_backend_that_cannot_start_and_probes_it() -> None:
    class Broken(ScriptedLLM):
        starts = 0

        async def start(self) -> None:
            self.starts += 1
            if self.starts == 1:
                raise EngineUnavailable("no CUDA device", stage="llm", backend=self.name)

    gpu, cpu = Broken("gpu", context_tokens=8192), ScriptedLLM("cpu", context_tokens=2048)
    chain = FallbackLLM([gpu, cpu], FAST)
    assert chain.capabilities.context_tokens == 2048  # trimmed history fits either
    await chain.start()
    state = chain.backend_states()[0]
    assert (state.started, state.state, state.last_error) == (
        False,
        BreakerState.OPEN,
        "EngineUnavailable",
    )
    _, report = await _collect(chain.stream(CHAT))
    assert report.served_by == "cpu" and gpu.calls == []
    await asyncio.sleep(0.1)  # the probe starts it again, then warms it
    assert gpu.starts == 2 and chain.backend_states()[0].started
    await chain.aclose()


async def test_start_fails_only_when_no_backend_starts() -> None:
    class Broken(ScriptedSTT):
        async def start(self) -> None:
            raise ModelLoadError("weights missing", stage="stt", backend=self.name)

    with pytest.raises(ModelLoadError):  # one backend: its own error, with its fix
        await FallbackSTT([Broken("gpu")], FAST).start()
    chain = FallbackSTT([Broken("gpu"), Broken("cpu")], FAST)
    with pytest.raises(EngineUnavailable, match=r"gpu: .*weights missing; cpu: "):
        await chain.start()
    await chain.aclose()


async def test_aclose_stops_the_probes_and_closes_every_backend() -> None:
    closed: list[str] = []

    class Closing(ScriptedSTT):
        async def aclose(self) -> None:
            closed.append(self.name)

    gpu, cpu = Closing("gpu", fail_times=5), Closing("cpu")
    chain = FallbackSTT([gpu, cpu], FallbackPolicy(failure_threshold=1, probe_interval_s=60))
    await _collect(chain.transcribe(AUDIO))
    probe = chain._entries[0].probe_task
    assert probe is not None and not probe.done()
    await chain.aclose()
    assert probe.cancelled() and closed == ["gpu", "cpu"]


def test_policy_and_chain_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        FallbackPolicy(first_output_timeout_s=0)
    with pytest.raises(ValueError):
        FallbackSTT([], FAST)
    with pytest.raises(ValueError, match="unique"):
        FallbackSTT([ScriptedSTT("cpu"), ScriptedSTT("cpu")], FAST)


# -- concurrency and cancellation ------------------------------------------------------------------


async def test_concurrent_calls_get_their_own_reports() -> None:
    oom_late = Plan(first_delay_s=0.02, error=OutOfMemoryError)
    gpu = ScriptedTTS("gpu", plans=[oom_late, Plan()])
    chain = FallbackTTS([gpu, ScriptedTTS("cpu")], FAST)

    async def turn(text: str) -> tuple[tuple[str, ...], int]:
        with collect_reports() as reports:
            # a child task, as a reply's TTS runs: its report still reaches this turn
            await asyncio.create_task(_drain(chain.synthesize(text)))
        return reports.served_by("tts"), len(reports.fallbacks("tts"))

    first, second = await asyncio.gather(turn("First one."), turn("Second."))
    assert first == (("cpu",), 1) and second == (("gpu",), 0)


async def _drain(stream: AsyncIterator[Any]) -> None:
    async for _ in stream:
        pass


async def test_collectors_nest() -> None:
    chain = FallbackSTT([ScriptedSTT("gpu")], FAST)
    with collect_reports() as outer:
        with collect_reports() as inner:
            await _drain(chain.transcribe(AUDIO))
        await _drain(chain.transcribe(AUDIO))
    assert (len(inner.reports), len(outer.reports)) == (1, 2)
    heard: list[FallbackReport] = []
    chain.report_listeners.append(heard.append)
    await _drain(chain.transcribe(AUDIO))  # outside any collector: listeners still hear it
    assert [r.served_by for r in heard] == ["gpu"]


async def test_a_consumer_that_stops_closes_the_active_backend() -> None:
    gpu = ScriptedLLM("gpu", plans=[Plan(gap_s=0.02)])
    chain = FallbackLLM([gpu, ScriptedLLM("cpu")], FAST)
    with collect_reports() as reports:
        stream = chain.stream(CHAT)
        async for _ in stream:
            break
        await stream.aclose()
    assert (gpu.opened, gpu.closed) == (1, 1)
    assert reports.reports[0].error == "CancelledError"
    assert chain.backend_states()[0].consecutive_failures == 0


async def test_cancelling_the_task_closes_the_active_backend() -> None:
    gpu = ScriptedTTS("gpu", fail_times=1)
    cpu = ScriptedTTS("cpu", plans=[Plan(hang=True, after=1)])
    chain = FallbackTTS([gpu, cpu], FallbackPolicy(gap_timeout_s=10))
    first = asyncio.Event()

    async def speak() -> None:
        async for _ in chain.synthesize("Some words."):
            first.set()

    task = asyncio.create_task(speak())
    await asyncio.wait_for(first.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (cpu.opened, cpu.closed) == (1, 1)
    await chain.aclose()


async def test_a_cancelled_half_open_trial_is_given_back() -> None:
    gpu, cpu = ScriptedSTT("gpu", fail_times=1), ScriptedSTT("cpu")
    policy = FallbackPolicy(failure_threshold=1, probe_interval_s=60, trial_interval_s=0.01)
    chain = FallbackSTT([gpu, cpu], policy)
    await _collect(chain.transcribe(AUDIO))
    gpu.plans.append(Plan(hang=True))
    await asyncio.sleep(0.02)  # the next call is a half-open trial
    task = asyncio.create_task(_drain(chain.transcribe(AUDIO)))
    await asyncio.sleep(0.02)
    assert chain.backend_states()[0].state is BreakerState.HALF_OPEN
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert chain.backend_states()[0].state is BreakerState.OPEN  # free for the next trial
    await chain.aclose()


# -- prefill -------------------------------------------------------------------------------------


async def test_prefill_goes_to_the_backend_the_next_call_would_use() -> None:
    from pipeline.scheduler import EngineScheduler

    missing = ModelLoadError("no weights", stage="llm", backend="gpu", retryable=False)
    gpu, cpu = ScriptedLLM("gpu", plans=[Plan(error=missing)]), ScriptedLLM("cpu")
    cpu.scheduler = EngineScheduler("cpu", stage="llm", capacity=1, clock=loop_time)
    chain = FallbackLLM([gpu, cpu], FallbackPolicy(failure_threshold=3, probe_interval_s=60))
    assert await chain.prefill(CHAT)
    assert (len(gpu.prefills), len(cpu.prefills)) == (1, 0)  # the first, while it is healthy
    await _collect(chain.stream(CHAT))  # its load error opens its breaker
    assert await chain.prefill(CHAT)
    assert (len(gpu.prefills), len(cpu.prefills)) == (1, 1)
    slot = await cpu.scheduler.acquire()  # a reply holds the engine: no prefill then
    assert not await chain.prefill(CHAT)
    slot.release()
    assert cpu.prefills == [CHAT] and cpu.scheduler.in_use == 0
    await chain.aclose()


async def test_an_engine_library_error_at_warm_up_is_an_engine_error() -> None:
    # CTranslate2 on a machine without cuBLAS 12 raises a plain RuntimeError at the first
    # encode; the server's startup handles VoxlineError (and reports it on /readyz), not that
    class NoCublas(ScriptedSTT):
        async def warm(self) -> None:
            raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")

    chain = FallbackSTT([NoCublas("gpu")], FAST)
    await chain.start()
    with pytest.raises(EngineUnavailable, match=r"libcublas\.so\.12") as raised:
        await chain.warm()
    assert isinstance(raised.value.__cause__, RuntimeError)
    await chain.aclose()
