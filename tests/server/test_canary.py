"""The canary's verdict: worse than the active release past a threshold, on enough turns."""

from __future__ import annotations

from pipeline.settings import ReleaseSettings
from server.canary import TurnStats, verdict

CFG = ReleaseSettings(canary_min_turns=10)


def _stats(turns: int, *, failed: int = 0, fallbacks: int = 0, v2v_ms: float = 500.0) -> TurnStats:
    stats = TurnStats()
    for i in range(turns):
        outcome = "failed" if i < failed else "completed"
        stats.add(outcome, fallback=i < fallbacks, v2v_ms=v2v_ms)
    return stats


def test_no_verdict_before_both_releases_have_the_minimum_sample() -> None:
    assert verdict(_stats(9, failed=9), _stats(100), CFG) is None
    assert verdict(_stats(100, failed=100), _stats(9), CFG) is None
    assert verdict(_stats(10, failed=10), _stats(10), CFG) is not None


def test_a_higher_error_rate_past_the_threshold_rolls_back() -> None:
    healthy = _stats(100, failed=2)
    assert verdict(_stats(20, failed=1), healthy, CFG) is None  # 0.05 vs 0.02: within +0.05
    reason = verdict(_stats(20, failed=3), healthy, CFG)  # 0.15 vs 0.02
    assert reason is not None and reason.startswith("error rate 0.15 vs 0.02")
    assert "(20 canary turns, 100 active)" in reason


def test_a_higher_fallback_rate_past_the_threshold_rolls_back() -> None:
    healthy = _stats(50, fallbacks=5)
    assert verdict(_stats(20, fallbacks=4), healthy, CFG) is None  # 0.20 vs 0.10
    reason = verdict(_stats(20, fallbacks=5), healthy, CFG)  # 0.25 vs 0.10
    assert reason is not None and reason.startswith("fallback rate 0.25 vs 0.10")


def test_a_slower_v2v_rolls_back_past_both_the_ratio_and_the_floor() -> None:
    assert verdict(_stats(20, v2v_ms=600.0), _stats(20, v2v_ms=500.0), CFG) is None  # 1.2x
    reason = verdict(_stats(20, v2v_ms=700.0), _stats(20, v2v_ms=500.0), CFG)
    assert reason is not None and reason.startswith("V2V p50 700 ms vs 500 ms")
    # 1.5x slower, but by 20 ms: noise on a fast system, not a regression
    assert verdict(_stats(20, v2v_ms=60.0), _stats(20, v2v_ms=40.0), CFG) is None


def test_failed_turns_do_not_count_as_latency_samples() -> None:
    stats = _stats(10, failed=10, v2v_ms=9000.0)
    assert stats.v2v_p50() is None and stats.error_rate == 1.0
    assert stats.as_json() == {
        "turns": 10,
        "error_rate": 1.0,
        "fallback_rate": 0.0,
        "v2v_p50_ms": None,
    }
