"""The cost ledger's durable side: every charge one row, totals by key, day and backend.

``pipeline.ledger`` prices work and builds :class:`pipeline.ledger.Charge` values; this
repository stores them. Appending is one ``INSERT`` in its own transaction, so a charge is
either wholly in the database or not at all: a ``kill -9`` cannot tear it (the JSON-lines
file could). The ledger can take this as its sink::

    store.charges.append(charge, key_id=key.id, speculative=False)

and read its totals back with :meth:`Charges.totals`, :meth:`Charges.by_backend` and
:meth:`Charges.by_day`, which return the ledger's own :class:`pipeline.ledger.Totals` in the
shapes of the ledger's methods of the same names (plus filters by key, day and speculation).
A charge's UTC ``day`` is stored with it, so both dialects group it the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa

from pipeline.errors import Stage
from pipeline.ledger import Charge, Totals
from store.database import Database
from store.schema import charges


@dataclass(frozen=True, slots=True)
class StoredCharge:
    """A charge as stored: the ledger's charge, who it was for, and whether it was speculative
    work (a realtime reply started before the end of the user's turn was confirmed)."""

    id: int
    charge: Charge
    key_id: str | None
    speculative: bool


_SUMS = (
    sa.func.count().label("charges"),
    sa.func.sum(charges.c.tokens_in).label("tokens_in"),
    sa.func.sum(charges.c.tokens_out).label("tokens_out"),
    sa.func.sum(charges.c.chars).label("chars"),
    sa.func.sum(charges.c.audio_seconds).label("audio_seconds"),
    sa.func.sum(charges.c.engine_seconds).label("engine_seconds"),
    sa.func.sum(charges.c.cost_usd).label("cost_usd"),
)


def _totals(row: Any) -> Totals:
    return Totals(
        charges=int(row.charges or 0),
        tokens_in=int(row.tokens_in or 0),
        tokens_out=int(row.tokens_out or 0),
        chars=int(row.chars or 0),
        audio_seconds=float(row.audio_seconds or 0.0),
        engine_seconds=float(row.engine_seconds or 0.0),
        cost_usd=float(row.cost_usd or 0.0),
    )


def _stored(row: Any) -> StoredCharge:
    charge = Charge(
        at=row.at,
        request_id=row.request_id,
        backend=row.backend,
        stage=cast(Stage, row.stage),
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        chars=row.chars,
        audio_seconds=row.audio_seconds,
        engine_seconds=row.engine_seconds,
        cost_usd=row.cost_usd,
    )
    return StoredCharge(row.id, charge, row.key_id, row.speculative)


class Charges:
    """Append charges and sum them.

    Filters shared by the sums: ``key_id`` (``None``: every key, including charges without
    one), ``since``/``until`` (inclusive UTC days ``YYYY-MM-DD``), ``speculative`` (``None``:
    both kinds).

    Args:
        db: The database.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def append(
        self, charge: Charge, *, key_id: str | None = None, speculative: bool = False
    ) -> int:
        """Store one charge durably (one transaction); returns its row id."""
        with self._db.write() as conn:
            return int(
                conn.execute(
                    charges.insert()
                    .values(
                        at=charge.at,
                        day=charge.day,
                        request_id=charge.request_id,
                        key_id=key_id,
                        backend=charge.backend,
                        stage=charge.stage,
                        tokens_in=charge.tokens_in,
                        tokens_out=charge.tokens_out,
                        chars=charge.chars,
                        audio_seconds=charge.audio_seconds,
                        engine_seconds=charge.engine_seconds,
                        cost_usd=charge.cost_usd,
                        speculative=speculative,
                    )
                    .returning(charges.c.id)
                ).scalar_one()
            )

    def append_many(
        self, items: Sequence[Charge], *, key_id: str | None = None, speculative: bool = False
    ) -> None:
        """Store several charges of one request in one transaction (all or none)."""
        if not items:
            return
        rows = [
            {
                "at": c.at,
                "day": c.day,
                "request_id": c.request_id,
                "key_id": key_id,
                "backend": c.backend,
                "stage": c.stage,
                "tokens_in": c.tokens_in,
                "tokens_out": c.tokens_out,
                "chars": c.chars,
                "audio_seconds": c.audio_seconds,
                "engine_seconds": c.engine_seconds,
                "cost_usd": c.cost_usd,
                "speculative": speculative or c.speculative,
            }
            for c in items
        ]
        with self._db.write() as conn:
            conn.execute(charges.insert(), rows)

    def for_request(self, request_id: str) -> list[StoredCharge]:
        """The charges of one request, in the order they were appended."""
        query = sa.select(charges).where(charges.c.request_id == request_id)
        with self._db.read() as conn:
            return [_stored(row) for row in conn.execute(query.order_by(charges.c.id))]

    def totals(
        self,
        *,
        key_id: str | None = None,
        since: str | None = None,
        until: str | None = None,
        speculative: bool | None = None,
    ) -> Totals:
        """Everything matching the filters, summed."""
        rows = self._grouped((), key_id, since, until, speculative)
        return _totals(rows[0]) if rows else Totals()

    def by_backend(
        self,
        *,
        key_id: str | None = None,
        since: str | None = None,
        until: str | None = None,
        speculative: bool | None = None,
    ) -> dict[str, Totals]:
        """Totals per backend, sorted by name."""
        rows = self._grouped((charges.c.backend,), key_id, since, until, speculative)
        return {row.backend: _totals(row) for row in rows}

    def by_day(
        self,
        *,
        key_id: str | None = None,
        since: str | None = None,
        until: str | None = None,
        speculative: bool | None = None,
    ) -> dict[str, dict[str, Totals]]:
        """Totals per UTC day (oldest first), then per backend."""
        rows = self._grouped((charges.c.day, charges.c.backend), key_id, since, until, speculative)
        out: dict[str, dict[str, Totals]] = {}
        for row in rows:
            out.setdefault(row.day, {})[row.backend] = _totals(row)
        return out

    def by_key(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        speculative: bool | None = None,
    ) -> dict[str | None, Totals]:
        """Totals per key id (``None``: charges recorded without a key)."""
        rows = self._grouped((charges.c.key_id,), None, since, until, speculative)
        return {row.key_id: _totals(row) for row in rows}

    def _grouped(
        self,
        group: Sequence[sa.ColumnElement[Any]],
        key_id: str | None,
        since: str | None,
        until: str | None,
        speculative: bool | None,
    ) -> list[Any]:
        query = sa.select(*group, *_SUMS)
        if key_id is not None:
            query = query.where(charges.c.key_id == key_id)
        if since is not None:
            query = query.where(charges.c.day >= since)
        if until is not None:
            query = query.where(charges.c.day <= until)
        if speculative is not None:
            query = query.where(charges.c.speculative.is_(speculative))
        if group:
            query = query.group_by(*group).order_by(*group)
        with self._db.read() as conn:
            rows = list(conn.execute(query))
        # an ungrouped sum over nothing is one row of NULLs with count 0
        return [r for r in rows if r.charges]
