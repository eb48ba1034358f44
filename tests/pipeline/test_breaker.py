"""The circuit breaker and the latency window, on a clock stepped by hand."""

from __future__ import annotations

import pytest

from pipeline.breaker import BreakerState, CircuitBreaker, LatencyWindow


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def state(breaker: CircuitBreaker) -> BreakerState:
    """Read afresh (mypy would otherwise keep the state it narrowed before a call)."""
    return breaker.state


def _breaker(clock: Clock, threshold: int = 3) -> CircuitBreaker:
    return CircuitBreaker(threshold=threshold, retry_after_s=10.0, clock=clock)


def test_opens_after_n_consecutive_failures_only(clock: Clock) -> None:
    breaker = _breaker(clock)
    breaker.record_failure("EngineTimeout")
    breaker.record_failure("EngineTimeout")
    breaker.record_success()  # not consecutive any more
    breaker.record_failure("EngineTimeout")
    breaker.record_failure("EngineOverloaded")
    assert state(breaker) is BreakerState.CLOSED and breaker.try_acquire()
    breaker.record_failure("EngineOverloaded")
    assert state(breaker) is BreakerState.OPEN
    assert (breaker.consecutive_failures, breaker.last_error) == (3, "EngineOverloaded")
    assert not breaker.try_acquire() and not breaker.would_admit()


def test_half_open_grants_one_trial_after_the_interval(clock: Clock) -> None:
    breaker = _breaker(clock, threshold=1)
    breaker.record_failure("EngineUnavailable")
    clock.now += 9.9
    assert not breaker.try_acquire()
    clock.now += 0.1
    assert breaker.would_admit() and state(breaker) is BreakerState.OPEN  # asking grants nothing
    assert breaker.try_acquire() and state(breaker) is BreakerState.HALF_OPEN
    assert not breaker.try_acquire()  # one trial at a time
    breaker.record_failure("EngineUnavailable")  # the trial failed: open for a new interval
    assert state(breaker) is BreakerState.OPEN and not breaker.try_acquire()
    clock.now += 10
    assert breaker.try_acquire()
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED and breaker.consecutive_failures == 0


def test_a_released_trial_can_be_taken_again_at_once(clock: Clock) -> None:
    breaker = _breaker(clock, threshold=1)
    breaker.record_failure("EngineUnavailable")
    clock.now += 10
    assert breaker.try_acquire()
    breaker.release()  # the caller went away: no verdict
    assert state(breaker) is BreakerState.OPEN and breaker.try_acquire()
    closed = _breaker(clock)
    closed.release()  # harmless when closed
    assert state(closed) is BreakerState.CLOSED


def test_force_open_skips_the_count(clock: Clock) -> None:
    breaker = _breaker(clock, threshold=5)
    breaker.force_open("ModelLoadError")
    assert state(breaker) is BreakerState.OPEN and breaker.last_error == "ModelLoadError"


def test_probe_results(clock: Clock) -> None:
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure("EngineTimeout")
    clock.now += 9
    breaker.probe_failed("ConnectionRefusedError")
    assert not breaker.try_acquire() and breaker.last_error == "ConnectionRefusedError"
    clock.now += 1
    assert breaker.would_admit()  # a failing probe does not postpone the real trial
    breaker.probe_succeeded()
    assert state(breaker) is BreakerState.CLOSED and breaker.try_acquire()
    breaker.record_failure("EngineTimeout")  # on probation: one failure reopens it
    assert state(breaker) is BreakerState.OPEN
    breaker.probe_succeeded()
    breaker.record_success()  # a real success ends the probation
    breaker.record_failure("EngineTimeout")
    assert state(breaker) is BreakerState.CLOSED


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold=0, retry_after_s=1.0)


def test_latency_window_demotes_over_budget_then_forgets(clock: Clock) -> None:
    window = LatencyWindow(budget_s=0.5, size=20, min_samples=5, demote_for_s=10.0, clock=clock)
    assert window.p95() is None
    for _ in range(4):
        assert not window.add(2.0)  # too few samples to judge
    assert window.add(2.0) and window.demoted
    clock.now += 10
    assert not window.demoted and window.p95() is None  # expired: a fresh window


def test_latency_p95_ignores_a_rare_slow_call(clock: Clock) -> None:
    window = LatencyWindow(budget_s=0.5, size=20, min_samples=5, demote_for_s=10.0, clock=clock)
    for _ in range(19):
        assert not window.add(0.1)
    assert not window.add(3.0)  # 1 of 20 is the p100, not the p95
    assert window.p95() == pytest.approx(0.1)
    never = LatencyWindow(budget_s=None, size=5, min_samples=1, demote_for_s=1.0, clock=clock)
    assert not never.add(100.0) and never.p95() == 100.0
