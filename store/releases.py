"""Releases: named, immutable bundles of settings, their scorecards, and the active pointer.

A release (docs/releases.md) is a document of kind ``release`` (``store.documents("release")``
sees them) whose payload holds the ``VOXLINE_*`` lines it was created from (``env``, as
written) and the same as nested overrides (``overrides``); those never change. What changes
is what is learnt about it: its scorecard (a blob: scorecards are tens of kilobytes), the
gate's last verdict, why it was rolled back, and a history of events.

Which release serves is one more document, the *pointer* (kind ``release_pointer``, id
``active``): the active release, the ones that were active before it (what ``rollback``
returns to), and the canary, if one runs. Servers poll that one row; every change of it
happens in one transaction that also moves the releases' statuses, under a lock (an advisory
lock on Postgres; SQLite's write lock) and only from the pointer version the caller read, so
two admins (or two replicas rolling back a canary) never interleave.

Without any pointer, the active release is ``IMPLICIT`` (``settings``): each process's own
settings. It gets a document of its own only when a scorecard is stored for it.

The values (``Release``, ``Pointer``, ``Canary``), the statuses and the naming rule are in
``store.release_types``; this module holds the transactions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from pipeline.errors import InvalidInput
from store.blobs import Blobs
from store.database import Database
from store.errors import Conflict, NotFound
from store.release_types import (
    ACTIVE,
    CANARY,
    CANDIDATE,
    IMPLICIT,
    RETIRED,
    ROLLED_BACK,
    Canary,
    Pointer,
    Release,
    check_name,
)
from store.schema import documents

KIND = "release"
POINTER_KIND = "release_pointer"
POINTER_ID = "active"
_HISTORY = 50  # events kept per release


@dataclass(slots=True)
class _Change:
    """Status moves and events to write with a pointer change."""

    statuses: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # name, event, detail
    reasons: dict[str, str] = field(default_factory=dict)


def _release(row: Any) -> Release:
    p = row.payload
    return Release(
        row.id,
        row.status,
        dict(p.get("env", {})),
        dict(p.get("overrides", {})),
        p.get("description"),
        p.get("scorecard"),
        p.get("gate"),
        p.get("reason"),
        tuple(p.get("history", ())),
        row.created_at,
        row.version,
    )


def _pointer(row: Any) -> Pointer:
    if row is None:
        return Pointer()
    p = row.payload
    canary = p.get("canary")
    return Pointer(
        p.get("active", IMPLICIT),
        tuple(p.get("previous", ())),
        None if canary is None else Canary(canary["name"], canary["percent"], canary["since"]),
        row.version,
        row.updated_at,
    )


class Releases:
    """Create, list and score releases; move the active pointer.

    Args:
        db: The database.
        blobs: Where scorecards go.
        clock: Unix time source.
    """

    def __init__(self, db: Database, blobs: Blobs, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._blobs = blobs
        self._clock = clock

    # ------------------------------------------------------------------ releases

    def create(
        self,
        name: str,
        env: Mapping[str, str],
        overrides: Mapping[str, Any],
        *,
        description: str | None = None,
    ) -> Release:
        """Store a new release (status ``candidate``).

        Raises:
            InvalidInput: a bad name.
            Conflict: a release of that name exists (releases are immutable: pick a new one).
        """
        check_name(name)
        now = self._clock()
        payload = {
            "env": dict(env),
            "overrides": dict(overrides),
            "description": description,
            "history": [{"at": now, "event": "created", "detail": ""}],
        }
        try:
            with self._db.write() as conn:
                conn.execute(
                    documents.insert().values(
                        kind=KIND,
                        id=name,
                        status=CANDIDATE,
                        payload=payload,
                        created_at=now,
                        updated_at=now,
                        version=1,
                    )
                )
        except Conflict:
            raise Conflict(
                f"release {name!r} exists; releases are immutable: create one with a new name"
            ) from None
        return Release(name, CANDIDATE, dict(env), dict(overrides), description, created_at=now)

    def get(self, name: str) -> Release | None:
        """The release, or ``None`` (``IMPLICIT`` is ``None`` until it has a scorecard)."""
        with self._db.read() as conn:
            row = conn.execute(sa.select(documents).where(*_key(KIND, name))).first()
        return None if row is None else _release(row)

    def require(self, name: str) -> Release:
        """The release; ``IMPLICIT`` always exists (without a document: empty overrides).

        Raises:
            NotFound: no such release.
        """
        found = self.get(name)
        if found is not None:
            return found
        if name == IMPLICIT:
            return Release(IMPLICIT, ACTIVE, {}, {})
        raise NotFound(f"no release {name!r} (voxline release list)")

    def list(self) -> list[Release]:
        """Every release, oldest first."""
        query = (
            sa.select(documents)
            .where(documents.c.kind == KIND)
            .order_by(documents.c.created_at, documents.c.id)
        )
        with self._db.read() as conn:
            return [_release(row) for row in conn.execute(query)]

    def scorecard(self, name: str) -> bytes | None:
        """The stored scorecard JSON of a release, or ``None``."""
        release = self.get(name)
        if release is None or release.scorecard is None:
            return None
        try:
            return self._blobs.read(release.scorecard["blob"])
        except NotFound:
            return None

    def set_scorecard(self, name: str, card: bytes, meta: Mapping[str, Any]) -> Release:
        """Store ``card`` (scorecard JSON) as the release's scorecard, described by ``meta``
        (``suites``, ``quick``, ``settings_sha256``, ``golden_sha256``, ``created``,
        ``summary``). The implicit release gets its document here.

        Raises:
            NotFound: no such release.
        """
        info = self._blobs.put(card, content_type="application/json")
        old = self.get(name)
        if old is not None and old.scorecard is not None:
            self._blobs.delete(old.scorecard["blob"])
        return self._edit(name, scorecard={**meta, "blob": info.id}, event=("scored", ""))

    def record_gate(self, name: str, gate: Mapping[str, Any]) -> Release:
        """Keep the promotion gate's verdict on the candidate."""
        verdict = "passed" if gate.get("passed") else "refused"
        detail = f"against {gate.get('against')}: {verdict}"
        return self._edit(name, gate=dict(gate), event=("gate", detail))

    def _edit(
        self,
        name: str,
        *,
        scorecard: Mapping[str, Any] | None = None,
        gate: Mapping[str, Any] | None = None,
        event: tuple[str, str],
    ) -> Release:
        now = self._clock()
        with self._db.write() as conn:
            row = conn.execute(sa.select(documents).where(*_key(KIND, name))).first()
            if row is None:
                if name != IMPLICIT:
                    raise NotFound(f"no release {name!r}")
                payload: dict[str, Any] = {"env": {}, "overrides": {}, "history": []}
                pointer = _pointer(_read_pointer(conn))
                status = ACTIVE if pointer.active == IMPLICIT else RETIRED
                conn.execute(
                    documents.insert().values(
                        kind=KIND,
                        id=name,
                        status=status,
                        payload=payload,
                        created_at=now,
                        updated_at=now,
                        version=1,
                    )
                )
                row = conn.execute(sa.select(documents).where(*_key(KIND, name))).one()
            payload = dict(row.payload)
            if scorecard is not None:
                payload["scorecard"] = dict(scorecard)
            if gate is not None:
                payload["gate"] = dict(gate)
            _add_event(payload, now, *event)
            updated = conn.execute(
                documents.update()
                .where(*_key(KIND, name))
                .values(payload=payload, updated_at=now, version=documents.c.version + 1)
                .returning(*documents.c)
            ).one()
        return _release(updated)

    # ------------------------------------------------------------------ the pointer

    def pointer(self) -> Pointer:
        """Which release is active (and the canary): one indexed row."""
        with self._db.read() as conn:
            return _pointer(_read_pointer(conn))

    def promote(self, name: str, *, expect_version: int | None = None) -> Pointer:
        """Make ``name`` the active release (ending its canary if it was one).

        Raises:
            NotFound: no such release.
            InvalidInput: it is already active, or another release's canary runs.
            Conflict: the pointer changed since ``expect_version``.
        """

        def change(p: Pointer, c: _Change) -> Pointer:
            if p.active == name:
                raise InvalidInput(f"release {name!r} is already active")
            if p.canary is not None and p.canary.name != name:
                raise InvalidInput(
                    f"release {p.canary.name!r} runs as a canary: promote it or roll it back first"
                )
            c.statuses.update({name: ACTIVE, p.active: RETIRED})
            c.events += [(name, "promoted", f"was {p.active}"), (p.active, "retired", name)]
            return Pointer(name, (*p.previous, p.active)[-_HISTORY:], None)

        return self._move(change, expect_version, needs=name)

    def start_canary(
        self, name: str, percent: float, *, expect_version: int | None = None
    ) -> Pointer:
        """Send ``percent`` of new sessions and turns to ``name``.

        Raises:
            NotFound: no such release.
            InvalidInput: a percent outside (0, 100), the active release, or a canary runs.
            Conflict: the pointer changed since ``expect_version``.
        """
        if not 0 < percent < 100:
            raise InvalidInput("a canary's percent is above 0 and below 100", param="canary")

        def change(p: Pointer, c: _Change) -> Pointer:
            if p.active == name:
                raise InvalidInput(f"release {name!r} is already active")
            if p.canary is not None:
                raise InvalidInput(
                    f"release {p.canary.name!r} already runs as a canary: promote it or roll "
                    "it back first"
                )
            c.statuses[name] = CANARY
            c.events.append((name, "canary", f"{percent:g}% beside {p.active}"))
            return Pointer(p.active, p.previous, Canary(name, percent, self._clock()))

        return self._move(change, expect_version, needs=name)

    def rollback(self, *, reason: str, expect_version: int | None = None) -> Pointer:
        """Undo the last change: end the canary if one runs, else make the previous release
        active again (the rolled-back one is marked ``rolled_back`` with ``reason``).

        Raises:
            InvalidInput: nothing to roll back to.
            Conflict: the pointer changed since ``expect_version``.
        """

        def change(p: Pointer, c: _Change) -> Pointer:
            if p.canary is not None:
                return _end_canary(p, c, reason)
            if not p.previous:
                raise InvalidInput(
                    f"nothing to roll back to: {p.active!r} is the first active release"
                )
            back = p.previous[-1]
            c.statuses.update({p.active: ROLLED_BACK, back: ACTIVE})
            c.reasons[p.active] = reason
            c.events += [(p.active, "rolled_back", reason), (back, "promoted", "rollback")]
            return Pointer(back, p.previous[:-1], None)

        return self._move(change, expect_version)

    def end_canary(self, name: str, *, reason: str, expect_version: int) -> Pointer | None:
        """Roll the canary ``name`` back (the server's canary watch); ``None`` when the pointer
        moved since ``expect_version`` or ``name`` no longer runs as the canary."""

        def change(p: Pointer, c: _Change) -> Pointer:
            if p.canary is None or p.canary.name != name:
                raise _Moved
            return _end_canary(p, c, reason)

        try:
            return self._move(change, expect_version)
        except (Conflict, _Moved):
            return None

    def _move(
        self,
        change: Callable[[Pointer, _Change], Pointer],
        expect_version: int | None,
        *,
        needs: str | None = None,
    ) -> Pointer:
        now = self._clock()
        with self._db.write() as conn:
            self._db.lock(conn, "release_pointer")
            row = _read_pointer(conn)
            old = _pointer(row)
            if expect_version is not None and old.version != expect_version:
                raise Conflict(
                    "the releases changed meanwhile (another promotion or rollback): "
                    "run the command again"
                )
            if needs is not None and needs != IMPLICIT:
                found = conn.execute(sa.select(documents.c.id).where(*_key(KIND, needs))).first()
                if found is None:
                    raise NotFound(f"no release {needs!r} (voxline release list)")
            moves = _Change()
            new = change(old, moves)
            payload = {
                "active": new.active,
                "previous": list(new.previous),
                "canary": None
                if new.canary is None
                else {
                    "name": new.canary.name,
                    "percent": new.canary.percent,
                    "since": new.canary.since,
                },
            }
            if row is None:
                conn.execute(
                    documents.insert().values(
                        kind=POINTER_KIND,
                        id=POINTER_ID,
                        status="ok",
                        payload=payload,
                        created_at=now,
                        updated_at=now,
                        version=1,
                    )
                )
            else:
                conn.execute(
                    documents.update()
                    .where(*_key(POINTER_KIND, POINTER_ID))
                    .values(payload=payload, updated_at=now, version=documents.c.version + 1)
                )
            self._apply(conn, moves, now)
            return _pointer(_read_pointer(conn))

    def _apply(self, conn: sa.Connection, moves: _Change, now: float) -> None:
        names = set(moves.statuses) | {e[0] for e in moves.events} | set(moves.reasons)
        for name in names:
            row = conn.execute(sa.select(documents).where(*_key(KIND, name))).first()
            if row is None:  # the implicit release without a document: nothing to record
                continue
            payload = dict(row.payload)
            for who, event, detail in moves.events:
                if who == name:
                    _add_event(payload, now, event, detail)
            if name in moves.reasons:
                payload["reason"] = moves.reasons[name]
            conn.execute(
                documents.update()
                .where(*_key(KIND, name))
                .values(
                    status=moves.statuses.get(name, row.status),
                    payload=payload,
                    updated_at=now,
                    version=documents.c.version + 1,
                )
            )


class _Moved(Exception):
    """The canary to end is no longer the canary."""


def _end_canary(p: Pointer, c: _Change, reason: str) -> Pointer:
    assert p.canary is not None
    c.statuses[p.canary.name] = ROLLED_BACK
    c.reasons[p.canary.name] = reason
    c.events.append((p.canary.name, "rolled_back", reason))
    return Pointer(p.active, p.previous, None)


def _key(kind: str, doc_id: str) -> tuple[sa.ColumnElement[bool], ...]:
    return documents.c.kind == kind, documents.c.id == doc_id


def _read_pointer(conn: sa.Connection) -> Any:
    return conn.execute(sa.select(documents).where(*_key(POINTER_KIND, POINTER_ID))).first()


def _add_event(payload: dict[str, Any], at: float, event: str, detail: str) -> None:
    history = [*payload.get("history", []), {"at": at, "event": event, "detail": detail}]
    payload["history"] = history[-_HISTORY:]
