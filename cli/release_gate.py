"""The promotion gate: score the candidate on the golden sets and compare it with the active
release's scorecard (``benchmarks.eval.gate``), scoring the active release too when the
scorecard it has does not fit.

What runs is the process's ``release`` settings: ``gate_suites`` (default ``stt,tts,answers``),
``gate_quick`` (default on) and ``golden_dir``. A release's settings are those of the process
running the gate with the release's overrides laid over them, the same rule the server follows,
so run ``promote`` with the environment (``.env``) the servers have.

A stored scorecard is reused as the baseline only when it was computed on the same golden data,
quick-ness and suites, and on the same settings (its ``settings_sha256``): a scorecard of other
settings, such as one made on another machine's environment, is not evidence about these.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.configs import ConfigSpec
from benchmarks.eval import gate
from benchmarks.eval.context import EvalOptions
from benchmarks.eval.golden import GOLDEN_DIR, Golden
from benchmarks.eval.provenance import settings_digest
from benchmarks.eval.runner import parse_suites, run_eval
from benchmarks.eval.scorecard import SCHEMA_VERSION, metrics_of, write_json, write_markdown
from pipeline.settings import Settings
from pipeline.settings_env import apply
from store import Release, Store

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class GateRun:
    """What the gate found.

    Attributes:
        candidate: The candidate's scorecard.
        baseline: The active release's scorecard it was compared with.
        verdict: The comparison.
        against: The active release's name.
        rescored: Whether the active release was scored now (its stored card did not fit).
    """

    candidate: dict[str, Any]
    baseline: dict[str, Any]
    verdict: gate.GateResult
    against: str
    rescored: bool


@dataclass(frozen=True, slots=True)
class GatePlan:
    """What the gate runs: suites, quick subsets, golden data."""

    suites: tuple[str, ...]
    quick: bool
    golden: Golden

    @classmethod
    def of(cls, settings: Settings) -> GatePlan:
        """The plan of the ``release`` settings.

        Raises:
            InvalidInput: an unknown suite in ``gate_suites``.
        """
        cfg = settings.release
        return cls(
            parse_suites(cfg.gate_suites), cfg.gate_quick, Golden(cfg.golden_dir or GOLDEN_DIR)
        )


def _summary(card: dict[str, Any]) -> dict[str, float]:
    return {name: float(m["value"]) for name, m in metrics_of(card).items()}


def _fits(release: Release, settings: Settings, plan: GatePlan, digest: str) -> bool:
    meta = release.scorecard
    return (
        meta is not None
        and meta.get("schema_version") == SCHEMA_VERSION
        and bool(meta.get("quick")) == plan.quick
        and set(plan.suites) <= set(meta.get("suites", ()))
        and meta.get("golden_sha256") == digest
        and meta.get("settings_sha256") == settings_digest(settings)
        and not meta.get("failed_suites")
    )


def score(
    store: Store, release: Release, base: Settings, plan: GatePlan, out: Path, say: Say
) -> dict[str, Any]:
    """Run the gate's suites on ``release`` and store the scorecard with it."""
    settings = apply(base, release.overrides)
    say(
        f"scoring release {release.name} ({', '.join(plan.suites)}"
        f"{', quick' if plan.quick else ''})..."
    )
    options = EvalOptions(quick=plan.quick, out_dir=out)
    spec = ConfigSpec(release.name, None, dict(release.overrides))
    card: dict[str, Any] = asyncio.run(
        run_eval(
            plan.suites, spec, options, golden=plan.golden, release=release.name, settings=settings
        )
    )
    meta = {
        "schema_version": card["schema_version"],
        "suites": list(plan.suites),
        "quick": plan.quick,
        "settings_sha256": settings_digest(settings),
        "golden_sha256": plan.golden.digest(),
        "created": card["created"],
        "summary": _summary(card),
        "failed_suites": [n for n, s in card["suites"].items() if s["status"] == "error"],
    }
    store.releases.set_scorecard(release.name, json.dumps(card, default=str).encode(), meta)
    write_json(card, out / "scorecard.json")
    return card


def baseline_of(
    store: Store, active: Release, base: Settings, plan: GatePlan, out: Path, say: Say
) -> tuple[dict[str, Any], bool]:
    """The active release's scorecard: the stored one if it fits, else scored now (and
    stored). Returns it and whether it was scored now."""
    settings = apply(base, active.overrides)
    if _fits(active, settings, plan, plan.golden.digest()):
        stored = store.releases.scorecard(active.name)
        if stored is not None:
            say(f"baseline: the stored scorecard of {active.name}")
            card: dict[str, Any] = json.loads(stored)
            return card, False
    return score(store, active, base, plan, out / active.name, say), True


def run_gate(
    store: Store, candidate: Release, active: Release, base: Settings, out: Path, say: Say
) -> GateRun:
    """Score ``candidate`` against ``active``; record the verdict on the candidate; write its
    scorecard (with the gate) to ``out/<candidate>/scorecard.{json,md}``.

    Raises:
        InvalidInput: a bad gate setting, or the stored baseline cannot be compared.
        VoxlineError: an engine could not start.
    """
    plan = GatePlan.of(base)
    baseline, rescored = baseline_of(store, active, base, plan, out, say)
    card = score(store, candidate, base, plan, out / candidate.name, say)
    verdict = gate.check(card, baseline)
    card["gate"] = gate.as_json(verdict, f"release {active.name}")
    write_json(card, out / candidate.name / "scorecard.json")
    write_markdown(card, out / candidate.name / "scorecard.md")
    store.releases.record_gate(
        candidate.name,
        {
            "against": active.name,
            "passed": verdict.passed,
            "failures": [gate.describe(d) for d in verdict.failures],
            "warnings": list(verdict.warnings),
            "suites": list(plan.suites),
            "quick": plan.quick,
        },
    )
    return GateRun(card, baseline, verdict, active.name, rescored)
