"""The canary's watch: live turns of the canary and of the active release, compared.

While a canary runs, the server counts each voice turn (a realtime response, a ``/v1/turns``
call) per release from the moment this server started the canary: whether it failed, whether a
stage fell back to another backend, and its voice-to-voice latency. ``verdict`` compares the
canary with the active release once both have ``canary_min_turns``; a reason comes back when the
canary is worse past a threshold (``VOXLINE_RELEASE__CANARY_*``), and the server then rolls it
back in the store with that reason.

Each replica judges what it served itself (no cross-replica sums): with a canary at 10% a
replica needs ten times ``canary_min_turns`` turns to judge. Cancelled responses (barge-in)
are neither failures nor successes and are not counted; a client's own mistakes never reach
here.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from pipeline.settings import ReleaseSettings

Outcome = Literal["completed", "failed"]

_V2V_KEPT = 1000  # most recent V2V samples kept per release


@dataclass(slots=True)
class TurnStats:
    """One release's turns since the canary started."""

    turns: int = 0
    failed: int = 0
    fallbacks: int = 0
    v2v_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_V2V_KEPT))

    def add(self, outcome: Outcome, *, fallback: bool, v2v_ms: float | None) -> None:
        """Count one finished turn."""
        self.turns += 1
        self.failed += outcome == "failed"
        self.fallbacks += fallback
        if v2v_ms is not None and outcome == "completed":
            self.v2v_ms.append(v2v_ms)

    @property
    def error_rate(self) -> float:
        """Failed turns / turns."""
        return self.failed / self.turns if self.turns else 0.0

    @property
    def fallback_rate(self) -> float:
        """Turns with a fallback / turns."""
        return self.fallbacks / self.turns if self.turns else 0.0

    def v2v_p50(self) -> float | None:
        """Median V2V of the completed turns, in ms."""
        return statistics.median(self.v2v_ms) if self.v2v_ms else None

    def as_json(self) -> dict[str, float | int | None]:
        """For logs and the release's history."""
        p50 = self.v2v_p50()
        return {
            "turns": self.turns,
            "error_rate": round(self.error_rate, 4),
            "fallback_rate": round(self.fallback_rate, 4),
            "v2v_p50_ms": None if p50 is None else round(p50, 1),
        }


def verdict(canary: TurnStats, active: TurnStats, cfg: ReleaseSettings) -> str | None:
    """Why the canary must be rolled back, or ``None`` (healthy, or too few turns to say)."""
    if canary.turns < cfg.canary_min_turns or active.turns < cfg.canary_min_turns:
        return None
    sample = f"({canary.turns} canary turns, {active.turns} active)"
    if canary.error_rate - active.error_rate > cfg.canary_max_error_rate_increase:
        return (
            f"error rate {canary.error_rate:.2f} vs {active.error_rate:.2f} on the active "
            f"release, more than +{cfg.canary_max_error_rate_increase:.2f} {sample}"
        )
    if canary.fallback_rate - active.fallback_rate > cfg.canary_max_fallback_rate_increase:
        return (
            f"fallback rate {canary.fallback_rate:.2f} vs {active.fallback_rate:.2f} on the "
            f"active release, more than +{cfg.canary_max_fallback_rate_increase:.2f} {sample}"
        )
    mine, theirs = canary.v2v_p50(), active.v2v_p50()
    if (
        mine is not None
        and theirs is not None
        and len(canary.v2v_ms) >= cfg.canary_min_turns
        and len(active.v2v_ms) >= cfg.canary_min_turns
        and mine > theirs * cfg.canary_max_v2v_ratio
        and mine - theirs >= cfg.canary_v2v_floor_ms
    ):
        return (
            f"V2V p50 {mine:.0f} ms vs {theirs:.0f} ms on the active release, more than "
            f"{cfg.canary_max_v2v_ratio:g}x {sample}"
        )
    return None
