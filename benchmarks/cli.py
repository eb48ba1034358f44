"""``voxline bench``: run the scenarios, write results.json, report.md and plots, gate regressions.

Only argument parsing and presentation live here; the work is in ``runner`` (what runs),
``report``/``plots`` (what is written) and ``gate`` (what fails the run). Heavy imports (engines,
matplotlib) are deferred so ``voxline --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from benchmarks.configs import ConfigSpec, device_overrides, parse_config
from benchmarks.context import BenchOptions
from pipeline.errors import InvalidInput, StageError, VoxlineError

console = Console(stderr=True)
log = logging.getLogger("voxline.bench")

QUICK_INPUTS = 3
QUICK_MAX_SESSIONS = 2


class DeviceChoice(enum.StrEnum):
    """``--device`` values."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _fail(message: str, code: int) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _exit_code(exc: VoxlineError) -> int:
    return 2 if isinstance(exc, InvalidInput) else 3 if isinstance(exc, StageError) else 1


def bench(
    scenarios: Annotated[
        list[str] | None,
        typer.Argument(
            help="Scenarios: stt llm tts turn realtime load retrieval endpoint phrasing, and "
            "compare (the others per --config). Default: stt llm tts turn.",
            show_default=False,
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="3 inputs, 1 run: a smoke run in under a minute.")
    ] = False,
    runs: Annotated[
        int | None, typer.Option(min=1, help="Passes over the inputs (default 3; quick 1).")
    ] = None,
    warmup: Annotated[
        int, typer.Option(min=0, help="Warm-up runs per scenario, excluded from statistics.")
    ] = 1,
    device: Annotated[
        DeviceChoice | None, typer.Option(help="Run STT and LLM (and Piper if it can) here.")
    ] = None,
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            help="A settings .env file or a preset (transformers, llamacpp, whisper-base, "
            "beam5, cpu, cuda), '+'-joined; repeat it to compare.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("bench-results"),
    data: Annotated[
        str | None,
        typer.Option(
            help="Folder of name.wav (or .flac) + name.txt pairs to use instead, or a shipped "
            "set: heldout (unseen questions), pauses (requests with a pause inside)."
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Use only the first N inputs (quick: 3).")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="A running server for realtime/load/retrieval (default: start one)."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="VOXLINE_API_KEY",
            show_default=False,
            help="A key (realtime and audio scopes) for a --url server with API keys.",
        ),
    ] = None,
    slo_v2v_p95_ms: Annotated[
        float, typer.Option(help="load: the V2V p95 a concurrency level must meet.")
    ] = 800.0,
    max_sessions: Annotated[
        int | None, typer.Option(min=1, help="load: most concurrent sessions (default 8; quick 2).")
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(help="Fail if a latency or WER regressed against this results.json."),
    ] = None,
    max_regression: Annotated[
        float, typer.Option(help="Tolerated regression against --baseline, in percent.")
    ] = 10.0,
    plots: Annotated[bool, typer.Option(help="Draw PNG plots.")] = True,
    seed: Annotated[int, typer.Option(help="LLM sampling seed.")] = 0,
) -> None:
    """Benchmark per-stage and voice-to-voice latency, quality, and capacity under load."""
    from benchmarks.runner import plan_scenarios

    try:
        configs = [parse_config(c) for c in config or []] or [ConfigSpec()]
        if device is not None:
            configs = [c.with_overrides(device_overrides(device.value)) for c in configs]
        names = plan_scenarios(list(scenarios or []), len(configs), url)
        options = BenchOptions(
            runs=runs or (1 if quick else 3),
            warmup=warmup,
            quick=quick,
            seed=seed,
            url=url,
            api_key=api_key,
            out_dir=out,
            slo_v2v_p95_ms=slo_v2v_p95_ms,
            max_sessions=max_sessions or (QUICK_MAX_SESSIONS if quick else 8),
            data=data,
            limit=limit or (QUICK_INPUTS if quick else None),
        )
        results = _run(names, configs, options, data, options.limit)
        passed = _finish(results, out, plots, baseline, max_regression)
    except VoxlineError as exc:
        raise _fail(str(exc), _exit_code(exc)) from None
    if not passed:
        raise typer.Exit(1)


def _run(
    names: tuple[str, ...],
    configs: list[ConfigSpec],
    options: BenchOptions,
    data: str | None,
    limit: int | None,
) -> dict[str, Any]:
    from benchmarks.data import builtin_clips, data_dir, load_dir, replies
    from benchmarks.environment import environment
    from benchmarks.report import build_results
    from benchmarks.runner import Plan, run_plan

    settings = configs[0].settings()
    if data is not None:
        clips = load_dir(data_dir(data), settings.audio, limit)
    else:
        clips = builtin_clips(settings.cache_dir / "bench" / "clips", limit)
    plan = Plan(names, tuple(configs), options, clips, replies(limit))
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done, total=total)

        runs = asyncio.run(run_plan(plan, progress))
    return build_results(plan, runs, environment(), data=None if data is None else str(data))


def _finish(
    results: dict[str, Any], out: Path, plots: bool, baseline: Path | None, tolerance: float
) -> bool:
    from benchmarks import gate
    from benchmarks.report import write_json, write_markdown

    passed = True
    if baseline is not None:
        verdict = gate.check(results, gate.load_results(baseline), tolerance)
        results["gate"] = gate.as_json(verdict, baseline, tolerance)
        passed = verdict.passed
        for regression in verdict.regressions:
            console.print(f"[bold red]regression:[/] {gate.describe(regression, tolerance)}")
    written: list[Path] = []
    if plots:
        from benchmarks.plots import write_plots

        written = write_plots(results, out)
    write_json(results, out / "results.json")
    write_markdown(results, out / "report.md", written)
    _print_summary(results)
    console.print(f"results: {out / 'results.json'}, report: {out / 'report.md'}")
    if baseline is not None:
        console.print("gate: " + ("passed" if passed else "[bold red]FAILED[/]"))
    return passed


def _print_summary(results: dict[str, Any]) -> None:
    from benchmarks.report import fmt, headline

    out = Console()
    rows = headline(results)
    if rows:
        top = Table("", "", title="headline", show_header=False)
        for key, value in rows:
            top.add_row(key, value)
        out.print(top)
    table = Table("scenario", "metric", "n", "p50", "p95", "p99", "mean")
    for scenario, metrics in results["scenarios"].items():
        for metric, s in metrics.items():
            table.add_row(
                scenario,
                metric,
                str(s["n"]),
                *(fmt(metric, s[k]) for k in ("p50", "p95", "p99", "mean")),
            )
    out.print(table)
