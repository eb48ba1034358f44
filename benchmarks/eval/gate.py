"""Compare two scorecards metric by metric, and gate a candidate against a baseline.

``diff(baseline, current)`` returns one ``MetricDiff`` per metric of either card: its change,
whether that change is better or worse (each metric says which direction is better), and a
verdict. A metric *regresses* when it got worse by more than its tolerance (the baseline's
tolerance: the baseline states what it accepts). ``check`` turns the diff into the gate's
verdict: it fails on every regression, and on every metric the baseline had that the candidate
lost from a suite it ran (a suite that errored or was skipped cannot hide a regression); suites
the candidate did not run (``--suite``) are out of scope.

Two cards are only comparable when they share a schema version and a subset: a quick card
against a full one compares different items, and is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from benchmarks.eval.scorecard import SCHEMA_VERSION, fmt, metrics_of
from pipeline.errors import InvalidInput

Verdict = Literal["regressed", "worse", "same", "better", "missing", "new"]


@dataclass(frozen=True, slots=True)
class MetricDiff:
    """One metric in two scorecards.

    Attributes:
        name: ``suite.metric``.
        baseline, current: the values (``None`` where a card lacks the metric).
        delta: ``current - baseline``.
        direction: ``higher`` or ``lower`` is better.
        tolerance: the worsening allowed (the baseline's).
        unit: the metric's unit.
        verdict: ``regressed`` (worse past the tolerance), ``worse`` (within it), ``same``,
            ``better``, ``missing`` (the candidate lacks it), ``new`` (the baseline lacked it).
    """

    name: str
    baseline: float | None
    current: float | None
    delta: float | None
    direction: str
    tolerance: float | None
    unit: str
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class GateResult:
    """The gate's verdict: the failures (regressions and missing metrics), the full diff, and
    warnings that do not fail it (the golden data differ)."""

    failures: tuple[MetricDiff, ...]
    diffs: tuple[MetricDiff, ...]
    warnings: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """True when nothing regressed or went missing."""
        return not self.failures


def comparable(baseline: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse cards that cannot be compared.

    Raises:
        InvalidInput: another schema version, or a quick card against a full one.
    """
    versions = (baseline.get("schema_version"), current.get("schema_version"))
    if versions[0] != versions[1] or versions[1] != SCHEMA_VERSION:
        raise InvalidInput(
            f"scorecard schema versions differ (baseline {versions[0]}, current {versions[1]}): "
            "rerun the baseline",
            param="baseline",
        )
    if bool(baseline.get("quick")) != bool(current.get("quick")):
        kinds = ["quick" if c.get("quick") else "full" for c in (baseline, current)]
        raise InvalidInput(
            f"the baseline is a {kinds[0]} run and this one {kinds[1]}: they score different "
            "items; compare runs of the same kind",
            param="baseline",
        )


def _verdict(old: float, new: float, direction: str, tolerance: float) -> Verdict:
    worse_by = (new - old) if direction == "lower" else (old - new)
    if worse_by > tolerance + 1e-9:
        return "regressed"
    if worse_by > 1e-9:
        return "worse"
    return "better" if worse_by < -1e-9 else "same"


def diff(baseline: dict[str, Any], current: dict[str, Any]) -> list[MetricDiff]:
    """Every metric of either card, compared (baseline order first, then new metrics).

    Raises:
        InvalidInput: the cards are not comparable (see ``comparable``).
    """
    comparable(baseline, current)
    before, now = metrics_of(baseline), metrics_of(current)
    out: list[MetricDiff] = []
    for name in [*before, *(n for n in now if n not in before)]:
        old, new = before.get(name), now.get(name)
        ref = old or new
        assert ref is not None
        if old is None or new is None:
            out.append(
                MetricDiff(
                    name,
                    None if old is None else float(old["value"]),
                    None if new is None else float(new["value"]),
                    None,
                    ref["direction"],
                    None if old is None else float(old["tolerance"]),
                    ref.get("unit", ""),
                    "new" if old is None else "missing",
                )
            )
            continue
        a, b, tol = float(old["value"]), float(new["value"]), float(old["tolerance"])
        out.append(
            MetricDiff(
                name,
                a,
                b,
                round(b - a, 6),
                old["direction"],
                tol,
                old.get("unit", ""),
                _verdict(a, b, old["direction"], tol),
            )
        )
    return out


def check(current: dict[str, Any], baseline: dict[str, Any]) -> GateResult:
    """The gate: fail on each regressed metric and each metric lost from a suite that ran.

    Raises:
        InvalidInput: the cards are not comparable.
    """
    ran = set(current.get("suites", {}))
    diffs = tuple(diff(baseline, current))
    failures = tuple(
        d
        for d in diffs
        if d.verdict == "regressed" or (d.verdict == "missing" and d.name.split(".")[0] in ran)
    )
    warnings = []
    old, new = (c.get("golden", {}).get("sha256") for c in (baseline, current))
    if old != new:
        warnings.append(
            f"the golden data differ (sha256 {str(old)[:12]} vs {str(new)[:12]}): the metrics "
            "were computed on different items; rerun the baseline on these"
        )
    return GateResult(failures, diffs, tuple(warnings))


def describe(d: MetricDiff) -> str:
    """One line naming a failing metric: ``answers.contains_match: 0.425 -> 0.025 (-0.400,
    higher is better, tolerance 0.025)``."""
    if d.verdict == "missing":
        return f"{d.name}: {fmt(d.baseline, d.unit)} -> missing (its suite ran without it)"
    delta = "" if d.delta is None else f"{d.delta:+.3f}, "
    return (
        f"{d.name}: {fmt(d.baseline, d.unit)} -> {fmt(d.current, d.unit)} ({delta}"
        f"{d.direction} is better, tolerance {fmt(d.tolerance, d.unit)})"
    )


def as_json(result: GateResult, baseline: str) -> dict[str, Any]:
    """The ``gate`` object stored in the candidate's scorecard."""
    return {
        "baseline": baseline,
        "passed": result.passed,
        "failures": [asdict(d) for d in result.failures],
        "warnings": list(result.warnings),
        "compared": sum(d.verdict not in ("missing", "new") for d in result.diffs),
        "diff": [asdict(d) for d in result.diffs],
    }


def gate_lines(gate: dict[str, Any]) -> list[str]:
    """The gate's verdict and diff as Markdown lines."""
    verdict = "passed" if gate["passed"] else "FAILED"
    lines = [
        f"Against `{gate['baseline']}`: **{verdict}** ({gate['compared']} metrics compared).",
        *(f"\nWarning: {w}." for w in gate.get("warnings", [])),
        "",
        "| metric | baseline | now | change | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for d in gate["diff"]:
        change = "-" if d["delta"] is None else f"{d['delta']:+.4g}"
        mark = f"**{d['verdict']}**" if d["verdict"] in ("regressed", "missing") else d["verdict"]
        lines.append(
            f"| {d['name']} | {fmt(d['baseline'], d['unit'])} | {fmt(d['current'], d['unit'])} "
            f"| {change} | {mark} |"
        )
    return lines
