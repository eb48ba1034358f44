"""``voxline eval``: run the golden-set suites, write the scorecard, gate it against a baseline.

Only argument parsing and presentation live here; the work is in ``runner`` (what runs),
``scorecard``/``plots`` (what is written) and ``gate`` (what fails the run). Heavy imports are
deferred so ``voxline --help`` stays fast. Register it on the ``voxline`` app with
``app.command("eval")(evaluate)``.

Exit codes: 0 passed; 1 a metric regressed past its tolerance against ``--baseline`` (each one
named), a suite failed, or (``--enforce-budgets``) a latency is over its budget; 2 bad input.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.errors import InvalidInput, StageError, VoxlineError

console = Console(stderr=True)

ALL_SUITES = "stt,tts,answers,rag,latency"


def _fail(message: str, code: int) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def evaluate(
    suite: Annotated[
        str, typer.Option("--suite", help=f"Comma-separated suites: {ALL_SUITES}.")
    ] = ALL_SUITES,
    quick: Annotated[
        bool, typer.Option("--quick", help="The quick subsets: < 2 min on 2 cores (CI).")
    ] = False,
    config: Annotated[
        str | None,
        typer.Option(help="A settings .env file or a preset ('+'-joined), as `voxline bench`."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("eval-results"),
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="Exit 1 when a metric regressed past its tolerance against this scorecard.json."
        ),
    ] = None,
    golden: Annotated[
        Path | None, typer.Option(help="Golden-set folder (default: benchmarks/golden).")
    ] = None,
    latency_results: Annotated[
        Path | None,
        typer.Option(
            help="latency: read this `voxline bench realtime` results.json instead of measuring."
        ),
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="latency: a running server (default: start one).")
    ] = None,
    rag_backend: Annotated[
        str | None,
        typer.Option(
            help="rag: module:function building the knowledge base to score "
            "(without it the suite is skipped)."
        ),
    ] = None,
    enforce_budgets: Annotated[
        bool, typer.Option(help="Exit 1 when a latency is over its budget.")
    ] = False,
    plots: Annotated[bool, typer.Option(help="Draw PNG plots.")] = True,
    seed: Annotated[int, typer.Option(help="LLM sampling seed.")] = 0,
) -> None:
    """Score the current settings on the golden sets; gate against a baseline scorecard."""
    from benchmarks.configs import ConfigSpec, parse_config
    from benchmarks.eval.context import EvalOptions
    from benchmarks.eval.golden import GOLDEN_DIR, Golden
    from benchmarks.eval.runner import parse_suites, run_eval
    from benchmarks.eval.suites.rag import load_factory

    try:
        suites = parse_suites(suite)
        spec = parse_config(config) if config else ConfigSpec()
        base = None
        if baseline is not None:
            from benchmarks.eval.scorecard import load

            base = load(baseline)  # read first: a bad baseline fails before minutes of work
        options = EvalOptions(
            quick=quick,
            seed=seed,
            out_dir=out,
            latency_results=latency_results,
            url=url,
            knowledge_base=load_factory(rag_backend) if rag_backend else None,
        )
        card = asyncio.run(
            run_eval(suites, spec, options, golden=Golden(golden or GOLDEN_DIR), progress=_tick)
        )
        passed = _finish(card, out, plots, baseline, base, enforce_budgets)
    except VoxlineError as exc:
        code = 2 if isinstance(exc, InvalidInput) else 3 if isinstance(exc, StageError) else 1
        raise _fail(str(exc), code) from None
    if not passed:
        raise typer.Exit(1)


def _tick(suite: str, done: int, total: int) -> None:
    if done == total:
        console.print(f"{suite}: {total} done", highlight=False)


def _finish(
    card: dict[str, Any],
    out: Path,
    plots: bool,
    baseline: Path | None,
    base: dict[str, Any] | None,
    enforce_budgets: bool,
) -> bool:
    from benchmarks.eval import gate
    from benchmarks.eval.scorecard import write_json, write_markdown

    passed = True
    if base is not None and baseline is not None:
        verdict = gate.check(card, base)
        card["gate"] = gate.as_json(verdict, str(baseline))
        passed = verdict.passed
        for failure in verdict.failures:
            console.print(f"[bold red]regression:[/] {escape(gate.describe(failure))}")
        for warning in verdict.warnings:
            console.print(f"[yellow]warning:[/] {escape(warning)}")
    for name, suite in card["suites"].items():
        if suite["status"] == "error":
            passed = False
            console.print(f"[bold red]suite {name} failed:[/] {escape(str(suite['reason']))}")
        if enforce_budgets:
            for metric, b in (suite.get("budgets") or {}).items():
                if not b["met"]:
                    passed = False
                    console.print(
                        f"[bold red]over budget:[/] latency.{metric}: {b['value']:.0f} ms > "
                        f"{b['budget']:.0f} ms"
                    )
    written: list[Path] = []
    if plots:
        from benchmarks.eval.plots import write_plots

        written = write_plots(card, out)
    write_json(card, out / "scorecard.json")
    write_markdown(card, out / "scorecard.md", written)
    _print(card)
    console.print(f"scorecard: {out / 'scorecard.json'}, {out / 'scorecard.md'}")
    if base is not None:
        console.print("gate: " + ("passed" if card["gate"]["passed"] else "[bold red]FAILED[/]"))
    return passed


def _print(card: dict[str, Any]) -> None:
    from benchmarks.eval.scorecard import fmt

    table = Table("suite", "metric", "value", "better", "tolerance", "n", title="scorecard")
    for name, suite in card["suites"].items():
        if suite["status"] != "ok":
            table.add_row(name, suite["status"], escape(str(suite["reason"])), "", "", "")
            continue
        for metric, m in suite["metrics"].items():
            n = "-" if m["n"] is None else str(m["n"])
            table.add_row(
                name,
                metric,
                fmt(m["value"], m["unit"]),
                m["direction"],
                fmt(m["tolerance"], m["unit"]),
                n,
            )
    Console().print(table)
