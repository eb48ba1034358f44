"""Usage totals per subject (an API key) per UTC day and month, and quotas checked against them.

Every addition is one atomic upsert per period row (``SET tokens = tokens + :n``), never a
read-modify-write, so concurrent requests in several server processes all count. A quota
check reads the day and month rows; :meth:`Usage.add_within` is the atomic "check and count"
for amounts known up front (it locks both rows, checks, then adds, in one transaction).

Which period each quota reads: ``tokens_per_day`` and ``audio_seconds_per_day`` the UTC day,
``usd_per_month`` the UTC calendar month (as :class:`store.keys.KeyLimits` names them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from store.database import Database
from store.keys import KeyLimits
from store.schema import usage_totals

_METRICS = ("requests", "tokens", "audio_seconds", "usd")


@dataclass(frozen=True, slots=True)
class UsageAmounts:
    """Amounts of usage (added, or summed over a period)."""

    requests: int = 0
    tokens: int = 0
    audio_seconds: float = 0.0
    usd: float = 0.0

    def plus(self, other: UsageAmounts) -> UsageAmounts:
        """These amounts with ``other`` added."""
        return UsageAmounts(
            self.requests + other.requests,
            self.tokens + other.tokens,
            self.audio_seconds + other.audio_seconds,
            self.usd + other.usd,
        )


@dataclass(frozen=True, slots=True)
class UsagePeriod:
    """One subject's totals over one period."""

    subject: str
    period: str
    """UTC day ``YYYY-MM-DD`` or month ``YYYY-MM``."""
    amounts: UsageAmounts


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    """Whether a subject is within its quotas; names the first one exceeded."""

    allowed: bool
    quota: str | None = None
    """The exceeded quota's name in :class:`KeyLimits` (e.g. ``"tokens_per_day"``)."""
    limit: float = 0.0
    used: float = 0.0
    reset_s: float = 0.0
    """Seconds until the exceeded quota's period ends (UTC midnight or month start)."""


def periods(at: float) -> tuple[str, str, float, float]:
    """The UTC day and month of ``at``, and the seconds until each ends."""
    moment = datetime.fromtimestamp(at, UTC)
    day_start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    next_day = day_start + timedelta(days=1)
    first = day_start.replace(day=1)
    next_month = (first + timedelta(days=32)).replace(day=1)
    return (
        moment.strftime("%Y-%m-%d"),
        moment.strftime("%Y-%m"),
        next_day.timestamp() - at,
        next_month.timestamp() - at,
    )


def _amounts(row: Any) -> UsageAmounts:
    if row is None:
        return UsageAmounts()
    return UsageAmounts(int(row.requests), int(row.tokens), row.audio_seconds, row.usd)


def _quotas(
    limits: KeyLimits, day: UsageAmounts, month: UsageAmounts, adding: UsageAmounts
) -> Iterator[tuple[str, float | None, float, float, str]]:
    """(quota name, its limit, what is used, what ``adding`` adds, its period) per quota."""
    yield "tokens_per_day", limits.tokens_per_day, day.tokens, adding.tokens, "day"
    yield (
        "audio_seconds_per_day",
        limits.audio_seconds_per_day,
        day.audio_seconds,
        adding.audio_seconds,
        "day",
    )
    yield "usd_per_month", limits.usd_per_month, month.usd, adding.usd, "month"


class Usage:
    """Additive usage counters and quota checks.

    Args:
        db: The database.
        clock: Unix time source.
    """

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def add(self, subject: str, amounts: UsageAmounts) -> None:
        """Add ``amounts`` to the subject's current day and month."""
        day, month, _, _ = periods(self._clock())
        with self._db.write() as conn:
            for period in (day, month):
                self._increment(conn, subject, period, amounts)

    def day(self, subject: str) -> UsageAmounts:
        """The subject's totals for the current UTC day."""
        return self._period(subject, periods(self._clock())[0])

    def month(self, subject: str) -> UsageAmounts:
        """The subject's totals for the current UTC month."""
        return self._period(subject, periods(self._clock())[1])

    def history(self, subject: str | None = None, *, since: str = "") -> list[UsagePeriod]:
        """Stored totals (days and months), by subject then period; ``since`` is a period
        string (``"2025-01"`` keeps January's month row and its days onwards)."""
        t = usage_totals
        query = sa.select(t).where(t.c.period >= since).order_by(t.c.subject, t.c.period)
        if subject is not None:
            query = query.where(t.c.subject == subject)
        with self._db.read() as conn:
            return [UsagePeriod(r.subject, r.period, _amounts(r)) for r in conn.execute(query)]

    def check(
        self, subject: str, limits: KeyLimits, adding: UsageAmounts | None = None
    ) -> QuotaDecision:
        """Whether ``adding`` (default: nothing) fits the subject's quotas now. A quota that is
        fully spent refuses even an empty addition (the request would spend more)."""
        day, month, _, _ = periods(self._clock())
        with self._db.read() as conn:
            day_used = self._read(conn, subject, day)
            month_used = self._read(conn, subject, month)
        return self._decide(limits, day_used, month_used, adding or UsageAmounts())

    def add_within(self, subject: str, amounts: UsageAmounts, limits: KeyLimits) -> QuotaDecision:
        """Add ``amounts`` only if the result stays within ``limits``: atomic across processes
        (both period rows are locked for the check and the addition)."""
        day, month, _, _ = periods(self._clock())
        t = usage_totals
        with self._db.write() as conn:
            for period in (day, month):
                conn.execute(
                    self._db.upsert(t)
                    .values(subject=subject, period=period)
                    .on_conflict_do_nothing(index_elements=[t.c.subject, t.c.period])
                )
            rows = {
                r.period: r
                for r in conn.execute(
                    sa.select(t)
                    .where(t.c.subject == subject, t.c.period.in_([day, month]))
                    .with_for_update()  # Postgres row locks; SQLite holds its write lock
                )
            }
            decision = self._decide(
                limits, _amounts(rows.get(day)), _amounts(rows.get(month)), amounts
            )
            if decision.allowed:
                for period in (day, month):
                    self._increment(conn, subject, period, amounts)
        return decision

    def _decide(
        self, limits: KeyLimits, day: UsageAmounts, month: UsageAmounts, adding: UsageAmounts
    ) -> QuotaDecision:
        _, _, day_left, month_left = periods(self._clock())
        for name, limit, used, extra, period in _quotas(limits, day, month, adding):
            if limit is None:
                continue
            if used >= limit or used + extra > limit:
                reset = day_left if period == "day" else month_left
                return QuotaDecision(False, name, float(limit), float(used), reset)
        return QuotaDecision(True)

    def _period(self, subject: str, period: str) -> UsageAmounts:
        with self._db.read() as conn:
            return self._read(conn, subject, period)

    @staticmethod
    def _read(conn: Connection, subject: str, period: str) -> UsageAmounts:
        t = usage_totals
        return _amounts(
            conn.execute(sa.select(t).where(t.c.subject == subject, t.c.period == period)).first()
        )

    def _increment(
        self, conn: Connection, subject: str, period: str, amounts: UsageAmounts
    ) -> None:
        t = usage_totals
        values = {m: getattr(amounts, m) for m in _METRICS}
        conn.execute(
            self._db.upsert(t)
            .values(subject=subject, period=period, **values)
            .on_conflict_do_update(
                index_elements=[t.c.subject, t.c.period],
                set_={m: t.c[m] + values[m] for m in _METRICS},
            )
        )
