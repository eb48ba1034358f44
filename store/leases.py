"""Leases: at most ``limit`` live holders per scope, each expiring unless renewed.

For anything counted while it lasts: a key's concurrent realtime sessions (scope
``sessions:<key id>``, one holder per session, ``limit`` = the key's ``max_sessions``), or a
job worker's claim on a job (scope ``job:<id>``, ``limit=1``). A holder that dies stops
renewing, and its lease lapses after ``ttl_s``: nothing stays counted forever after a crash.

Acquiring counts the live holders and inserts one, so two acquirers of one scope must not
interleave: SQLite's write transaction serializes them, and on Postgres the transaction
takes an advisory lock named after the scope (other scopes proceed in parallel).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from pipeline.errors import InvalidInput
from store.database import Database
from store.schema import leases


@dataclass(frozen=True, slots=True)
class Lease:
    """A live lease."""

    scope: str
    holder: str
    acquired_at: float
    expires_at: float


def _lease(row: Any) -> Lease:
    return Lease(row.scope, row.holder, row.acquired_at, row.expires_at)


class Leases:
    """Acquire, renew and release expiring leases.

    Args:
        db: The database.
        clock: Unix time source.
    """

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def acquire(self, scope: str, holder: str, *, ttl_s: float, limit: int = 1) -> Lease | None:
        """A lease on ``scope`` for ``holder``, or ``None`` when ``limit`` others hold one.

        A holder that already holds the scope gets its lease renewed (acquire is idempotent).

        Raises:
            InvalidInput: A non-positive ttl or a negative limit.
        """
        if not ttl_s > 0 or limit < 0:
            raise InvalidInput("a lease needs ttl_s > 0 and limit >= 0", code="bad_lease")
        now = self._clock()
        t = leases
        with self._db.write() as conn:
            self._db.lock(conn, "lease:" + scope)
            conn.execute(t.delete().where(t.c.scope == scope, t.c.expires_at <= now))
            held = conn.execute(
                t.update()
                .where(t.c.scope == scope, t.c.holder == holder)
                .values(expires_at=now + ttl_s)
                .returning(*t.c)
            ).first()
            if held is not None:
                return _lease(held)
            count = conn.execute(
                sa.select(sa.func.count()).select_from(t).where(t.c.scope == scope)
            ).scalar_one()
            if count >= limit:
                return None
            lease = Lease(scope, holder, now, now + ttl_s)
            conn.execute(
                t.insert().values(
                    scope=scope, holder=holder, acquired_at=now, expires_at=lease.expires_at
                )
            )
        return lease

    def renew(self, scope: str, holder: str, *, ttl_s: float) -> Lease | None:
        """Extend a live lease to ``ttl_s`` from now; ``None`` if it lapsed or was released
        (the holder must stop: someone else may hold it now)."""
        now = self._clock()
        t = leases
        with self._db.write() as conn:
            row = conn.execute(
                t.update()
                .where(t.c.scope == scope, t.c.holder == holder, t.c.expires_at > now)
                .values(expires_at=now + ttl_s)
                .returning(*t.c)
            ).first()
        return None if row is None else _lease(row)

    def release(self, scope: str, holder: str) -> bool:
        """Give a lease up; ``False`` if it was not held."""
        t = leases
        with self._db.write() as conn:
            done = conn.execute(t.delete().where(t.c.scope == scope, t.c.holder == holder)).rowcount
        return bool(done)

    def holders(self, scope: str) -> list[Lease]:
        """The live leases on ``scope``, oldest first."""
        t = leases
        query = (
            sa.select(t)
            .where(t.c.scope == scope, t.c.expires_at > self._clock())
            .order_by(t.c.acquired_at, t.c.holder)
        )
        with self._db.read() as conn:
            return [_lease(row) for row in conn.execute(query)]

    def count(self, scope: str) -> int:
        """How many live leases ``scope`` has."""
        t = leases
        query = (
            sa.select(sa.func.count())
            .select_from(t)
            .where(t.c.scope == scope, t.c.expires_at > self._clock())
        )
        with self._db.read() as conn:
            return int(conn.execute(query).scalar_one())

    def purge(self) -> int:
        """Delete every lapsed lease (they already count as nothing)."""
        with self._db.write() as conn:
            return int(
                conn.execute(leases.delete().where(leases.c.expires_at <= self._clock())).rowcount
            )
