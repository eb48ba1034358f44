"""One database handle for both backends: an engine, transactions, and the dialect's upsert.

SQLite (the default) and Postgres differ in three ways the repositories must not see:

- **Write locking.** SQLite has one writer at a time. A transaction that reads and then writes
  (check a limit, then count) must take the write lock at ``BEGIN IMMEDIATE``: a deferred
  transaction that upgrades later fails with ``SQLITE_BUSY`` at once, whatever the busy
  timeout, when another process wrote in between. :meth:`Database.write` begins that way;
  :meth:`Database.read` begins deferred so readers never queue behind each other. Postgres
  needs neither: its row locks and ``ON CONFLICT`` do the serializing (and advisory locks
  where a whole scope must be serialized, see :meth:`Database.lock`).
- **Durability.** SQLite runs in WAL mode: a commit is written to the WAL file before the
  call returns, so killing the process never loses it. ``synchronous=NORMAL`` (the default)
  syncs the WAL at checkpoints, ``FULL`` at every commit, which also survives a power cut but
  costs an fsync per write (measured here: 0.4-0.7 ms per write with NORMAL, 4-6 ms with FULL,
  and SQLite's single writer holds its lock through it).
- **Upsert.** Both dialects spell ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` the same in
  SQLAlchemy Core, but through their own ``insert()``: :meth:`Database.upsert` picks it.

Driver exceptions are translated here (``StoreUnavailable``, ``Conflict``), once.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url

from pipeline.errors import InvalidInput
from store.errors import Conflict, StoreUnavailable

Dialect = Literal["sqlite", "postgresql"]
Upsert = sqlite.Insert | postgresql.Insert


def database_url(url: str | None, data_dir: Path) -> URL:
    """The SQLAlchemy URL of a ``VOXLINE_STATE__URL`` value (``None``: the default SQLite file).

    ``postgresql://`` and ``postgres://`` select the psycopg 3 driver; ``sqlite:///PATH`` the
    standard library's sqlite3. An in-memory SQLite database is refused: every pooled
    connection would see a different empty database.

    Raises:
        InvalidInput: An unsupported scheme or an in-memory SQLite URL.
    """
    if url is None:
        return URL.create("sqlite+pysqlite", database=str(data_dir / "state.db"))
    try:
        parsed = make_url(url)
    except exc.ArgumentError as e:
        raise InvalidInput("VOXLINE_STATE__URL is not a database URL", code="bad_url") from e
    backend = parsed.get_backend_name()
    if backend in {"postgresql", "postgres"}:
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if parsed.database in {None, "", ":memory:"}:
            raise InvalidInput(
                "VOXLINE_STATE__URL: an in-memory SQLite database cannot be shared by "
                "connections; give a file path (sqlite:///PATH)",
                code="bad_url",
            )
        return parsed.set(drivername="sqlite+pysqlite")
    raise InvalidInput(
        f"VOXLINE_STATE__URL: unsupported database {backend!r} (use sqlite:/// or postgresql://)",
        code="bad_url",
    )


class Database:
    """An engine plus transactions for the repositories; thread-safe (a connection pool).

    Args:
        url: The SQLAlchemy URL (see :func:`database_url`).
        pool_size: Connections kept open (Postgres).
        busy_timeout_s: How long a write waits for SQLite's lock or a pooled connection.
        sqlite_synchronous: SQLite's ``synchronous`` pragma (``FULL`` or ``NORMAL``).
    """

    def __init__(
        self,
        url: URL,
        *,
        pool_size: int = 5,
        busy_timeout_s: float = 10.0,
        sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        self.dialect: Dialect = "sqlite" if url.get_backend_name() == "sqlite" else "postgresql"
        if self.dialect == "sqlite":
            assert url.database is not None  # database_url() refuses the in-memory database
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(url, busy_timeout_s, sqlite_synchronous)
        else:
            self.engine = sa.create_engine(
                url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_timeout=busy_timeout_s,
                pool_pre_ping=True,  # a replica outlives a database restart
                connect_args={"connect_timeout": max(1, round(busy_timeout_s))},
            )
        # the password stays out of every repr and log line
        self.url_redacted = url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Database({self.url_redacted})"

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction that may write: committed when the block ends, rolled back if it
        raises. On SQLite it holds the write lock from its first statement."""
        with self._translated(), self.engine.connect() as conn:
            conn.execution_options(voxline_begin="BEGIN IMMEDIATE")
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """One transaction for reading. On SQLite its statements share one snapshot; on
        Postgres (read committed) each statement sees what was committed before it began."""
        with self._translated(), self.engine.connect() as conn:
            conn.execution_options(voxline_begin="BEGIN")
            with conn.begin():
                yield conn

    def lock(self, conn: Connection, name: str) -> None:
        """Serialize the rest of ``conn``'s write transaction with every other transaction
        that locks ``name`` (a lease scope, a migration). SQLite's write transactions are
        serialized already; Postgres takes a transaction-scoped advisory lock."""
        if self.dialect == "postgresql":
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))

    def upsert(self, table: sa.Table) -> Upsert:
        """``INSERT`` into ``table`` in the dialect that offers ``on_conflict_do_update``."""
        return sqlite.insert(table) if self.dialect == "sqlite" else postgresql.insert(table)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except exc.IntegrityError as e:
            raise Conflict(f"the write conflicts with stored data: {e.orig}") from e
        except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError) as e:
            raise StoreUnavailable(
                f"state store {self.url_redacted} unavailable: {type(e).__name__}"
            ) from e


def _sqlite_engine(
    url: URL, busy_timeout_s: float, synchronous: Literal["NORMAL", "FULL"]
) -> Engine:
    engine = sa.create_engine(
        url,
        # sqlite3's own transaction handling is switched off (isolation_level=None) so that
        # the ``begin`` hook below decides how each transaction starts
        connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        # journal_mode is persistent in the file; setting it again is a no-op
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("voxline_begin", "BEGIN"))

    return engine
