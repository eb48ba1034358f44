"""Documents: JSON payloads with a status, timestamps and a version, grouped by kind.

A small generic table for things that are records with a lifecycle, such as jobs (``queued``
-> ``running`` -> ``succeeded``), releases (``candidate`` -> ``active`` -> ``retired``) or
voices (``ready``). A feature takes its own kind (``store.documents("job")``) and keeps its
typed record in the payload (convert at its boundary: a frozen dataclass in, one out).

Concurrency: every change bumps ``version``; :meth:`Documents.update` can require the version
it read (optimistic locking), :meth:`Documents.transition` changes status only from an
expected status (compare-and-set), and :meth:`Documents.claim_next` moves the oldest document
of one status to another atomically, so two workers never claim the same job (Postgres:
``FOR UPDATE SKIP LOCKED``; SQLite: its write lock). Pair a claim with a lease
(:mod:`store.leases`) so a dead worker's job can be taken over.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from pipeline.errors import InvalidInput
from store.database import Database
from store.errors import Conflict, NotFound
from store.schema import documents


@dataclass(frozen=True, slots=True)
class Document:
    """One stored document."""

    kind: str
    id: str
    status: str
    payload: Mapping[str, Any]
    created_at: float
    updated_at: float
    version: int
    """1 at creation, +1 per change."""


def _doc(row: Any) -> Document:
    return Document(
        row.kind, row.id, row.status, row.payload, row.created_at, row.updated_at, row.version
    )


class Documents:
    """The documents of one kind.

    Args:
        db: The database.
        kind: The kind (e.g. ``"job"``); every call is confined to it.
        clock: Unix time source.
    """

    def __init__(self, db: Database, kind: str, clock: Callable[[], float] = time.time) -> None:
        if not kind or len(kind) > 50:
            raise InvalidInput("a document kind is 1-50 characters")
        self._db = db
        self.kind = kind
        self._clock = clock

    def create(self, doc_id: str, payload: Mapping[str, Any], *, status: str) -> Document:
        """Store a new document.

        Raises:
            Conflict: A document of this kind already has ``doc_id``.
        """
        now = self._clock()
        doc = Document(self.kind, doc_id, status, dict(payload), now, now, 1)
        with self._db.write() as conn:
            conn.execute(
                documents.insert().values(
                    kind=self.kind,
                    id=doc_id,
                    status=status,
                    payload=doc.payload,
                    created_at=now,
                    updated_at=now,
                    version=1,
                )
            )
        return doc

    def get(self, doc_id: str) -> Document | None:
        """The document, or ``None``."""
        with self._db.read() as conn:
            row = conn.execute(sa.select(documents).where(*self._key(doc_id))).first()
        return None if row is None else _doc(row)

    def list(
        self, *, status: str | Collection[str] | None = None, limit: int = 100, offset: int = 0
    ) -> list[Document]:
        """Documents oldest first, optionally only those with ``status`` (one or several)."""
        query = sa.select(documents).where(documents.c.kind == self.kind)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            query = query.where(documents.c.status.in_(wanted))
        query = query.order_by(documents.c.created_at, documents.c.id).limit(limit).offset(offset)
        with self._db.read() as conn:
            return [_doc(row) for row in conn.execute(query)]

    def update(
        self,
        doc_id: str,
        *,
        payload: Mapping[str, Any] | None = None,
        status: str | None = None,
        expect_version: int | None = None,
    ) -> Document:
        """Replace the payload and/or status.

        Raises:
            NotFound: No such document.
            Conflict: ``expect_version`` is given and the stored version differs.
        """
        where = list(self._key(doc_id))
        if expect_version is not None:
            where.append(documents.c.version == expect_version)
        row = self._change(where, payload, status)
        if row is not None:
            return row
        if self.get(doc_id) is None:
            raise NotFound(f"no {self.kind} {doc_id!r}")
        raise Conflict(f"{self.kind} {doc_id!r} changed since version {expect_version}")

    def transition(
        self,
        doc_id: str,
        from_status: str | Collection[str],
        to_status: str,
        *,
        payload: Mapping[str, Any] | None = None,
    ) -> Document | None:
        """Move to ``to_status`` only if the status is ``from_status`` now (one of them);
        ``None`` when it is not (or the document does not exist)."""
        froms = [from_status] if isinstance(from_status, str) else list(from_status)
        where = [*self._key(doc_id), documents.c.status.in_(froms)]
        return self._change(where, payload, to_status)

    def claim_next(
        self, from_status: str, to_status: str, *, payload: Mapping[str, Any] | None = None
    ) -> Document | None:
        """Atomically move the oldest document in ``from_status`` to ``to_status``; ``None``
        when there is none. Concurrent claimers each get a different document."""
        pick = (
            sa.select(documents.c.id)
            .where(documents.c.kind == self.kind, documents.c.status == from_status)
            .order_by(documents.c.created_at, documents.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        with self._db.write() as conn:
            doc_id = conn.execute(pick).scalar()
            if doc_id is None:
                return None
            return self._change(
                [*self._key(doc_id), documents.c.status == from_status],
                payload,
                to_status,
                conn=conn,
            )

    def delete(self, doc_id: str) -> bool:
        """Delete the document; ``False`` if there was none."""
        with self._db.write() as conn:
            return bool(conn.execute(documents.delete().where(*self._key(doc_id))).rowcount)

    def _key(self, doc_id: str) -> tuple[sa.ColumnElement[bool], ...]:
        return documents.c.kind == self.kind, documents.c.id == doc_id

    def _change(
        self,
        where: Sequence[sa.ColumnElement[bool]],
        payload: Mapping[str, Any] | None,
        status: str | None,
        conn: sa.Connection | None = None,
    ) -> Document | None:
        values: dict[str, Any] = {
            "updated_at": self._clock(),
            "version": documents.c.version + 1,
        }
        if payload is not None:
            values["payload"] = dict(payload)
        if status is not None:
            values["status"] = status
        statement = documents.update().where(*where).values(**values).returning(*documents.c)
        if conn is not None:
            row = conn.execute(statement).first()
        else:
            with self._db.write() as own:
                row = own.execute(statement).first()
        return None if row is None else _doc(row)
