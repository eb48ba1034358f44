"""The committed CI baseline: what it keeps, and that a broken model fails against it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from benchmarks.eval.ci_baseline import CI_TOLERANCES, ci_baseline
from benchmarks.eval.cli import evaluate
from benchmarks.eval.gate import check
from benchmarks.eval.scorecard import load, metrics_of

BASELINE = Path(__file__).resolve().parents[2] / "benchmarks" / "golden" / "baseline-quick.json"

app = typer.Typer()
app.command("eval")(evaluate)


@app.command("version")
def _version() -> None:  # a second command keeps `eval` a sub-command, as in `voxline`
    """Unused."""


def test_the_committed_baseline_holds_the_ci_metrics_with_their_tolerances() -> None:
    card = load(BASELINE)
    assert card["quick"] is True
    metrics = metrics_of(card)
    assert {name: m["tolerance"] for name, m in metrics.items()} == CI_TOLERANCES
    assert metrics["answers.contains_match"]["value"] >= 0.4  # the default model, not a broken one
    assert metrics["stt.wer"]["value"] < 0.1 and metrics["tts.checks_passed"]["value"] >= 0.8
    assert card["producer"]["models"]["llm"]["ref"] == "packaged:smollm2-135m-instruct"


def _card(**values: float) -> dict[str, Any]:
    base = load(BASELINE)
    card = copy.deepcopy(base)
    for name, value in values.items():
        suite, metric = name.split(".", 1)
        card["suites"][suite]["metrics"][metric]["value"] = value
    return card


def test_ci_baseline_keeps_only_its_metrics_and_widens_them() -> None:
    card = _card()
    card["suites"]["stt"]["metrics"]["wer:noise=pink-5db"] = {
        "value": 0.03,
        "direction": "lower",
        "tolerance": 0.03,
        "n": 4,
        "unit": "ratio",
    }
    cut = ci_baseline(card)
    assert set(metrics_of(cut)) == set(CI_TOLERANCES)
    # within the widened tolerance: another machine's run passes; past it, it fails
    assert check(_card(**{"answers.contains_match": 0.3}), cut).passed
    failed = check(_card(**{"answers.contains_match": 0.1}), cut)
    assert [d.name for d in failed.failures] == ["answers.contains_match"]
    with pytest.raises(ValueError, match="quick run"):
        ci_baseline({**card, "quick": False})
    del card["suites"]["tts"]
    with pytest.raises(ValueError, match=r"tts\.roundtrip_wer is missing"):
        ci_baseline(card)


def test_a_broken_llm_fails_the_committed_baseline(tmp_path: Path) -> None:
    broken = tmp_path / "broken.env"
    broken.write_text("VOXLINE_LLM__MAX_TOKENS=4\n")
    args = ["eval", "--quick", "--suite", "answers", "--config", str(broken)]
    args += ["--baseline", str(BASELINE), "--out", str(tmp_path / "out"), "--no-plots"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "regression: answers.contains_match: 0.500 ->" in result.output
