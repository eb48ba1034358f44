"""Versioned schema migrations, applied when a store opens.

The database records its schema version in ``schema_version``. Opening a store runs, in one
transaction, every step above that version, then records the new one. The transaction holds
a lock (SQLite's write lock, a Postgres advisory lock), so two processes opening the same
database at once migrate it once: the second waits, then finds nothing to do. DDL is
transactional on both databases, so a step that fails leaves the previous version intact.

Adding a step: append ``(N, "what it does", function)`` to :data:`STEPS`. A step creates its
new tables from :mod:`store.schema` (``table.create(conn)``) and changes existing ones with
explicit ``ALTER TABLE``: never ``metadata.create_all()``, whose tables are always the latest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from store import schema
from store.database import Database
from store.errors import Conflict, StoreUnavailable

log = logging.getLogger("voxline.store")

Step = Callable[[Connection, Database], None]


def _v1(conn: Connection, db: Database) -> None:
    if db.dialect == "postgresql":
        try:
            with conn.begin_nested():
                conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
        except sa.exc.DBAPIError as e:
            raise StoreUnavailable(
                "the Postgres state store needs the pgvector extension: install it on the "
                "server (Debian: postgresql-NN-pgvector) and run `CREATE EXTENSION vector` as "
                f"a superuser in the database ({type(e.orig).__name__})"
            ) from e
    for table in schema.metadata.sorted_tables:
        if table is not schema.schema_version:
            table.create(conn, checkfirst=True)


STEPS: list[tuple[int, str, Step]] = [
    (1, "keys, limits, usage, leases, charges, blobs, vectors, documents", _v1),
]
LATEST = STEPS[-1][0]


def migrate(db: Database, *, now: float) -> int:
    """Bring the database to :data:`LATEST`; returns the version it was at.

    Raises:
        Conflict: The database was migrated by a newer voxline (its version is above ours).
    """
    with db.write() as conn:
        db.lock(conn, "voxline.migrations")
        schema.schema_version.create(conn, checkfirst=True)
        found = conn.execute(sa.select(schema.schema_version.c.version)).scalar()
        current = found or 0
        if current > LATEST:
            raise Conflict(
                f"the state store's schema is v{current}, newer than this voxline's v{LATEST}: "
                "upgrade voxline (or point VOXLINE_STATE__URL at another database)"
            )
        for version, what, step in STEPS:
            if version > current:
                log.info("state store: migrating to v%d (%s)", version, what)
                step(conn, db)
        if found is None:
            conn.execute(
                schema.schema_version.insert().values(id=1, version=LATEST, updated_at=now)
            )
        elif current < LATEST:
            conn.execute(schema.schema_version.update().values(version=LATEST, updated_at=now))
    return current
