"""The scorecard gate: a worse card fails naming each metric, an equal one passes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from benchmarks.eval import gate
from benchmarks.eval.scorecard import (
    Metric,
    SuiteResult,
    build,
    error_rate,
    latency,
    load,
    markdown,
    rate,
    write_json,
)
from pipeline.errors import InvalidInput


def _card(quick: bool = False, **values: float) -> dict[str, Any]:
    """A scorecard with stt and answers metrics (``wer=0.1`` overrides a value)."""
    v = {"wer": 0.10, "contains": 0.55, "semantic": 0.60, "v2v": 900.0, **values}
    suites = [
        SuiteResult("stt", metrics={"wer": error_rate(v["wer"], 40, 400, overall=True)}),
        SuiteResult(
            "answers",
            metrics={
                "contains_match": rate(v["contains"], 40, "higher"),
                "semantic_match": rate(v["semantic"], 40, "higher"),
            },
        ),
        SuiteResult("rag", "skipped", "no knowledge base"),
        SuiteResult("latency", metrics={"v2v_ms_p50": latency(v["v2v"], 10)}),
    ]
    return build(suites, producer={}, golden={"sha256": "x"}, quick=quick, command="test")


def test_an_equal_scorecard_passes() -> None:
    result = gate.check(_card(), _card())
    assert result.passed
    assert {d.verdict for d in result.diffs} == {"same"}
    assert len(result.diffs) == 4


def test_a_worse_scorecard_fails_and_names_each_regressed_metric() -> None:
    worse = _card(contains=0.10, semantic=0.58, wer=0.30, v2v=905.0)
    result = gate.check(worse, _card())
    assert not result.passed
    failed = {d.name for d in result.failures}
    assert failed == {"answers.contains_match", "stt.wer"}  # within tolerance: not named
    verdicts = {d.name: d.verdict for d in result.diffs}
    assert verdicts["answers.semantic_match"] == "worse"
    assert verdicts["latency.v2v_ms_p50"] == "worse"
    line = gate.describe(next(d for d in result.failures if d.name == "stt.wer"))
    assert line.startswith("stt.wer: 0.100 -> 0.300") and "lower is better" in line


def test_better_is_never_a_regression_whatever_the_direction() -> None:
    result = gate.check(_card(wer=0.01, contains=0.9, v2v=300.0), _card())
    assert result.passed
    assert {d.verdict for d in result.diffs} == {"better", "same"}


def test_the_tolerance_is_the_baseline_s() -> None:
    base = _card()
    base["suites"]["answers"]["metrics"]["contains_match"]["tolerance"] = 0.5
    assert gate.check(_card(contains=0.10), base).passed


def test_a_metric_lost_from_a_suite_that_ran_fails_one_not_run_does_not() -> None:
    current = _card()
    current["suites"]["answers"] = SuiteResult("answers", "error", "EngineTimeout").as_dict()
    result = gate.check(current, _card())
    assert {d.name for d in result.failures} == {
        "answers.contains_match",
        "answers.semantic_match",
    }
    assert all(d.verdict == "missing" for d in result.failures)
    only_stt = _card()
    del only_stt["suites"]["answers"], only_stt["suites"]["latency"]  # --suite stt,rag
    assert gate.check(only_stt, _card()).passed


def test_new_metrics_are_reported_not_failed() -> None:
    current = _card()
    current["suites"]["rag"] = SuiteResult(
        "rag", metrics={"dont_know_rate": rate(0.5, 8, "higher")}
    ).as_dict()
    result = gate.check(current, _card())
    assert result.passed
    assert [d.verdict for d in result.diffs if d.name == "rag.dont_know_rate"] == ["new"]


def test_quick_and_full_cards_or_schema_versions_are_not_compared() -> None:
    with pytest.raises(InvalidInput, match="quick"):
        gate.diff(_card(quick=False), _card(quick=True))
    old = copy.deepcopy(_card())
    old["schema_version"] = 0
    with pytest.raises(InvalidInput, match="schema"):
        gate.check(_card(), old)


def test_cards_round_trip_through_json_and_markdown_shows_the_gate(tmp_path: Path) -> None:
    card = _card(contains=0.1)
    card["gate"] = gate.as_json(gate.check(card, _card()), "base.json")
    write_json(card, tmp_path / "scorecard.json")
    loaded = load(tmp_path / "scorecard.json")
    assert loaded["suites"]["answers"]["metrics"]["contains_match"] == {
        "value": 0.1,
        "direction": "higher",
        "tolerance": 0.025,
        "n": 40,
        "unit": "ratio",
    }
    text = markdown(loaded)
    assert "**FAILED**" in text and "| answers.contains_match | 0.550 | 0.100 |" in text
    assert "**skipped**: no knowledge base" in text
    (tmp_path / "other.json").write_text('{"scenarios": {}}')
    with pytest.raises(InvalidInput):
        load(tmp_path / "other.json")


def test_metric_tolerances() -> None:
    assert error_rate(0.1, 40, 400, overall=True).tolerance == 0.01
    assert error_rate(0.1, 4, 20, overall=False).tolerance == 0.05  # one word in twenty
    assert rate(0.5, 10, "higher").tolerance == 0.1  # one item of ten may flip
    assert latency(100.0, 5).tolerance == 25.0 and latency(1000.0, 5).tolerance == 150.0
    assert Metric(1.0, "lower", 0.0).as_dict()["unit"] == "ratio"


def test_cards_of_different_golden_data_are_compared_with_a_warning() -> None:
    other = _card()
    other["golden"]["sha256"] = "y"
    result = gate.check(_card(), other)
    assert (
        result.passed and len(result.warnings) == 1 and "golden data differ" in result.warnings[0]
    )
    assert not gate.check(_card(), _card()).warnings
