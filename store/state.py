"""The store: one database, every repository on it, opened once per process."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from pipeline.settings import StateSettings
from store.blobs import Blobs
from store.charges import Charges
from store.database import Database, database_url
from store.documents import Documents
from store.keys import ApiKeys, ClientSecrets
from store.leases import Leases
from store.limits import RateLimiter
from store.migrations import migrate
from store.releases import Releases
from store.usage import Usage
from store.vectors import Vectors


class Store:
    """Every repository over one :class:`~store.database.Database`; thread-safe.

    Build it with :meth:`open`. Its methods are blocking (milliseconds each): async code
    calls them with ``await asyncio.to_thread(store.keys.verify, secret)``.

    Args:
        db: An open database, migrated.
        clock: Unix time source shared by the repositories (tests pin it).
    """

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock
        self.clock = clock
        """The Unix time source every repository reads (callers computing periods use it)."""
        self.keys = ApiKeys(db, clock)
        """API keys (:mod:`store.keys`)."""
        self.client_secrets = ClientSecrets(db, self.keys, clock)
        """Ephemeral client secrets minted for keys (:mod:`store.keys`)."""
        self.rate_limits = RateLimiter(db, clock)
        """Atomic rate limits per scope (:mod:`store.limits`)."""
        self.usage = Usage(db, clock)
        """Daily and monthly usage totals and quotas (:mod:`store.usage`)."""
        self.leases = Leases(db, clock)
        """Expiring leases: concurrent sessions, job claims (:mod:`store.leases`)."""
        self.charges = Charges(db)
        """The cost ledger's charges (:mod:`store.charges`)."""
        self.blobs = Blobs(db, clock)
        """Binary payloads (:mod:`store.blobs`)."""
        self.vectors = Vectors(db)
        """Embeddings and cosine search (:mod:`store.vectors`)."""
        self.releases = Releases(db, self.blobs, clock)
        """Releases, their scorecards and the active pointer (:mod:`store.releases`)."""

    @classmethod
    def open(
        cls,
        settings: StateSettings | None = None,
        *,
        url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Store:
        """Connect to the database of ``settings`` (or ``url``), migrating its schema.

        Args:
            settings: The ``state`` settings section (default: its defaults).
            url: A database URL that overrides ``settings.url``.
            clock: Unix time source.

        Raises:
            InvalidInput: An unsupported URL.
            StoreUnavailable: The database cannot be reached (or lacks pgvector).
            Conflict: The database's schema is newer than this code.
        """
        settings = settings or StateSettings()
        if url is None and settings.url is not None:
            url = settings.url.get_secret_value()
        db = Database(
            database_url(url, settings.data_dir.expanduser()),
            pool_size=settings.pool_size,
            busy_timeout_s=settings.busy_timeout_s,
            sqlite_synchronous=settings.sqlite_synchronous,
        )
        try:
            migrate(db, now=clock())
        except BaseException:
            db.close()
            raise
        return cls(db, clock=clock)

    def documents(self, kind: str) -> Documents:
        """The generic documents of one kind (``"job"``, ``"release"``, ``"voice"``...)."""
        return Documents(self.db, kind, self._clock)

    def close(self) -> None:
        """Close the database's connections."""
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
