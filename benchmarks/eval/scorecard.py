"""The scorecard: what one ``voxline eval`` run measured, and what produced it.

``scorecard.json`` (``schema`` ``voxline.scorecard``, ``schema_version`` 1)::

    schema, schema_version
    created          ISO 8601 UTC time the run finished
    command          the command line
    quick            whether the quick subsets ran (a quick card is never gated against a full one)
    release          the release it scores (null: the current settings; `voxline release promote`
                     names the release: docs/releases.md)
    producer         models{stt|llm|tts|embedder: {engine, ref, device}}, prompt_sha256,
                     settings_sha256, voxline version, git commit, environment
    golden           {dir, sha256}: the golden data it was computed on
    suites           {suite: {status: ok|skipped|error, reason, seconds,
                      metrics{name: {value, direction: higher|lower, tolerance, n, unit}},
                      budgets (latency only), details{...per item...}}}

A metric's ``tolerance`` is in its own unit: how much worse than a baseline it may get before
the gate calls it a regression (``value > baseline + tolerance`` for ``lower`` metrics). Names
are ``wer``, ``cer``, and per condition ``wer:real``, ``wer:noise=pink-10db``...
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import InvalidInput

SCHEMA = "voxline.scorecard"
SCHEMA_VERSION = 1

Direction = Literal["higher", "lower"]
Status = Literal["ok", "skipped", "error"]
SUITES: tuple[str, ...] = ("stt", "tts", "answers", "rag", "latency")
"""Every suite, in the order they run and are reported."""

RATE_TOLERANCE = 0.02
"""Least tolerance of a rate metric (WER, accuracy...): 2 points absolute."""
LATENCY_TOLERANCE = 0.15
"""Tolerance of a latency metric: 15% of its value..."""
LATENCY_FLOOR_MS = 25.0
"""...and at least 25 ms (a 40 ms stage must not fail on 8 ms of noise)."""


@dataclass(frozen=True, slots=True)
class Metric:
    """One scored number.

    Attributes:
        value: the score.
        direction: ``higher`` or ``lower`` is better.
        tolerance: how much worse than a baseline it may get, in its own unit.
        n: how many items it was computed over.
        unit: ``ratio`` (0-1), ``ms``, ``s``...
    """

    value: float
    direction: Direction
    tolerance: float
    n: int | None = None
    unit: str = "ratio"

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape."""
        return asdict(self)


def rate(value: float, n: int, direction: Direction, *, flip_one: bool = True) -> Metric:
    """A 0-1 rate over ``n`` items. With ``flip_one`` the tolerance lets one item of ``n`` change
    (a seeded model may still word one reply differently on another CPU)."""
    tolerance = max(RATE_TOLERANCE, 1.0 / n) if flip_one and n else RATE_TOLERANCE
    return Metric(round(value, 4), direction, round(tolerance, 4), n)


def error_rate(value: float, n: int, words: int, *, overall: bool) -> Metric:
    """A WER or CER over ``n`` utterances of ``words`` reference words: 1 point absolute overall
    (issue 11's guard), 2 per condition, and never less than one word's edit in ``words``."""
    base = 0.01 if overall else RATE_TOLERANCE
    tolerance = max(base, 1.0 / words) if words else base
    return Metric(round(value, 4), "lower", round(tolerance, 4), n)


def latency(value_ms: float, n: int) -> Metric:
    """A latency percentile in milliseconds."""
    tolerance = max(LATENCY_FLOOR_MS, LATENCY_TOLERANCE * value_ms)
    return Metric(round(value_ms, 1), "lower", round(tolerance, 1), n, "ms")


