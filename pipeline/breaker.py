"""Per-backend health for fallback chains: a circuit breaker plus a rolling first-output latency.

A backend that fails again and again (a GPU out of memory on every request, a hosted peer that is
down) must stop costing each call a failed attempt, and it must get traffic back by itself once it
heals, without a restart. The breaker is the classic three-state machine::

    closed --N consecutive failures--> open --retry_after_s passes, one call tries--> half_open
      ^                                  |                                              |
      +------ a success, or a probe -----+<------------- the trial call fails ---------+
              that succeeds                             (a success closes it)

While a breaker is open the chain skips its backend without waiting on it. A background probe
(owned by the chain) closes it as soon as a cheap health check passes. The half-open trial is the
safety net under the probe: once ``retry_after_s`` has passed, one real call may try the backend
whatever the probes say, so a health check that fails while real requests would succeed (a peer
without ``GET /models``) cannot keep a backend out for good. It is set longer than the probe
interval, because when the backend is really down that trial costs a real call a failed attempt.
A backend closed by a probe is on probation: its next failure opens it again at once, so a probe
that passes while real requests still fail costs one failed request, not N.

Latency demotion is the soft version of the same idea: a backend whose rolling p95 time to first
output exceeds its budget is tried after the others for a while (not skipped), then gets a fresh
window. Everything here runs on the event loop and takes a clock, so tests step time by
hand; nothing is locked.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

Clock = Callable[[], float]


class BreakerState(StrEnum):
    """Where a backend's circuit breaker stands."""

    CLOSED = "closed"
    """Healthy: every call may use it."""
    OPEN = "open"
    """Failing: calls skip it until a probe passes or ``retry_after_s`` has passed."""
    HALF_OPEN = "half_open"
    """One trial call is using it; the others still skip it."""


@dataclass(frozen=True, slots=True)
class BackendState:
    """One backend's health, as ``/readyz`` shows it.

    Attributes:
        name: The backend's name (e.g. ``whisper:cuda``).
        device: Where it runs (``cuda``, ``cpu``, ``remote``).
        state: Its breaker's state.
        consecutive_failures: Failures since its last success.
        last_error: Type name of its last failure (never the message: it may hold user text).
        demoted: Tried after the others because its p95 time to first output is over budget.
        p95_first_output_ms: Rolling p95 time to first output (``None`` before any sample).
        started: Whether its ``start()`` succeeded (a probe retries it when it did not).
        start_error: Why its last ``start()`` failed (the error's type and message: a missing
            checkout, driver or library; start-up errors hold no user text), ``None`` once
            started.
    """

    name: str
    device: str
    state: BreakerState
    consecutive_failures: int
    last_error: str | None
    demoted: bool
    p95_first_output_ms: float | None
    started: bool
    start_error: str | None = None


class CircuitBreaker:
    """Closed / open / half-open state of one backend.

    Args:
        threshold: Consecutive failures that open the breaker.
        retry_after_s: How long an open breaker turns every call away before one call may try.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(self, *, threshold: int, retry_after_s: float, clock: Clock = time.monotonic):
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.retry_after_s = retry_after_s
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self._opened_at = 0.0
        self._probation = False

    def try_acquire(self) -> bool:
        """Whether a call may use the backend now. Grants the single half-open trial when an open
        breaker's ``retry_after_s`` has passed; that call must end with ``record_success``,
        ``record_failure`` or ``release``."""
        if not self.would_admit():
            return False
        if self.state is BreakerState.OPEN:
            self.state = BreakerState.HALF_OPEN
        return True

    @property
    def is_closed(self) -> bool:
        """Whether the backend is considered healthy."""
        return self.state is BreakerState.CLOSED

    def would_admit(self) -> bool:
        """Whether ``try_acquire`` would let a call through now (without granting anything)."""
        if self.state is BreakerState.CLOSED:
            return True
        return (
            self.state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.retry_after_s
        )

    def record_success(self) -> None:
        """A call succeeded: close (also from open: a call that began before it opened proves
        the backend healthy now)."""
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self._probation = False

    def record_failure(self, error: str) -> None:
        """A call failed with an error of type name ``error``."""
        self.consecutive_failures += 1
        self.last_error = error
        if self.state is BreakerState.HALF_OPEN:
            self._open()
        elif self.state is BreakerState.CLOSED and (
            self._probation or self.consecutive_failures >= self.threshold
        ):
            self._open()

    def force_open(self, error: str) -> None:
        """Open at once: retrying this backend cannot help (it did not start, its weights did
        not load)."""
        self.consecutive_failures += 1
        self.last_error = error
        if self.state is not BreakerState.OPEN:
            self._open()

    def release(self) -> None:
        """A call ended with no verdict (cancelled, or the caller's own mistake): give the
        half-open trial back, so the next call may try at once."""
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.OPEN

    def probe_failed(self, error: str) -> None:
        """A background probe failed: stay open (the half-open trial is not postponed: the probe
        may be wrong)."""
        self.last_error = error

    def probe_succeeded(self) -> None:
        """A background probe passed: close, on probation (the next failure reopens at once)."""
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self._probation = True

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._probation = False


class LatencyWindow:
    """Rolling time-to-first-output samples of one backend, and its demotion.

    Args:
        budget_s: p95 above which the backend is demoted (``None``: never).
        size: Samples kept.
        min_samples: Samples needed before the p95 is trusted.
        demote_for_s: How long a demotion lasts; the window starts afresh afterwards.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        *,
        budget_s: float | None,
        size: int,
        min_samples: int,
        demote_for_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self.budget_s = budget_s
        self.min_samples = min_samples
        self.demote_for_s = demote_for_s
        self._clock = clock
        self._samples: deque[float] = deque(maxlen=size)
        self._demoted_until: float | None = None

    def add(self, seconds: float) -> bool:
        """Record one time to first output; returns whether this sample demoted the backend."""
        self._samples.append(seconds)
        if self.budget_s is None or self.demoted or len(self._samples) < self.min_samples:
            return False
        p95 = self.p95()
        if p95 is not None and p95 > self.budget_s:
            self._demoted_until = self._clock() + self.demote_for_s
            return True
        return False

    @property
    def demoted(self) -> bool:
        """Whether the backend is demoted now (an expired demotion clears the window)."""
        if self._demoted_until is None:
            return False
        if self._clock() < self._demoted_until:
            return True
        self._demoted_until = None
        self._samples.clear()  # its old samples would demote it again on the next call
        return False

    def p95(self) -> float | None:
        """The p95 of the window in seconds (nearest rank), ``None`` when empty."""
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
