"""``voxline release``: create, list, promote (through the gate, or as a canary) and roll back
releases (docs/releases.md).

A release is an env file of ``VOXLINE_*`` lines (models, prompts, sampling, voices...) checked
against the settings tree and stored, immutable, in the state store (``store.releases``). The
servers sharing that store follow its active-release pointer within
``VOXLINE_RELEASE__POLL_INTERVAL_S``; these commands only move the pointer.

Exit codes: 0 done; 1 the gate refused the candidate (each regressed metric named), or the
releases changed while the command ran; 2 bad input (an unknown release or setting, a bad
value); 3 an engine could not start for the gate's eval.

Registered on the ``voxline`` app with ``app.add_typer(release_app, name="release")``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.errors import InvalidInput, StageError, VoxlineError

release_app = typer.Typer(
    name="release",
    help="Releases: named bundles of settings, promoted through the eval gate.",
    no_args_is_help=True,
)
console = Console(stderr=True)

_EMBEDDED = (
    "the stored vectors were made with the server's embedding model (one per process): "
    "a server setting"
)

SERVER_ONLY: Mapping[str, str] = {
    "state": "where releases live: a server setting, not a release's",
    "observability": "logging and tracing are set up once per process: a server setting",
    "pricing": "the cost ledger is the server's: a server setting",
    "audio": "upload limits are enforced before a release is chosen: a server setting",
    "release": "how servers follow releases: a server setting, not a release's",
    "demo_enabled": "the demo is mounted at start: a server setting",
    "edge": "keys, origins and limits guard every release alike: a server setting",
    "jobs": "the job queue and workers are the process's: a server setting",
    "ray": "the Ray Serve deployment is the process's: a server setting",
    "limits": "admission, engine queues and the drain are the process's: a server setting",
    "voices": "uploaded voices are the store's, for every release: a server setting",
    # the knowledge base: its retrieval policy (top_k, thresholds, replies) is a release's;
    # how files are stored and embedded is the store's, shared by every release
    "kb.embedding_model": _EMBEDDED,
    "kb.embedding_runtime": _EMBEDDED,
    "kb.embedding_threads": _EMBEDDED,
    "kb.chunk_tokens": "files are chunked once, when added to a store: a server setting",
    "kb.chunk_overlap_tokens": "files are chunked once, when added to a store: a server setting",
    "kb.max_file_bytes": "upload limits are enforced before a release is chosen: a server setting",
    "kb.max_file_chars": "upload limits are enforced before a release is chosen: a server setting",
}
"""Settings a release may not set, and why (they are read once, by the process, or shape data
that outlives a release): top-level sections, or ``section.field``."""

KEY_METRICS = ("answers.contains_match", "stt.wer", "tts.roundtrip_wer")
"""The scorecard values ``release list`` shows."""


def _fail(message: str, code: int) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _code(exc: VoxlineError) -> int:
    from store import NotFound

    if isinstance(exc, InvalidInput | NotFound):
        return 2
    return 3 if isinstance(exc, StageError) else 1


def _say(text: str) -> None:
    console.print(escape(text), highlight=False)


@release_app.command("create")
def create(
    # brackets escaped: Rich reads an unescaped [a-z0-9] as a markup tag and drops it
    name: Annotated[str, typer.Argument(help="The release's name: \\[a-z0-9]\\[a-z0-9._-]*.")],
    env: Annotated[
        Path, typer.Option("--env", help="A file of VOXLINE_* lines (models, prompts...).")
    ],
    description: Annotated[str | None, typer.Option(help="What this release changes.")] = None,
) -> None:
    """Store a new release made of an env file's settings (checked against the settings tree)."""
    from pipeline.settings import Settings
    from pipeline.settings_env import apply, parse_env, to_tree
    from store import Store
    from store.release_types import check_name

    try:
        check_name(name)
    except InvalidInput as exc:
        raise _fail(str(exc), 2) from None
    try:
        text = env.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(f"{env}: cannot read it ({exc.strerror})", 2) from None
    base = Settings()
    try:
        values = {k.strip().upper(): v for k, v in parse_env(text).items()}
        tree = to_tree(values, refused=SERVER_ONLY)
        apply(base, tree)  # every value checked now, not when a server first loads it
        with Store.open(base.state) as store:
            store.releases.create(name, values, tree, description=description)
    except VoxlineError as exc:
        message = f"{env}: {exc}" if isinstance(exc, InvalidInput) else str(exc)
        raise _fail(message, _code(exc)) from None
    _say(
        f"created release {name} ({len(values)} settings); promote it with "
        f"`voxline release promote {name}`"
    )


