"""The regression gate: a synthetic regression is caught and named; noise within tolerance is
not."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import gate
from pipeline.errors import InvalidInput


def _summary(p50: float, p95: float, mean: float | None = None) -> dict[str, float]:
    return {"p50": p50, "p95": p95, "p99": p95, "mean": mean if mean is not None else p50, "n": 9}


def _results() -> dict[str, Any]:
    return {
        "schema_version": 1,
        "scenarios": {
            "turn": {
                "v2v_ms": _summary(1000, 1500),
                "naive_total_ms": _summary(2000, 2600),
                "v2v_naive_ratio": _summary(0.5, 0.6),  # not a latency: never gated
            },
            "stt": {"stt_ms": _summary(300, 400), "wer": _summary(0.0, 0.2, mean=0.05)},
            "llm": {"tokens_per_s": _summary(20, 30)},
        },
    }


def test_identical_results_pass() -> None:
    base = _results()
    verdict = gate.check(base, copy.deepcopy(base), 10)
    assert verdict.passed
    # p50 + p95 of three latencies, the mean of one WER
    assert verdict.compared == 7


def test_a_p95_regression_past_the_tolerance_is_caught_and_named() -> None:
    base, now = _results(), _results()
    now["scenarios"]["turn"]["v2v_ms"]["p95"] = 1800  # +20 %
    now["scenarios"]["turn"]["naive_total_ms"]["p50"] = 2150  # +7.5 %: within 10 %
    verdict = gate.check(now, base, 10)
    assert not verdict.passed
    assert [r.path for r in verdict.regressions] == ["scenarios.turn.v2v_ms.p95"]
    r = verdict.regressions[0]
    assert (r.baseline, r.current, r.change_pct) == (1500, 1800, 20.0)
    assert "scenarios.turn.v2v_ms.p95" in gate.describe(r, 10)
    assert gate.check(now, base, 25).passed  # a looser tolerance lets it through


def test_a_wer_regression_is_caught_even_from_a_zero_baseline() -> None:
    base, now = _results(), _results()
    base["scenarios"]["stt"]["wer"]["mean"] = 0.0
    now["scenarios"]["stt"]["wer"]["mean"] = 0.1
    verdict = gate.check(now, base, 10)
    assert [r.path for r in verdict.regressions] == ["scenarios.stt.wer.mean"]
    assert verdict.regressions[0].change_pct is None
    now["scenarios"]["stt"]["wer"]["mean"] = 0.001  # under the floor: noise, not a regression
    assert gate.check(now, base, 10).passed


def test_improvements_and_ungated_metrics_never_fail() -> None:
    base, now = _results(), _results()
    now["scenarios"]["turn"]["v2v_ms"] = _summary(500, 700)
    now["scenarios"]["llm"]["tokens_per_s"] = _summary(1, 2)  # throughput: reported, not gated
    now["scenarios"]["turn"]["v2v_naive_ratio"] = _summary(5, 6)
    assert gate.check(now, base, 0).passed


def test_missing_scenarios_are_listed_not_failed() -> None:
    base, now = _results(), _results()
    del now["scenarios"]["stt"]
    verdict = gate.check(now, base, 10)
    assert verdict.passed
    assert "scenarios.stt.stt_ms.p50" in verdict.missing


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    other = _results() | {"schema_version": 99}
    with pytest.raises(InvalidInput, match="schema version"):
        gate.check(_results(), other, 10)
    with pytest.raises(InvalidInput):
        gate.check(_results(), _results(), -1)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidInput, match="cannot read"):
        gate.load_results(bad)
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(InvalidInput, match="not a voxline"):
        gate.load_results(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_results()))
    assert gate.load_results(good)["scenarios"]["turn"]["v2v_ms"]["p50"] == 1000
