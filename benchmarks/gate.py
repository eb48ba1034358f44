"""The regression gate: fail a run whose latency or word error rate got worse than a baseline's.

Gated values, for every scenario present in both results files:

- latencies (metrics named ``*_ms``): ``p50`` and ``p95`` (a tail that grows is a regression even
  when the median holds);
- word error rates (metrics named ``wer`` or ``*_wer``): ``mean``, since most utterances have a
  WER of 0 and their median says nothing.

A value regresses when it exceeds ``baseline * (1 + tolerance) + floor``. The floor (1 ms, or 0.005
WER) keeps a near-zero baseline from failing on noise: 0.0 -> 0.001 WER is not "infinitely
worse". Throughputs, counts and real-time factors are reported but not gated.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import InvalidInput

LATENCY_FLOOR_MS = 1.0
WER_FLOOR = 0.005


@dataclass(frozen=True, slots=True)
class Regression:
    """One gated value that got worse past the tolerance.

    Attributes:
        path: where it lives in results.json, e.g. ``scenarios.turn.v2v_ms.p95``.
        baseline: its value in the baseline.
        current: its value now.
        change_pct: the relative change in percent (``None`` from a zero baseline).
    """

    path: str
    baseline: float
    current: float
    change_pct: float | None


@dataclass(frozen=True, slots=True)
class GateResult:
    """The verdict: regressions (empty: passed) and how many values were compared."""

    regressions: tuple[Regression, ...]
    compared: int
    missing: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """True when nothing regressed."""
        return not self.regressions


def is_latency(metric: str) -> bool:
    """Whether ``metric`` is a latency in milliseconds."""
    return metric.endswith("_ms")


def is_wer(metric: str) -> bool:
    """Whether ``metric`` is a word error rate."""
    return metric == "wer" or metric.endswith("_wer")


def gated_values(results: dict[str, Any]) -> dict[str, float]:
    """Every gated value of a results object, by its path."""
    values: dict[str, float] = {}
    for scenario, metrics in (results.get("scenarios") or {}).items():
        for metric, summary in metrics.items():
            if is_latency(metric):
                keys: tuple[str, ...] = ("p50", "p95")
            elif is_wer(metric):
                keys = ("mean",)
            else:
                continue
            for key in keys:
                if summary.get(key) is not None:
                    values[f"scenarios.{scenario}.{metric}.{key}"] = float(summary[key])
    return values


def check(
    current: dict[str, Any], baseline: dict[str, Any], max_regression_pct: float
) -> GateResult:
    """Compare ``current`` with ``baseline``.

    Raises:
        InvalidInput: a negative tolerance, or results of another schema version.
    """
    if max_regression_pct < 0:
        raise InvalidInput("--max-regression must not be negative", param="max_regression")
    if baseline.get("schema_version") != current.get("schema_version"):
        raise InvalidInput(
            f"the baseline has schema version {baseline.get('schema_version')}, these results "
            f"{current.get('schema_version')}: rerun the baseline",
            param="baseline",
        )
    now, before = gated_values(current), gated_values(baseline)
    tolerance = max_regression_pct / 100
    regressions = []
    for path, old in sorted(before.items()):
        if path not in now:
            continue
        new = now[path]
        floor = WER_FLOOR if is_wer(path.split(".")[-2]) else LATENCY_FLOOR_MS
        if new > old * (1 + tolerance) + floor:
            change = round((new - old) / old * 100, 1) if old else None
            regressions.append(Regression(path, old, new, change))
    missing = tuple(sorted(set(before) - set(now)))
    return GateResult(tuple(regressions), len(set(before) & set(now)), missing)


def load_results(path: Path) -> dict[str, Any]:
    """Read a results.json.

    Raises:
        InvalidInput: missing, not JSON, or not a voxline results object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path}: cannot read results: {exc}", param="baseline") from exc
    if not isinstance(data, dict) or "scenarios" not in data or "schema_version" not in data:
        raise InvalidInput(f"{path}: not a voxline results.json", param="baseline")
    return data


def as_json(result: GateResult, baseline: Path, max_regression_pct: float) -> dict[str, Any]:
    """The ``gate`` object stored in results.json."""
    return {
        "baseline": str(baseline),
        "max_regression_pct": max_regression_pct,
        "passed": result.passed,
        "compared": result.compared,
        "regressions": [asdict(r) for r in result.regressions],
        "missing": list(result.missing),
    }


def describe(regression: Regression, max_regression_pct: float) -> str:
    """One line naming the regressed value: ``scenarios.turn.v2v_ms.p95: 812 -> 1040 (+28.1%,
    tolerance 10%)``."""
    change = "from 0" if regression.change_pct is None else f"{regression.change_pct:+.1f}%"
    return (
        f"{regression.path}: {regression.baseline:.4g} -> {regression.current:.4g} "
        f"({change}, tolerance {max_regression_pct:g}%)"
    )
