"""Per-key rate limits and quotas, and the OpenAI headers and events that report them.

- **Requests per minute** (``rpm``): every counted request (policy table) is one atomic GCRA
  hit in the store (``rpm:<key id>``), shared by every replica on the database. Over it: 429
  ``rate_limit_exceeded`` with ``Retry-After``. A realtime response counts as a request too, as
  with OpenAI.
- **Quotas** (tokens and audio seconds per UTC day, USD per UTC month): read from the usage
  totals the accounting path adds to (``store.usage``). A request that would do engine work is
  refused with 429 ``insufficient_quota`` once one is spent, and an upload whose decoded length
  alone would pass the audio quota is refused before the engine runs (``require_quota``).
  Work already started finishes and is billed: a quota may be overshot by one request.
- **Concurrent realtime sessions** (``max_sessions``) are leases (``sessions:<key id>``),
  renewed while the socket is open, so replicas share the count and a crashed replica's
  sessions lapse after ``edge.session_lease_ttl_s``.

Every response to a key with limits carries OpenAI's ``x-ratelimit-{limit,remaining,reset}-
requests`` headers (its rpm) and ``-tokens`` headers (its daily token quota: the window is the
UTC day, where OpenAI's is a minute). A realtime session gets the same numbers as
``rate_limits.updated`` events.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from server.edge.policy import Rule
from server.edge.refusal import Header, Refusal
from server.identity import Identity, current
from store import KeyLimits, QuotaDecision, RateDecision, Store, UsageAmounts
from store.usage import periods

RPM_WINDOW_S = 60.0


def rpm_scope(key_id: str) -> str:
    """The store's rate-limit scope of a key's requests per minute."""
    return f"rpm:{key_id}"


def sessions_scope(key_id: str) -> str:
    """The store's lease scope of a key's realtime sessions."""
    return f"sessions:{key_id}"


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: ``20ms``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


def _retry_after(seconds: float) -> Header:
    return (b"retry-after", str(max(1, math.ceil(seconds))).encode())


@dataclass(frozen=True, slots=True)
class Window:
    """One limit's state for headers and ``rate_limits.updated``."""

    name: str
    """``requests`` or ``tokens``."""
    limit: int
    remaining: int
    reset_s: float

    def headers(self) -> list[Header]:
        """``x-ratelimit-{limit,remaining,reset}-<name>``."""
        return [
            (f"x-ratelimit-limit-{self.name}".encode(), str(self.limit).encode()),
            (f"x-ratelimit-remaining-{self.name}".encode(), str(self.remaining).encode()),
            (f"x-ratelimit-reset-{self.name}".encode(), duration(self.reset_s).encode()),
        ]

    def event(self) -> dict[str, Any]:
        """One entry of a realtime ``rate_limits.updated`` event."""
        return {
            "name": self.name,
            "limit": self.limit,
            "remaining": self.remaining,
            "reset_seconds": round(self.reset_s, 3),
        }


def _requests(decision: RateDecision) -> Window:
    return Window("requests", decision.limit, decision.remaining, decision.reset_s)


def _tokens(store: Store, key_id: str, limits: KeyLimits) -> Window | None:
    if limits.tokens_per_day is None:
        return None
    used = store.usage.day(key_id).tokens
    reset = periods(store.clock())[2]  # the UTC day's end
    return Window("tokens", limits.tokens_per_day, max(limits.tokens_per_day - used, 0), reset)


def over_quota(decision: QuotaDecision) -> Refusal:
    """429 ``insufficient_quota`` for a spent quota."""
    assert decision.quota is not None
    return Refusal(
        429,
        f"You exceeded your current quota ({decision.quota}: {decision.used:g} of"
        f" {decision.limit:g} used); it resets in {duration(decision.reset_s)}.",
        "insufficient_quota",
        type="insufficient_quota",
        headers=[_retry_after(decision.reset_s)],
    )


def over_rate(decision: RateDecision, what: str = "requests per min (RPM)") -> Refusal:
    """429 ``rate_limit_exceeded`` for a limit hit."""
    wait = decision.retry_after_s
    when = "" if math.isinf(wait) else f" Please try again in {duration(wait)}."
    return Refusal(
        429,
        f"Rate limit reached on {what}: limit {decision.limit}.{when}",
        "rate_limit_exceeded",
        type="requests",
        headers=[_retry_after(wait if not math.isinf(wait) else RPM_WINDOW_S)],
    )


def admit(store: Store, who: Identity, rule: Rule) -> tuple[Refusal | None, list[Header]]:
    """Check ``who``'s quotas (routes that spend) then count the request against its rpm
    (counted routes). Blocking (store calls). Returns the refusal, if any, and the rate-limit
    headers every response to this request carries."""
    limits = who.limits
    headers: list[Header] = []
    if (tokens := _tokens(store, who.key_id, limits)) is not None:
        headers += tokens.headers()
    if rule.spends:
        quota = store.usage.check(who.key_id, limits)
        if not quota.allowed:
            return over_quota(quota).with_headers(headers), headers
    if limits.rpm is None:
        return None, headers
    scope = rpm_scope(who.key_id)
    if not rule.counted:
        decision = store.rate_limits.peek(scope, limits.rpm, RPM_WINDOW_S)
        return None, headers + _requests(decision).headers()
    decision = store.rate_limits.hit(scope, limits.rpm, RPM_WINDOW_S)
    headers += _requests(decision).headers()
    return (None if decision.allowed else over_rate(decision).with_headers(headers)), headers


def windows(store: Store, who: Identity) -> list[Window]:
    """``who``'s request and token windows now, without counting anything (blocking)."""
    out: list[Window] = []
    if who.limits.rpm is not None:
        out.append(_requests(store.rate_limits.peek(rpm_scope(who.key_id), who.limits.rpm)))
    if (tokens := _tokens(store, who.key_id, who.limits)) is not None:
        out.append(tokens)
    return out


class OverLimit(Exception):
    """Raised by a route that finds a quota spent before its engine work (rendered by the
    handler ``server.edge.install_handlers`` registers)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


async def require_quota(store: Store, adding: UsageAmounts) -> None:
    """Refuse (``OverLimit``) when ``adding`` would pass one of the current caller's quotas:
    the check a route makes once it knows what it is about to spend (an upload's decoded
    seconds), before the engine runs. Nothing to check when auth is off.

    Raises:
        OverLimit: a quota would be passed (429 ``insufficient_quota``).
    """
    who = current()
    if who is None:
        return
    decision = await asyncio.to_thread(store.usage.check, who.key_id, who.limits, adding)
    if not decision.allowed:
        raise OverLimit(over_quota(decision))