@dataclass(slots=True)
class SuiteResult:
    """What one suite produced.

    Attributes:
        name: the suite.
        status: ``ok``, ``skipped`` (cannot run here, e.g. no knowledge base) or ``error``.
        reason: why it was skipped or failed.
        metrics: name -> metric.
        details: per-item results and anything else a reader wants (transcripts, replies).
        budgets: latency only: per metric, the budget and whether it was met.
        seconds: how long the suite took.
    """

    name: str
    status: Status = "ok"
    reason: str | None = None
    metrics: dict[str, Metric] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    budgets: dict[str, Any] | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape (see the module docstring)."""
        out: dict[str, Any] = {
            "status": self.status,
            "reason": self.reason,
            "seconds": round(self.seconds, 2),
            "metrics": {k: m.as_dict() for k, m in self.metrics.items()},
            "details": self.details,
        }
        if self.budgets is not None:
            out["budgets"] = self.budgets
        return out


def build(
    suites: list[SuiteResult],
    *,
    producer: dict[str, Any],
    golden: dict[str, Any],
    quick: bool,
    command: str,
    release: str | None = None,
) -> dict[str, Any]:
    """The scorecard object of a finished run."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "quick": quick,
        "release": release,
        "producer": producer,
        "golden": golden,
        "suites": {s.name: s.as_dict() for s in suites},
    }


def write_json(card: dict[str, Any], path: Path) -> None:
    """Write ``scorecard.json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=2, default=str) + "\n", encoding="utf-8")


def load(path: Path) -> dict[str, Any]:
    """Read a scorecard.

    Raises:
        InvalidInput: missing, not JSON, or not a voxline scorecard.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path}: cannot read the scorecard: {exc}", param="baseline") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise InvalidInput(f"{path}: not a voxline scorecard", param="baseline")
    return data


def metrics_of(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every metric of a scorecard by its full name, ``suite.metric``."""
    return {
        f"{suite}.{name}": metric
        for suite, result in card.get("suites", {}).items()
        for name, metric in (result.get("metrics") or {}).items()
    }


def fmt(value: float | None, unit: str) -> str:
    """A metric value as the tables show it."""
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.0f} ms"
    return f"{value:.3f}" if unit == "ratio" else f"{value:.3g} {unit}"


def markdown(card: dict[str, Any], plots: list[Path] | None = None) -> str:
    """The ``scorecard.md`` text."""
    from benchmarks.eval.gate import gate_lines

    producer = card["producer"]
    lines = [
        "# voxline scorecard",
        "",
        f"{card['created']} — `{card['command']}` — "
        f"{'quick subsets' if card['quick'] else 'full sets'}, release: {card['release'] or '-'}",
        "",
        "| what | value |",
        "|---|---|",
    ]
    for stage, model in producer.get("models", {}).items():
        lines.append(f"| {stage} | {model.get('engine')} `{model.get('ref')}` |")
    lines += [
        f"| system prompt sha256 | `{producer.get('prompt_sha256', '-')[:16]}` |",
        f"| settings sha256 | `{producer.get('settings_sha256', '-')[:16]}` |",
        f"| golden data sha256 | `{card['golden'].get('sha256', '-')[:16]}` |",
        f"| machine | {producer.get('environment', {}).get('cpu', '-')}, "
        f"{producer.get('environment', {}).get('cores', '-')} cores |",
    ]
    for name, suite in card["suites"].items():
        lines += ["", f"## {name}", ""]
        if suite["status"] != "ok":
            lines += [f"**{suite['status']}**: {suite['reason']}"]
            continue
        lines += [
            f"{suite['seconds']:.0f} s.",
            "",
            "| metric | value | better | tolerance | n |",
            "|---|---:|---|---:|---:|",
        ]
        for metric, m in suite["metrics"].items():
            lines.append(
                f"| {metric} | {fmt(m['value'], m['unit'])} | {m['direction']} | "
                f"{fmt(m['tolerance'], m['unit'])} | {m['n'] if m['n'] is not None else '-'} |"
            )
        if suite.get("budgets"):
            lines += ["", "| budget | value | budget | met |", "|---|---:|---:|---|"]
            for metric, b in suite["budgets"].items():
                lines.append(
                    f"| {metric} | {fmt(b['value'], 'ms')} | {fmt(b['budget'], 'ms')} | "
                    f"{'yes' if b['met'] else '**no**'} |"
                )
    if card.get("gate"):
        lines += ["", "## Gate", "", *gate_lines(card["gate"])]
    if plots:
        lines += ["", "## Plots", "", *(f"![{p.stem}]({p.name})" for p in plots)]
    return "\n".join(lines) + "\n"


def write_markdown(card: dict[str, Any], path: Path, plots: list[Path] | None = None) -> None:
    """Write ``scorecard.md``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(card, plots), encoding="utf-8")
