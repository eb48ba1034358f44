"""``latency``: voice-to-voice and per-stage latency against the budgets in the golden data.

The numbers come from ``voxline bench``'s ``realtime`` scenario (a client speaking at real-time
pace over the WebSocket, V2V on its own clock), run here on held-out spoken questions (the
knowledge-base questions, several voices) against a server started with the settings under
test, or against ``--url``; or they are read from a results.json ``voxline bench realtime``
wrote (``--latency-results``). Each budgeted metric gives two scorecard metrics (``v2v_ms_p50``,
``v2v_ms_p95``...), gated against a baseline like any other; the budgets themselves are
reported (met or not) but only fail a run with ``--enforce-budgets``, since no 2-core CPU meets
them today.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.context import BenchOptions
from benchmarks.data import SAMPLE_RATE, Clip, speech_end_seconds
from benchmarks.eval.context import EvalContext
from benchmarks.eval.golden import load_audio_16k
from benchmarks.eval.scorecard import Metric, SuiteResult, latency
from benchmarks.gate import load_results
from benchmarks.stats import summarize
from pipeline.audio import resample
from pipeline.errors import InvalidInput

NAME = "latency"
QUICK_TURNS = 3
FULL_RUNS = 2


def held_out_clips(ctx: EvalContext) -> list[Clip]:
    """The knowledge base's quick questions as realtime clips (24 kHz; 3 of them when quick)."""
    questions = ctx.golden.kb_questions(quick=True)
    if ctx.options.quick:
        questions = questions[:QUICK_TURNS]
    clips = []
    for q in questions:
        audio = resample(load_audio_16k(q.audio), SAMPLE_RATE)
        clips.append(Clip(q.id, audio, q.question, speech_end_seconds(audio)))
    return clips


async def measure(ctx: EvalContext) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Run the realtime scenario; its samples (metric -> values) and how it ran."""
    from benchmarks.runner import Plan, run_plan

    await ctx.close_engines()  # the server must not share the CPU with idle copies
    clips = held_out_clips(ctx)
    options = BenchOptions(
        runs=1 if ctx.options.quick else FULL_RUNS,
        warmup=1,
        quick=ctx.options.quick,
        seed=ctx.options.seed,
        url=ctx.options.url,
        out_dir=ctx.options.out_dir,
    )
    plan = Plan(("realtime",), (ctx.config,), options, clips, [])
    runs = await run_plan(plan, ctx.progress)
    result = runs[0].results[0]
    return result.samples, {
        "source": "measured: voxline bench realtime scenario",
        "url": ctx.options.url or "a server started with the settings under test",
        "clips": [c.name for c in clips],
        "runs": options.runs,
        "server_ready_ms": runs[0].cold.server_ready_ms,
    }


def read_results(path: Path, scenario: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The summaries of ``scenario`` in a ``voxline bench`` results.json.

    Raises:
        InvalidInput: not a results file, or without that scenario.
    """
    results = load_results(path)
    names = [n for n in results["scenarios"] if n.split("@")[0] == scenario]
    if not names:
        raise InvalidInput(f"{path}: no {scenario!r} scenario in these results", param="latency")
    return results["scenarios"][names[0]], {"source": f"read: {path}", "scenario": names[0]}


def score(
    summaries: dict[str, dict[str, Any]], budgets: dict[str, dict[str, float]]
) -> tuple[dict[str, Metric], dict[str, Any]]:
    """Metrics and budget verdicts from per-metric summaries (``{p50, p95, n}``)."""
    metrics: dict[str, Metric] = {}
    verdicts: dict[str, Any] = {}
    for metric, limits in budgets.items():
        summary = summaries.get(metric)
        if not summary:
            continue
        for pct, budget in limits.items():
            value = float(summary[pct])
            name = f"{metric}_{pct}"
            metrics[name] = latency(value, int(summary.get("n") or 0))
            verdicts[name] = {"value": round(value, 1), "budget": budget, "met": value <= budget}
    return metrics, verdicts


async def run(ctx: EvalContext) -> SuiteResult:
    """Measure (or read) the realtime latencies and compare them with the budgets."""
    start = time.perf_counter()
    spec = ctx.golden.latency_budgets()
    budgets: dict[str, dict[str, float]] = spec["budgets"]
    if ctx.options.latency_results is not None:
        summaries, how = read_results(ctx.options.latency_results, spec.get("scenario", "realtime"))
    else:
        samples, how = await measure(ctx)
        summaries = {m: s.as_dict() for m, v in samples.items() if (s := summarize(v))}
    metrics, verdicts = score(summaries, budgets)
    if not metrics:
        return SuiteResult(NAME, "error", "no budgeted latency was measured", details=how)
    return SuiteResult(
        NAME,
        metrics=metrics,
        budgets=verdicts,
        details={**how, "summaries": {m: summaries[m] for m in budgets if m in summaries}},
        seconds=time.perf_counter() - start,
    )
