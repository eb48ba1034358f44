"""``results.json`` (the machine-readable record) and ``report.md`` (the tables people read).

The JSON schema (``schema_version`` 1) — every latency in milliseconds::

    schema_version   1
    created          ISO 8601 UTC time the run finished
    command          the command line
    options          runs, warmup, quick, seed, url, slo_v2v_p95_ms, max_sessions, data
    environment      cpu, cores, memory_gib, gpu ("none"), os, python, libraries{name: version}
    models           {config label: {stt|llm|tts: {engine, ref, device, backend}}}
    cold_start       {config label: {load_ms{stage}, warmup_ms{stage}, server_ready_ms,
                      first_call{scenario: {metric: value}}}}   (never in the statistics)
    scenarios        {scenario: {metric: {p50, p95, p99, mean, min, max, n}}}   warm-up excluded
    details          {scenario: {...}}  scalars: corpus_wer, streaming_naive_ratio_p50,
                      load levels and max_sessions_within_slo, transcripts and replies
    raw              {scenario: {metric: [values]}}       what the statistics were computed from
    rows             {scenario: [{metric: value}]}        one object per measurement, in order
    compare          null, or {scenarios, labels, configs{label: {env_file, overrides}}}
    gate             null, or {baseline, max_regression_pct, passed, regressions[], compared}

Scenario names are ``stt``, ``llm``, ``tts``, ``turn``, ``realtime``, ``load``, and in a
comparison ``<scenario>@<config label>``. So ``scenarios.turn.v2v_ms.p50`` is the in-process
voice-to-voice median and ``scenarios.turn.naive_total_ms.p50`` the naive baseline's.
"""

from __future__ import annotations

import json
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.runner import ConfigRun, Plan, model_refs
from benchmarks.stats import summarize

SCHEMA_VERSION = 1


