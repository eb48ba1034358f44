"""The values a fallback chain is configured with and reports: its policy, and per call which
backend served and every switch.

Chain calls run concurrently (two sessions, the phrases of one reply), so "the backend that served
the last call" cannot be state on the chain. Each call instead produces one :class:`FallbackReport`
and hands it to the collector of the context it runs in: wrap a unit of work (a turn, a response,
a request) in ``with collect_reports() as reports:`` and every chain call made inside it, in tasks
created inside it too, lands in ``reports``. A context variable carries the collector, and asyncio
copies the context into every task it creates, so collectors of concurrent turns never mix.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from pipeline.errors import Stage


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    """When a chain gives up on a backend, and how it brings it back.

    Attributes:
        first_output_timeout_s: Seconds a backend may take to its first item.
        gap_timeout_s: Seconds a backend may take between two items.
        first_output_timeout_per_audio_s: STT only: seconds added to the first-output deadline
            per second of input audio (an engine that does not stream partials answers only
            after the whole clip).
        failure_threshold: Consecutive failures that open a backend's breaker.
        probe_interval_s: Seconds between health probes of an open backend.
        probe_timeout_s: Seconds one probe may take (a cold start may load weights).
        trial_interval_s: Seconds an open breaker turns calls away before one real call may try
            the backend (half-open) whatever its probes say; longer than the probe interval,
            as that trial costs a real call a failed attempt when the backend is still down.
        first_output_budget_s: Rolling p95 time to first output above which a backend is tried
            after the others for ``trial_interval_s`` (``None``: never demoted).
        latency_window: Time-to-first-output samples kept per backend.
        latency_min_samples: Samples needed before the p95 may demote a backend.
    """

    first_output_timeout_s: float = 10.0
    gap_timeout_s: float = 10.0
    first_output_timeout_per_audio_s: float = 0.0
    failure_threshold: int = 3
    probe_interval_s: float = 15.0
    probe_timeout_s: float = 60.0
    trial_interval_s: float = 60.0
    first_output_budget_s: float | None = None
    latency_window: int = 50
    latency_min_samples: int = 10

    def __post_init__(self) -> None:
        positive = (
            "first_output_timeout_s",
            "gap_timeout_s",
            "probe_interval_s",
            "probe_timeout_s",
            "trial_interval_s",
        )
        if any(getattr(self, name) <= 0 for name in positive):
            raise ValueError(f"{', '.join(positive)} must be positive")
        if self.failure_threshold < 1 or self.latency_window < 1 or self.latency_min_samples < 1:
            raise ValueError("failure_threshold and the latency window sizes must be at least 1")


FallbackReason = Literal[
    "error",
    "first_output_timeout",
    "gap_timeout",
    "unusable_output",
    "circuit_open",
    "demoted",
    "overloaded",
]
"""Why a call left a backend. ``circuit_open``: skipped, its breaker is open; ``demoted``: tried
after the others, its p95 time to first output is over budget; ``overloaded``: its scheduler
refused the call (every slot busy, the queue full or too slow: not a failure)."""


@dataclass(frozen=True, slots=True)
class Fallback:
    """One switch away from a backend during a call.

    Attributes:
        from_backend: The backend given up on.
        to_backend: The backend tried next (``None``: none was left, the call failed).
        reason: Why (``circuit_open`` and ``demoted``: skipped or postponed without a try).
        error: Type name of the error, when there was one (never the message).
        after_output: Whether the consumer had already received output of this call.
    """

    from_backend: str
    to_backend: str | None
    reason: FallbackReason
    error: str | None = None
    after_output: bool = False


@dataclass(frozen=True, slots=True)
class StageFallback:
    """A switch, with the stage it happened in (for a turn's result, which spans stages)."""

    stage: Stage
    fallback: Fallback


@dataclass(frozen=True, slots=True)
class FallbackReport:
    """What one chain call did.

    Attributes:
        stage: The chain's stage.
        chain: The chain's name.
        served_by: The backend whose output ended the call (``None``: no backend finished it).
        fallbacks: Every switch, in order.
        error: Type name of the error the call ended with (``CancelledError`` when the consumer
            went away), ``None`` on success.
    """

    stage: Stage
    chain: str
    served_by: str | None
    fallbacks: tuple[Fallback, ...] = ()
    error: str | None = None


class FallbackReports:
    """The reports of the chain calls made inside one :func:`collect_reports` block."""

    def __init__(self, parent: FallbackReports | None = None) -> None:
        self.reports: list[FallbackReport] = []
        self._parent = parent

    def add(self, report: FallbackReport) -> None:
        """Record ``report`` here and in every enclosing collector."""
        self.reports.append(report)
        if self._parent is not None:
            self._parent.add(report)

    def served_by(self, stage: Stage) -> tuple[str, ...]:
        """The backends that served calls of ``stage``, first use first, without repeats (a
        turn's TTS makes one call per phrase, and phrases may be served by different backends)."""
        served = (r.served_by for r in self.reports if r.stage == stage and r.served_by)
        return tuple(dict.fromkeys(served))

    def backend(self, stage: Stage, default: str) -> str:
        """The backend(s) that served ``stage``, joined by ``+`` (``default``: no call was
        made through a chain, or none finished)."""
        return "+".join(self.served_by(stage)) or default

    def switches(self) -> tuple[StageFallback, ...]:
        """Every switch of every call, with its stage, in call order."""
        return tuple(StageFallback(r.stage, f) for r in self.reports for f in r.fallbacks)

    def fallbacks(self, stage: Stage | None = None) -> tuple[Fallback, ...]:
        """Every switch of the calls of ``stage`` (all stages when ``None``), in call order."""
        return tuple(f for r in self.reports if stage in (None, r.stage) for f in r.fallbacks)


_reports: contextvars.ContextVar[FallbackReports | None] = contextvars.ContextVar(
    "voxline_fallback_reports", default=None
)


@contextlib.contextmanager
def collect_reports() -> Iterator[FallbackReports]:
    """Collect the :class:`FallbackReport` of every chain call made in this block.

    Tasks created inside the block inherit the collector (even when they outlive the block);
    collectors nest, and an inner one also hands its reports to the outer one.
    """
    reports = FallbackReports(parent=_reports.get())
    token = _reports.set(reports)
    try:
        yield reports
    finally:
        _reports.reset(token)


def current_reports() -> FallbackReports | None:
    """The collector of the current context (``None`` outside any :func:`collect_reports`)."""
    return _reports.get()
