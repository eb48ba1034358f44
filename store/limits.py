"""Rate limits: an atomic "check and count" per scope, shared by every process on the database.

The algorithm is GCRA (the generic cell rate algorithm, a leaky bucket kept as one number):
with ``limit`` requests per ``window_s`` each request advances a *theoretical arrival time*
(TAT) by ``window_s / limit``, and a request is allowed when that leaves the TAT at most
``window_s`` ahead of now. It allows a burst of ``limit`` then a steady ``limit`` per window,
with none of a fixed window's double burst at the boundary, and the state is one row per
scope. The check and the count are one conditional upsert (``INSERT ... ON CONFLICT DO
UPDATE ... WHERE allowed RETURNING``): Postgres locks the row for its duration and SQLite runs
it under its write lock, so two server processes sharing a database enforce one limit between
them without a read-modify-write race.

The decision carries what OpenAI's ``x-ratelimit-*`` headers and ``Retry-After`` need.
Time comes from the caller's clock (replicas are expected to run NTP): sub-second skew
between replicas only shifts when a request fits by that much.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from pipeline.errors import InvalidInput
from store.database import Database
from store.schema import rate_limits

_EPSILON = 1e-9  # float slack: a request landing exactly on the boundary fits


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The outcome of one :meth:`RateLimiter.hit`."""

    allowed: bool
    limit: int
    """Requests (or units of cost) per window: ``x-ratelimit-limit-*``."""
    remaining: int
    """What could still be spent right now: ``x-ratelimit-remaining-*``."""
    reset_s: float
    """Seconds until the bucket is full again: ``x-ratelimit-reset-*``."""
    retry_after_s: float
    """Seconds until this request would be allowed (0 when it was): ``Retry-After``."""


class RateLimiter:
    """Per-scope rate limits over a sliding window (GCRA).

    Args:
        db: The database.
        clock: Unix time source.
    """

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def hit(self, scope: str, limit: int, window_s: float = 60.0, cost: int = 1) -> RateDecision:
        """Count ``cost`` against ``scope`` if that stays within ``limit`` per ``window_s``.

        Args:
            scope: What is limited, e.g. ``"rpm:key_ab12"`` or ``"tpm:key_ab12"``.
            limit: Units allowed per window (0 refuses everything).
            window_s: The window in seconds (60 for per-minute limits).
            cost: Units this request spends (1 for a request; tokens for a token limit).

        Raises:
            InvalidInput: A negative limit or cost, or a non-positive window.
        """
        if limit < 0 or cost < 0 or not window_s > 0:
            raise InvalidInput("rate limit, cost and window must be positive", code="bad_limit")
        now = self._clock()
        if cost > limit or limit == 0:  # can never fit: refuse without writing
            return RateDecision(False, limit, 0, 0.0, math.inf)
        interval = window_s / limit
        step = cost * interval
        table = rate_limits
        start = sa.case((table.c.tat > now, table.c.tat), else_=now)
        query = (
            self._db.upsert(table)
            .values(scope=scope, tat=now + step)
            .on_conflict_do_update(
                index_elements=[table.c.scope],
                set_={"tat": start + step},
                where=(start + step - now) <= window_s + _EPSILON,
            )
            .returning(table.c.tat)
        )
        with self._db.write() as conn:
            tat = conn.execute(query).scalar()
            if tat is not None:
                ahead = tat - now
                remaining = math.floor((window_s - ahead) / interval + _EPSILON)
                return RateDecision(True, limit, remaining, ahead, 0.0)
            stored = conn.execute(sa.select(table.c.tat).where(table.c.scope == scope)).scalar()
        ahead = max(float(stored or now) - now, 0.0)
        retry = max(ahead + step - window_s, 0.0)
        remaining = max(math.floor((window_s - ahead) / interval + _EPSILON), 0)
        return RateDecision(False, limit, remaining, ahead, retry)

    def peek(self, scope: str, limit: int, window_s: float = 60.0) -> RateDecision:
        """What :meth:`hit` would report for a zero-cost request, without counting anything
        (for headers on responses that are not themselves limited)."""
        if limit <= 0 or not window_s > 0:
            return RateDecision(limit > 0, max(limit, 0), 0, 0.0, 0.0)
        now = self._clock()
        with self._db.read() as conn:
            stored = conn.execute(
                sa.select(rate_limits.c.tat).where(rate_limits.c.scope == scope)
            ).scalar()
        ahead = max(float(stored or now) - now, 0.0)
        interval = window_s / limit
        remaining = max(math.floor((window_s - ahead) / interval + _EPSILON), 0)
        return RateDecision(True, limit, remaining, ahead, 0.0)

    def purge(self) -> int:
        """Delete scopes whose bucket is full again (a missing row means the same)."""
        with self._db.write() as conn:
            return int(
                conn.execute(
                    rate_limits.delete().where(rate_limits.c.tat <= self._clock())
                ).rowcount
            )