def build_results(
    plan: Plan, runs: list[ConfigRun], environment: dict[str, Any], *, data: str | None = None
) -> dict[str, Any]:
    """The ``results.json`` object of a finished run (see the module docstring)."""
    o = plan.options
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["voxline", *sys.argv[1:]]),
        "options": {
            "runs": o.runs,
            "warmup": o.warmup,
            "quick": o.quick,
            "seed": o.seed,
            "url": o.url,
            "slo_v2v_p95_ms": o.slo_v2v_p95_ms,
            "max_sessions": o.max_sessions,
            "data": data or "built-in",
            "inputs": len(plan.clips),
        },
        "environment": environment,
        "models": {},
        "cold_start": {},
        "scenarios": {},
        "details": {},
        "raw": {},
        "rows": {},
        "compare": None,
        "gate": None,
    }
    for run in runs:
        label = run.config.label
        results["models"][label] = model_refs(run)
        results["cold_start"][label] = {
            "load_ms": run.cold.load_ms,
            "warmup_ms": run.cold.warmup_ms,
            "server_ready_ms": run.cold.server_ready_ms,
            "first_call": {r.name: r.first_call for r in run.results if r.first_call},
        }
        for r in run.results:
            summaries = {m: summarize(v) for m, v in r.samples.items()}
            results["scenarios"][r.name] = {
                m: s.as_dict() for m, s in summaries.items() if s is not None
            }
            results["details"][r.name] = r.details
            results["raw"][r.name] = r.samples
            results["rows"][r.name] = r.rows
    if plan.compare:
        results["compare"] = {
            "scenarios": list(plan.scenarios),
            "labels": [c.label for c in plan.configs],
            "configs": {
                c.label: {
                    "env_file": None if c.env_file is None else str(c.env_file),
                    "overrides": c.overrides,
                }
                for c in plan.configs
            },
        }
    return results


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write ``results`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")


def fmt(metric: str, value: float | int | None) -> str:
    """A value as the tables show it: whole milliseconds, three significant digits otherwise."""
    if value is None:
        return "-"
    if metric.endswith("_ms"):
        return f"{value:.0f}"
    return f"{value:.3g}"


def _metric_table(metrics: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| metric | n | p50 | p95 | p99 | mean |", "|---|---:|---:|---:|---:|---:|"]
    for name, s in metrics.items():
        cells = [fmt(name, s[k]) for k in ("p50", "p95", "p99", "mean")]
        lines.append(f"| {name} | {s['n']} | " + " | ".join(cells) + " |")
    return lines


def headline(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The numbers a reader wants first: V2V, the naive baseline, their ratio, capacity."""
    scen, details = results["scenarios"], results["details"]
    rows: list[tuple[str, str]] = []
    for name in scen:
        base = name.split("@")[0]
        m = scen[name]
        at = name[len(base) :]
        if base == "turn" and "v2v_ms" in m:
            rows.append((f"V2V in process{at}, p50 / p95 ms", _pair(m["v2v_ms"])))
            if "naive_total_ms" in m:
                naive = _pair(m["naive_total_ms"])
                rows.append((f"naive sequential total{at}, p50 / p95 ms", naive))
                ratio = details.get(name, {}).get("streaming_naive_ratio_p50")
                rows.append((f"streaming / naive (p50){at}", fmt("ratio", ratio)))
                by_length = details.get(name, {}).get("streaming_naive_ratio_p50_by_length", {})
                for length, value in by_length.items():
                    rows.append((f"streaming / naive (p50), {length} answers{at}", fmt("", value)))
        if base == "realtime" and "v2v_ms" in m:
            rows.append((f"V2V realtime client{at}, p50 / p95 ms", _pair(m["v2v_ms"])))
        if base == "endpoint":
            for mode in ("fixed", "smart"):
                if f"{mode}_endpoint_ms" in m:
                    rate = details.get(name, {}).get("false_end_rates", {})
                    rows.append(
                        (
                            f"endpoint {mode}{at}: delay p50 / p95 ms, false ends (paused)",
                            f"{_pair(m[f'{mode}_endpoint_ms'])}, "
                            f"{fmt('', rate.get(f'{mode}_false_end_paused'))}",
                        )
                    )
        if base == "load":
            d = details.get(name, {})
            best = d.get("max_sessions_within_slo")
            slo = d.get("slo_v2v_p95_ms")
            rows.append((f"max sessions with V2V p95 <= {fmt('_ms', slo)} ms{at}", str(best)))
            served = d.get("max_served_within_slo")
            if served is not None and best is not None and served != best:
                rows.append((f"  of which served (the rest refused fast){at}", str(served)))
        if base == "llm" and "first_phrase_ms" in m:
            rows.append((f"LLM first phrase{at}, p50 / p95 ms", _pair(m["first_phrase_ms"])))
            if "tokens_per_s" in m:
                rows.append((f"LLM decode tokens/s (p50){at}", fmt("", m["tokens_per_s"]["p50"])))
        if base == "stt" and name in details:
            rows.append((f"STT corpus WER{at}", fmt("wer", details[name].get("corpus_wer"))))
        if base == "tts" and name in details:
            rows.append((f"TTS round-trip WER{at}", fmt("wer", details[name].get("corpus_wer"))))
    return rows


def _pair(s: dict[str, float]) -> str:
    return f"{s['p50']:.0f} / {s['p95']:.0f}"


def _cell(metric: str, s: dict[str, float] | None) -> str:
    return "-" if s is None else f"{fmt(metric, s['p50'])} / {fmt(metric, s['p95'])}"


def _compare_table(results: dict[str, Any]) -> list[str]:
    cmp = results["compare"]
    labels: list[str] = cmp["labels"]
    lines: list[str] = []
    for scenario in cmp["scenarios"]:
        per = {lb: results["scenarios"].get(f"{scenario}@{lb}", {}) for lb in labels}
        metrics = list(dict.fromkeys(m for lb in labels for m in per[lb]))
        lines += [f"### {scenario}: p50 / p95", ""]
        lines.append("| metric | " + " | ".join(labels) + " |")
        lines.append("|---|" + "---:|" * len(labels))
        for m in metrics:
            cells = [_cell(m, per[lb].get(m)) for lb in labels]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _load_table(details: dict[str, Any]) -> list[str]:
    lines = [
        "| sessions | accepted | refused | turns | V2V p50 ms | V2V p95 ms | refusal p95 ms "
        "| errors | underruns | meets SLO |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lv in details.get("levels", []):
        # results written before admission control have no accepted/refused columns
        accepted = lv.get("accepted", lv["sessions"])
        lines.append(
            f"| {lv['sessions']} | {accepted} | {lv.get('refused', 0)} | {lv['turns']} | "
            f"{fmt('_ms', lv['v2v_p50_ms'])} | {fmt('_ms', lv['v2v_p95_ms'])} | "
            f"{fmt('_ms', lv.get('refusal_p95_ms'))} | {lv['errors']} | {lv['underruns']} | "
            f"{'yes' if lv['meets_slo'] else 'no'} |"
        )
    return lines


def markdown(results: dict[str, Any], plots: list[Path] | None = None) -> str:
    """The ``report.md`` text."""
    env = results["environment"]
    lines = [
        "# voxline benchmark",
        "",
        f"{results['created']} on **{env['cpu']}** ({env['cores']} cores, "
        f"{env.get('memory_gib')} GiB, GPU: {env['gpu']}), Python {env['python']}.",
        "",
        f"Command: `{results['command']}` — {results['options']['inputs']} inputs "
        f"({results['options']['data']}), {results['options']['runs']} run(s), "
        f"{results['options']['warmup']} warm-up run(s) excluded.",
        "",
        "| config | stage | engine | model | backend |",
        "|---|---|---|---|---|",
    ]
    for label, stages in results["models"].items():
        for stage, m in stages.items():
            lines.append(
                f"| {label} | {stage} | {m['engine']} | {m['ref']} | {m['backend'] or '-'} |"
            )
    lines += ["", "## Headline", "", "| | |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in headline(results)]
    lines += ["", "## Cold start (not in the statistics)", ""]
    lines += ["| config | stage | load ms | warm-up ms |", "|---|---|---:|---:|"]
    for label, cold in results["cold_start"].items():
        for stage, ms in cold["load_ms"].items():
            warm = cold["warmup_ms"].get(stage)
            lines.append(f"| {label} | {stage} | {fmt('_ms', ms)} | {fmt('_ms', warm)} |")
        if cold.get("server_ready_ms") is not None:
            lines.append(f"| {label} | server to ready | {fmt('_ms', cold['server_ready_ms'])} | |")
    for name, metrics in results["scenarios"].items():
        lines += ["", f"## {name}", "", *_metric_table(metrics)]
        if name.split("@")[0] == "load":
            lines += ["", *_load_table(results["details"].get(name, {}))]
    if results.get("compare"):
        lines += ["", "## Comparison", "", *_compare_table(results)]
    if results.get("gate"):
        lines += ["", "## Regression gate", "", *gate_lines(results["gate"])]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def gate_lines(gate: dict[str, Any]) -> list[str]:
    """The regression gate's verdict as Markdown lines."""
    verdict = "passed" if gate["passed"] else "FAILED"
    lines = [
        f"Against `{gate['baseline']}` with {gate['max_regression_pct']:g}% tolerance: "
        f"**{verdict}** ({gate['compared']} values compared)."
    ]
    if gate["regressions"]:
        lines += ["", "| value | baseline | now | change |", "|---|---:|---:|---:|"]
        for r in gate["regressions"]:
            change = "new" if r["change_pct"] is None else f"{r['change_pct']:+.1f}%"
            lines.append(f"| {r['path']} | {r['baseline']:.4g} | {r['current']:.4g} | {change} |")
    return lines


def write_markdown(results: dict[str, Any], path: Path, plots: list[Path] | None = None) -> None:
    """Write ``report.md``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(results, plots), encoding="utf-8")
