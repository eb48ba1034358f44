"""voxline's durable state: one store, two backends, every feature's repository on it.

What lives here: API keys (hashed) and ephemeral client secrets, rate limits, usage totals
and quotas, leases (concurrent sessions, job claims), the cost ledger's charges, blobs
(uploads, voice clips, job payloads), vectors (the knowledge base's embeddings) and generic
documents (jobs, releases, voices). ``store`` imports ``pipeline`` only; ``server`` and the
CLI import ``store``.

Backends (``VOXLINE_STATE__URL``): an embedded SQLite file by default (WAL, nothing to run),
or Postgres with pgvector so several server replicas share one state. Both are SQLAlchemy
Core over one schema (:mod:`store.schema`), so every query is written once; where the
dialects differ (write locking, upsert, vector search) :mod:`store.database` and
:mod:`store.vectors` say how.

Why a synchronous API: SQLite has no real async driver (aiosqlite is a thread anyway), one
code path serves both backends, the CLI and job workers are synchronous, and each call is a
short indexed statement (about a millisecond), so async callers pay only a thread hop::

    store = Store.open(settings.state)
    key = await asyncio.to_thread(store.keys.verify, secret)
    decision = await asyncio.to_thread(store.rate_limits.hit, f"rpm:{key.id}", key.limits.rpm)

Adding a repository (the pattern every module here follows):

1. Its table(s) in :mod:`store.schema`, with a comment naming the module that owns them, and
   a step in :mod:`store.migrations` that creates them (``table.create(conn)``).
2. A module ``store/<thing>.py``: frozen, slotted dataclasses for its records (never dicts
   across the boundary), and a class taking ``(db: Database, clock)`` whose methods each run
   one transaction: ``with db.write() as conn`` to change (atomic; on SQLite it holds the
   write lock from the start), ``with db.read() as conn`` to read. Counters are atomic
   upserts (``db.upsert(table).on_conflict_do_update(...)``), never read-modify-write; a
   check-then-insert over several rows takes ``db.lock(conn, name)`` first.
3. An attribute on :class:`Store` and tests in ``tests/store/`` that take the ``store``
   fixture, so they run on SQLite and on the real Postgres the tests start.

Records with a lifecycle and a JSON payload (jobs, releases, voices) may need no table of
their own: :meth:`Store.documents` gives a kind's documents with status, version and an
atomic ``claim_next``.
"""

from __future__ import annotations

from store.blobs import BlobInfo, Blobs
from store.charges import Charges, StoredCharge
from store.database import Database, database_url
from store.documents import Document, Documents
from store.errors import Conflict, NotFound, StoreError, StoreUnavailable
from store.keys import (
    ApiKey,
    ApiKeys,
    ClientSecretGrant,
    ClientSecrets,
    KeyLimits,
    NewClientSecret,
    NewKey,
)
from store.leases import Lease, Leases
from store.limits import RateDecision, RateLimiter
from store.release_types import Canary, Pointer, Release
from store.releases import Releases
from store.state import Store
from store.usage import QuotaDecision, Usage, UsageAmounts, UsagePeriod
from store.vectors import VectorHit, Vectors

__all__ = [
    "ApiKey",
    "ApiKeys",
    "BlobInfo",
    "Blobs",
    "Canary",
    "Charges",
    "ClientSecretGrant",
    "ClientSecrets",
    "Conflict",
    "Database",
    "Document",
    "Documents",
    "KeyLimits",
    "Lease",
    "Leases",
    "NewClientSecret",
    "NewKey",
    "NotFound",
    "Pointer",
    "QuotaDecision",
    "RateDecision",
    "RateLimiter",
    "Release",
    "Releases",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredCharge",
    "Usage",
    "UsageAmounts",
    "UsagePeriod",
    "VectorHit",
    "Vectors",
    "database_url",
]
