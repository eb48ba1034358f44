"""results.json, report.md and the PNG plots, from synthetic scenario results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import gate
from benchmarks.configs import ConfigSpec
from benchmarks.context import BenchOptions, ScenarioResult
from benchmarks.environment import environment
from benchmarks.plots import write_plots
from benchmarks.report import SCHEMA_VERSION, build_results, markdown, write_json, write_markdown
from benchmarks.runner import ConfigRun, Plan
from pipeline.settings import Settings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _turn(name: str, scale: float = 1.0) -> ScenarioResult:
    result = ScenarioResult(name, details={"streaming_naive_ratio_p50": 0.6})
    rng = np.random.default_rng(1)
    for _ in range(6):
        draw = rng.uniform([300, 500, 200], [400, 900, 300])
        stt, phrase, ttfb = (float(x) * scale for x in draw)
        v2v = stt + phrase + ttfb + 2
        naive = v2v * 1.7
        result.add(
            {
                "v2v_ms": v2v,
                "stt_ms": stt,
                "llm_ttft_ms": phrase / 3,
                "first_phrase_ms": phrase,
                "tts_ttfb_ms": ttfb,
                "overhead_ms": 2.0,
                "naive_total_ms": naive,
                "naive_stt_ms": stt,
                "naive_llm_ms": naive - stt - 300,
                "naive_tts_ms": 300.0,
                "v2v_naive_ratio": v2v / naive,
            }
        )
    result.first_call = {"v2v_ms": 4000.0}
    return result


def _load() -> ScenarioResult:
    result = ScenarioResult("load", samples={"v2v_n1_ms": [600.0, 650.0], "v2v_n2_ms": [900.0]})
    result.details = {
        "slo_v2v_p95_ms": 800.0,
        "max_sessions_within_slo": 1,
        "levels": [
            {
                "sessions": 1,
                "turns": 2,
                "v2v_p50_ms": 625.0,
                "v2v_p95_ms": 648.0,
                "errors": 0,
                "underruns": 0,
                "meets_slo": True,
            },
            {
                "sessions": 2,
                "accepted": 1,
                "refused": 1,
                "turns": 2,
                "v2v_p50_ms": 900.0,
                "v2v_p95_ms": 990.0,
                "refusal_p95_ms": 12.4,
                "errors": 0,
                "underruns": 3,
                "meets_slo": False,
            },
        ],
    }
    return result


def _run(label: str, results: list[ScenarioResult]) -> ConfigRun:
    run = ConfigRun(ConfigSpec(label), Settings(), results)
    run.cold.load_ms = {"stt": 2000.0, "llm": 5000.0, "tts": 1500.0}
    run.cold.warmup_ms = {"stt": 400.0, "llm": 300.0, "tts": 100.0}
    run.backends = {"stt": "whisper:cpu", "llm": "transformers:cpu", "tts": "piper:cpu"}
    return run


@pytest.fixture(scope="module")
def results() -> dict[str, object]:
    plan = Plan(("turn", "load"), (ConfigSpec(),), BenchOptions(), [], [])
    stt = ScenarioResult("stt", samples={"stt_ms": [300.0, 320.0], "wer": [0.0, 0.1]})
    stt.details = {"corpus_wer": 0.05}
    return build_results(plan, [_run("default", [stt, _turn("turn"), _load()])], environment())


def test_results_json_has_the_documented_schema(results: dict, tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.json"
    write_json(results, path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    for key in (
        "created",
        "command",
        "options",
        "environment",
        "models",
        "cold_start",
        "scenarios",
        "details",
        "raw",
        "rows",
        "compare",
        "gate",
    ):
        assert key in data, key
    turn = data["scenarios"]["turn"]
    for metric in (
        "v2v_ms",
        "naive_total_ms",
        "stt_ms",
        "llm_ttft_ms",
        "first_phrase_ms",
        "tts_ttfb_ms",
        "v2v_naive_ratio",
    ):
        assert set(turn[metric]) >= {"p50", "p95", "p99", "mean", "n"}, metric
        assert turn[metric]["n"] == 6
    assert turn["v2v_ms"]["p50"] < turn["naive_total_ms"]["p50"]
    env = data["environment"]
    assert env["cores"] >= 1 and env["cpu"] and env["gpu"] == "none"
    assert env["libraries"]["numpy"] == np.__version__
    assert data["models"]["default"]["llm"]["backend"] == "transformers:cpu"
    assert data["models"]["default"]["stt"]["ref"] == "packaged:whisper-tiny.en"
    cold = data["cold_start"]["default"]
    assert cold["load_ms"]["llm"] == 5000.0
    assert cold["first_call"]["turn"] == {"v2v_ms": 4000.0}  # reported apart...
    assert turn["v2v_ms"]["max"] < 4000.0  # ...and not in the statistics
    assert len(data["raw"]["turn"]["v2v_ms"]) == 6 and len(data["rows"]["turn"]) == 6


def test_report_md_has_the_headline_and_tables(results: dict, tmp_path: Path) -> None:
    plots = write_plots(results, tmp_path)
    write_markdown(results, tmp_path / "report.md", plots)
    text = (tmp_path / "report.md").read_text()
    assert "V2V in process, p50 / p95 ms" in text
    assert "streaming / naive (p50) | 0.6" in text
    assert "max sessions with V2V p95 <= 800 ms | 1" in text
    assert "| v2v_ms | 6 |" in text
    assert "| 2 | 1 | 1 | 2 | 900 | 990 | 12 | 0 | 3 | no |" in text  # the load table
    assert "| 1 | 1 | 0 | 2 | 625 | 648 | - | 0 | 0 | yes |" in text  # written before admission
    assert "STT corpus WER | 0.05" in text
    assert "![latency_cdf](latency_cdf.png)" in text


def test_plots_are_valid_pngs(results: dict, tmp_path: Path) -> None:
    import matplotlib.image

    written = write_plots(results, tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["latency_cdf.png", "turn_breakdown.png", "v2v_concurrency.png"]
    for path in written:
        assert path.read_bytes()[:8] == PNG_MAGIC
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_plots_skip_what_did_not_run(tmp_path: Path) -> None:
    plan = Plan(("stt",), (ConfigSpec(),), BenchOptions(), [], [])
    stt = ScenarioResult("stt", samples={"stt_ms": [300.0, 320.0]})
    results = build_results(plan, [_run("default", [stt])], environment())
    assert [p.name for p in write_plots(results, tmp_path)] == ["latency_cdf.png"]
    assert write_plots({"raw": {}, "scenarios": {}}, tmp_path / "empty") == []


def test_comparison_and_gate_sections(tmp_path: Path) -> None:
    configs = (ConfigSpec("fast"), ConfigSpec("slow", overrides={"llm": {"engine": "llamacpp"}}))
    plan = Plan(("turn",), configs, BenchOptions(), [], [])
    runs = [_run("fast", [_turn("turn@fast")]), _run("slow", [_turn("turn@slow", scale=2)])]
    results = build_results(plan, runs, environment())
    assert results["compare"]["labels"] == ["fast", "slow"]
    assert results["compare"]["configs"]["slow"]["overrides"] == {"llm": {"engine": "llamacpp"}}
    assert set(results["scenarios"]) == {"turn@fast", "turn@slow"}
    assert set(results["cold_start"]) == {"fast", "slow"}
    # the slow configuration measured against the fast one as a baseline regresses
    slower = json.loads(json.dumps(results))
    slower["scenarios"]["turn@fast"] = slower["scenarios"]["turn@slow"]
    verdict = gate.check(slower, results, 10)
    assert "scenarios.turn@fast.v2v_ms.p50" in [r.path for r in verdict.regressions]
    results["gate"] = gate.as_json(verdict, tmp_path / "old.json", 10)
    text = markdown(results, write_plots(results, tmp_path))
    assert "## Comparison" in text and "| metric | fast | slow |" in text
    assert "**FAILED**" in text and "scenarios.turn@fast.v2v_ms.p50" in text
    assert (tmp_path / "turn_breakdown-fast.png").is_file()
