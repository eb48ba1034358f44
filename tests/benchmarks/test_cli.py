"""``voxline bench`` end to end: a quick ``turn`` on the real default models, the gate's exit
code on a real run, and ``realtime``/``load`` against a scripted server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.benchmarks.realtime_fake import FakePlan, fake_realtime_server_thread

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_turn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("bench")
    # one input keeps the test in seconds; --quick's other settings (1 run, warm-up 1) stand
    result = runner.invoke(app, ["bench", "turn", "--quick", "--limit", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result


def test_quick_turn_writes_results_with_v2v_and_the_naive_baseline(
    quick_turn: tuple[Path, Any],
) -> None:
    out, _ = quick_turn
    results = json.loads((out / "results.json").read_text())
    turn = results["scenarios"]["turn"]
    v2v, naive, total = turn["v2v_ms"], turn["naive_total_ms"], turn["total_ms"]
    assert v2v["n"] == naive["n"] == 1  # the warm-up turn is not counted...
    assert set(results["cold_start"]["default"]["first_call"]) == {"turn"}  # ...but reported
    assert 0 < v2v["p50"] <= total["p50"] + 1
    for stage in ("stt_ms", "llm_ttft_ms", "first_phrase_ms", "tts_ttfb_ms"):
        assert 0 < turn[stage]["p50"] < v2v["p50"], stage
    assert naive["p50"] > turn["stt_ms"]["p50"]
    said = results["details"]["turn"]["turns"]["q01"]
    assert "capital of france" in said["transcript"].lower()
    assert said["reply"] and said["reply"] == said["naive_reply"]  # seeded: the same reply
    cold = results["cold_start"]["default"]
    assert set(cold["load_ms"]) == {"stt", "llm", "tts"}
    assert results["models"]["default"]["stt"]["backend"].startswith("whisper")


def test_quick_turn_writes_the_report_and_plots(quick_turn: tuple[Path, Any]) -> None:
    out, result = quick_turn
    report = (out / "report.md").read_text()
    assert "V2V in process, p50 / p95 ms" in report
    assert "naive sequential total" in report
    for png in ("latency_cdf.png", "turn_breakdown.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "streaming / naive" in result.output


def test_the_gate_fails_a_real_run_and_names_the_metric(tmp_path: Path) -> None:
    baseline = tmp_path / "old.json"
    fast = {"p50": 1.0, "p95": 1.0, "p99": 1.0, "mean": 1.0, "n": 1}
    baseline.write_text(json.dumps({"schema_version": 1, "scenarios": {"stt": {"stt_ms": fast}}}))
    args = ["bench", "stt", "--quick", "--limit", "1", "--warmup", "0", "--no-plots"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path), "--baseline", str(baseline)])
    assert result.exit_code == 1, result.output
    assert "scenarios.stt.stt_ms.p50" in result.output
    gate = json.loads((tmp_path / "results.json").read_text())["gate"]
    assert gate["passed"] is False
    assert "FAILED" in (tmp_path / "report.md").read_text()


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "sst", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown scenario" in result.output


def test_realtime_and_load_against_a_server(tmp_path: Path) -> None:
    plan = FakePlan(silence_ms=200, reply_delay_s=0.1, chunks=2, chunk_s=0.2)
    with fake_realtime_server_thread(plan) as url:
        result = runner.invoke(
            app,
            [
                "bench",
                "realtime",
                "load",
                "--quick",
                "--limit",
                "1",
                "--warmup",
                "0",
                "--url",
                url,
                "--out",
                str(tmp_path),
            ],
        )
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    realtime = results["scenarios"]["realtime"]
    assert 250 <= realtime["v2v_ms"]["p50"] <= 900
    assert realtime["underruns"]["p50"] == 0
    assert realtime["overhead_ms"]["n"] == 1
    load = results["details"]["load"]
    assert load["max_sessions_within_slo"] == 2
    assert [lv["sessions"] for lv in load["levels"]] == [1, 2]
    assert (tmp_path / "v2v_concurrency.png").is_file()
    assert "max sessions with V2V p95 <= 800 ms | 2" in (tmp_path / "report.md").read_text()


def test_realtime_sends_the_api_key_a_server_asks_for(tmp_path: Path) -> None:
    plan = FakePlan(silence_ms=200, reply_delay_s=0.1, chunks=1, chunk_s=0.2, api_key="sk-bench")
    args = ["bench", "realtime", "--quick", "--limit", "1", "--warmup", "0"]
    with fake_realtime_server_thread(plan) as url:
        refused = runner.invoke(app, [*args, "--url", url, "--out", str(tmp_path / "no")])
        keyed = runner.invoke(
            app,
            [*args, "--url", url, "--out", str(tmp_path / "yes")],
            env={"VOXLINE_API_KEY": "sk-bench"},
        )
    assert refused.exit_code != 0
    assert keyed.exit_code == 0, keyed.output
    results = json.loads((tmp_path / "yes" / "results.json").read_text())
    assert results["scenarios"]["realtime"]["v2v_ms"]["n"] == 1
