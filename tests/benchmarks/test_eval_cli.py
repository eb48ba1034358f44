"""``voxline eval`` end to end: one real quick run on the packaged models, then the gate's exit
code on real scorecards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from benchmarks.eval.cli import evaluate
from benchmarks.eval.golden import Golden
from pipeline.settings import LLMSettings

app = typer.Typer()
app.command("eval")(evaluate)


@app.command("version")
def _version() -> None:  # a second command keeps `eval` a sub-command, as in `voxline`
    """Unused."""


runner = CliRunner()


def _bench_results(path: Path, v2v_p50: float) -> Path:
    """A ``voxline bench realtime`` results.json (its documented shape) for the latency suite."""

    def summary(p50: float) -> dict[str, float]:
        return {"p50": p50, "p95": p50 * 1.4, "p99": p50 * 1.5, "mean": p50, "n": 6}

    results = {
        "schema_version": 1,
        "scenarios": {
            "realtime": {
                "v2v_ms": summary(v2v_p50),
                "endpoint_ms": summary(420.0),
                "stt_ms": summary(120.0),
                "first_phrase_ms": summary(180.0),
                "tts_ttfb_ms": summary(40.0),
                "underruns": summary(0.0),
            }
        },
    }
    path.write_text(json.dumps(results))
    return path


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("eval")
    latency = _bench_results(out / "bench.json", 870.0)
    args = ["eval", "--quick", "--out", str(out), "--latency-results", str(latency)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "scorecard.json").read_text()), result.output


def test_quick_run_scores_every_suite_on_the_real_models(
    quick_run: tuple[Path, dict[str, Any], str],
) -> None:
    _, card, _ = quick_run
    suites = card["suites"]
    assert list(suites) == ["stt", "tts", "answers", "rag", "latency"]
    assert card["quick"] is True and card["release"] is None
    stt = suites["stt"]["metrics"]
    quick_clips = Golden().stt(quick=True)
    assert stt["wer"]["n"] == len(quick_clips) and stt["wer"]["direction"] == "lower"
    conditions = {c for clip in quick_clips for c in clip.conditions}
    assert {f"wer:{c}" for c in conditions} | {f"cer:{c}" for c in conditions} <= set(stt)
    assert stt["wer:real"]["value"] < 0.4 and stt["wer:noise=clean"]["value"] < 0.2
    heard = {c["id"]: c["heard"].lower() for c in suites["stt"]["details"]["clips"]}
    assert "forward" in heard["real-sphinx-goforward"]
    tts = suites["tts"]["metrics"]
    assert tts["checks_passed"]["value"] >= 0.8 and tts["roundtrip_wer"]["value"] < 0.3
    answers = suites["answers"]
    assert answers["metrics"]["contains_match"]["value"] > 0  # SmolLM2 knows a capital or two
    assert all(i["reply"] for i in answers["details"]["items"])
    assert suites["rag"]["status"] == "skipped"


def test_the_card_says_what_produced_it(quick_run: tuple[Path, dict[str, Any], str]) -> None:
    out, card, output = quick_run
    producer = card["producer"]
    prompt = LLMSettings().system_prompt
    assert producer["prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
    assert producer["models"]["stt"]["ref"] == "packaged:whisper-tiny.en"
    assert producer["models"]["embedder"]["ref"] == "packaged:all-minilm-l6-v2"
    assert producer["backends"]["llm"].startswith("transformers")  # the suite pins it
    assert len(producer["settings_sha256"]) == 64
    assert card["golden"]["sha256"] == Golden().digest()
    for png in ("stt_conditions.png", "tts_checks.png", "answers_similarity.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    report = (out / "scorecard.md").read_text()
    assert "| wer:real |" in report and "**skipped**" in report
    assert "answers" in output and "contains_match" in output


def test_latency_is_compared_with_the_budgets(quick_run: tuple[Path, dict[str, Any], str]) -> None:
    _, card, _ = quick_run
    latency = card["suites"]["latency"]
    assert latency["metrics"]["v2v_ms_p50"]["value"] == 870.0
    assert latency["budgets"]["v2v_ms_p50"] == {"value": 870.0, "budget": 450, "met": False}
    assert latency["budgets"]["stt_ms_p50"]["met"] is True
    assert "overhead_ms_p50" not in latency["metrics"]  # not measured: not invented


def test_the_gate_fails_a_regression_naming_it_and_passes_an_equal_run(
    quick_run: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    out, card, _ = quick_run
    better = json.loads(json.dumps(card))
    better["suites"]["latency"]["metrics"]["v2v_ms_p50"]["value"] = 500.0
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(better))
    # rag + latency only: seconds, and the stt/answers metrics are out of scope
    latency = _bench_results(tmp_path / "bench.json", 870.0)
    common = ["eval", "--quick", "--suite", "rag,latency", "--latency-results", str(latency)]
    failed = runner.invoke(app, [*common, "--baseline", str(baseline), "--out", str(tmp_path)])
    assert failed.exit_code == 1, failed.output
    assert "latency.v2v_ms_p50" in failed.output and "500 ms -> 870 ms" in failed.output
    same_out = tmp_path / "same"
    same = runner.invoke(
        app, [*common, "--baseline", str(out / "scorecard.json"), "--out", str(same_out)]
    )
    assert same.exit_code == 0, same.output
    budgets = runner.invoke(app, [*common, "--enforce-budgets", "--out", str(tmp_path)])
    assert budgets.exit_code == 1 and "over budget" in budgets.output


def test_bad_input_exits_2_before_any_work(tmp_path: Path) -> None:
    unknown = runner.invoke(app, ["eval", "--suite", "stt,speed"])
    assert unknown.exit_code == 2 and "unknown suite 'speed'" in unknown.output
    (tmp_path / "bad.json").write_text("{}")
    bad = runner.invoke(app, ["eval", "--baseline", str(tmp_path / "bad.json")])
    assert bad.exit_code == 2 and "not a voxline scorecard" in bad.output