@release_app.command("list")
def list_releases(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The releases: status (active, canary, candidate, retired, rolled back), gate, scores."""
    from pipeline.settings import Settings
    from store import Store

    try:
        with Store.open(Settings().state) as store:
            pointer = store.releases.pointer()
            releases = store.releases.list()
    except VoxlineError as exc:
        raise _fail(str(exc), _code(exc)) from None
    canary = pointer.canary
    if as_json:
        body = {
            "active": pointer.active,
            "previous": list(pointer.previous),
            "canary": None
            if canary is None
            else {"name": canary.name, "percent": canary.percent, "since": canary.since},
            "releases": [_json(r) for r in releases],
        }
        print(json.dumps(body, indent=2))
        return
    table = Table("release", "status", "created", "settings", "gate", *KEY_METRICS, "reason")
    for r in releases:
        status = r.status + (f" {canary.percent:g}%" if canary and canary.name == r.name else "")
        gate = "-"
        if r.gate is not None:
            gate = ("passed" if r.gate.get("passed") else "refused") + f" vs {r.gate['against']}"
        summary = (r.scorecard or {}).get("summary", {})
        scores = [f"{summary[m]:.3f}" if m in summary else "-" for m in KEY_METRICS]
        table.add_row(
            r.name,
            status,
            _when(r.created_at),
            str(len(r.env)) if not r.implicit else "(server's own)",
            gate,
            *scores,
            escape(r.reason or ""),
        )
    Console().print(table)
    active = f"active: {pointer.active}"
    if not any(r.name == pointer.active for r in releases):
        active += " (the server's own settings)"
    _say(active + (f"; canary: {canary.name} at {canary.percent:g}%" if canary else ""))


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if at else "-"


def _json(r: Any) -> dict[str, Any]:
    scorecard = None
    if r.scorecard is not None:
        scorecard = {k: v for k, v in r.scorecard.items() if k != "blob"}
    return {
        "name": r.name,
        "status": r.status,
        "created_at": r.created_at,
        "description": r.description,
        "env": dict(r.env),
        "scorecard": scorecard,
        "gate": r.gate,
        "reason": r.reason,
        "history": list(r.history),
    }


@release_app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(help="The release to promote.")],
    canary: Annotated[
        float | None,
        typer.Option(
            "--canary",
            help="Send only this percent of new sessions and turns to it, watched against the "
            "active release (rolled back automatically when worse). Promote it again, without "
            "--canary, to make it active.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the gate's scorecards are written.")] = Path(
        "eval-results/release"
    ),
) -> None:
    """Run the gate (eval of the candidate against the active release) and promote on a pass."""
    from cli.release_gate import run_gate
    from pipeline.settings import Settings
    from store import Store

    base = Settings()
    try:
        with Store.open(base.state) as store:
            pointer = store.releases.pointer()
            candidate = store.releases.require(name)
            if candidate.implicit:
                raise InvalidInput(
                    "'settings' is the server's own settings: roll back to it instead"
                )
            if pointer.active == name:
                _say(f"release {name} is already active")
                return
            running = pointer.canary is not None and pointer.canary.name == name
            gate = candidate.gate or {}
            if (
                running
                and canary is None
                and gate.get("passed")
                and (gate.get("against") == pointer.active)
            ):
                # the canary passed the gate against this very release, then served live
                moved = store.releases.promote(name, expect_version=pointer.version)
                _say(f"promoted canary {name}: active now (was {moved.previous[-1]})")
                return
            if pointer.canary is not None and not running:
                raise InvalidInput(
                    f"release {pointer.canary.name!r} runs as a canary: promote it or roll it "
                    "back first"
                )
            if canary is not None and not 0 < canary < 100:
                raise InvalidInput("--canary is a percent above 0 and below 100")
            active = store.releases.require(pointer.active)
            result = run_gate(store, candidate, active, base, out, _say)
            _print_gate(result)
            if not result.verdict.passed:
                failures = len(result.verdict.failures)
                raise _refused(
                    f"the gate refused {name}: {failures} metric(s) regressed against "
                    f"{result.against} (scorecard: {out / name / 'scorecard.md'})"
                )
            if canary is not None:
                store.releases.start_canary(name, canary, expect_version=pointer.version)
                _say(
                    f"canary {name}: {canary:g}% of new sessions and turns, beside "
                    f"{pointer.active}; `voxline release promote {name}` to make it active"
                )
            else:
                store.releases.promote(name, expect_version=pointer.version)
                _say(f"promoted {name}: active now (was {pointer.active})")
    except VoxlineError as exc:
        raise _fail(str(exc), _code(exc)) from None


def _refused(message: str) -> typer.Exit:
    console.print(f"[bold red]refused:[/] {escape(message)}", highlight=False)
    return typer.Exit(1)


def _print_gate(result: Any) -> None:
    from benchmarks.eval.scorecard import fmt

    table = Table(
        "metric", result.against, "candidate", "change", "verdict", title="scorecard diff"
    )
    for d in result.verdict.diffs:
        change = "-" if d.delta is None else f"{d.delta:+.4g}"
        verdict = d.verdict
        if verdict in ("regressed", "missing"):
            verdict = f"[bold red]{verdict}[/]"
        table.add_row(d.name, fmt(d.baseline, d.unit), fmt(d.current, d.unit), change, verdict)
    Console().print(table)
    from benchmarks.eval import gate

    for failure in result.verdict.failures:
        console.print(f"[bold red]regression:[/] {escape(gate.describe(failure))}")
    for warning in result.verdict.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")


@release_app.command("rollback")
def rollback(
    reason: Annotated[
        str, typer.Option(help="Why (kept with the release, shown by `release list`).")
    ] = "rolled back by hand",
) -> None:
    """Undo the last change, with no gate: end the running canary, or make the previously
    active release active again."""
    from pipeline.settings import Settings
    from store import Store

    try:
        with Store.open(Settings().state) as store:
            before = store.releases.pointer()
            after = store.releases.rollback(reason=reason, expect_version=before.version)
    except VoxlineError as exc:
        raise _fail(str(exc), _code(exc)) from None
    if before.canary is not None:
        _say(f"canary {before.canary.name} rolled back; active: {after.active}")
    else:
        _say(f"rolled back: {after.active} active again (was {before.active})")
