"""Every table of the state store, in SQLAlchemy Core: one definition for both dialects.

Conventions: times are Unix seconds (``Float``), as everywhere in voxline (clocks are
injectable); ids are short strings made by the repository that owns the table; JSON columns
hold caller payloads (``JSONB`` on Postgres). A table belongs to exactly one repository module,
named in its comment; nothing else reads or writes it.

Changing a table: add a step to :mod:`store.migrations` (tables of version 1 are created from
these definitions; a later step adds its new tables the same way, and alters existing ones with
explicit DDL), then change the definition here.
"""

from __future__ import annotations

import sqlalchemy as sa
from pgvector.sqlalchemy import VECTOR
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

_json = sa.JSON().with_variant(JSONB(), "postgresql")
# a rowid alias on SQLite (``INTEGER PRIMARY KEY``), a bigserial on Postgres
_serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

schema_version = sa.Table(  # store.migrations
    "schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

api_keys = sa.Table(  # store.keys
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(20), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("scopes", _json, nullable=False),
    sa.Column("rpm", sa.Integer),
    sa.Column("max_sessions", sa.Integer),
    sa.Column("tokens_per_day", sa.BigInteger),
    sa.Column("audio_seconds_per_day", sa.Float),
    sa.Column("usd_per_month", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)

client_secrets = sa.Table(  # store.keys
    "client_secrets",
    metadata,
    sa.Column("secret_hash", sa.String(64), primary_key=True),
    sa.Column(
        "key_id", sa.String(40), sa.ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("scopes", _json, nullable=False),
    sa.Column("session", _json),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

rate_limits = sa.Table(  # store.limits
    "rate_limits",
    metadata,
    sa.Column("scope", sa.String(200), primary_key=True),
    # GCRA's theoretical arrival time: when the bucket is empty again
    sa.Column("tat", sa.Float, nullable=False),
)

usage_totals = sa.Table(  # store.usage
    "usage_totals",
    metadata,
    sa.Column("subject", sa.String(100), primary_key=True),
    sa.Column("period", sa.String(10), primary_key=True),  # UTC "YYYY-MM-DD" or "YYYY-MM"
    sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("audio_seconds", sa.Float, nullable=False, server_default="0"),
    sa.Column("usd", sa.Float, nullable=False, server_default="0"),
)

leases = sa.Table(  # store.leases
    "leases",
    metadata,
    sa.Column("scope", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(200), primary_key=True),
    sa.Column("acquired_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

charges = sa.Table(  # store.charges
    "charges",
    metadata,
    sa.Column("id", _serial, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("day", sa.String(10), nullable=False),  # UTC day: groups the same on both dialects
    sa.Column("request_id", sa.String(100), nullable=False),
    sa.Column("key_id", sa.String(40)),
    sa.Column("backend", sa.String(200), nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("tokens_in", sa.BigInteger, nullable=False),
    sa.Column("tokens_out", sa.BigInteger, nullable=False),
    sa.Column("chars", sa.BigInteger, nullable=False),
    sa.Column("audio_seconds", sa.Float, nullable=False),
    sa.Column("engine_seconds", sa.Float, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("speculative", sa.Boolean, nullable=False),
    sa.Index("charges_key_day", "key_id", "day"),
    sa.Index("charges_day", "day"),
)

blobs = sa.Table(  # store.blobs
    "blobs",
    metadata,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("content_type", sa.String(200), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

blob_chunks = sa.Table(  # store.blobs
    "blob_chunks",
    metadata,
    sa.Column(
        "blob_id", sa.String(100), sa.ForeignKey("blobs.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

vector_collections = sa.Table(  # store.vectors
    "vector_collections",
    metadata,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("dim", sa.Integer, nullable=False),
    # bumped by every change: SQLite's in-process search caches compare it
    sa.Column("version", sa.BigInteger, nullable=False),
)

vectors = sa.Table(  # store.vectors
    "vectors",
    metadata,
    sa.Column("id", _serial, primary_key=True, autoincrement=True),
    sa.Column(
        "collection",
        sa.String(100),
        sa.ForeignKey("vector_collections.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("owner", sa.String(100), nullable=False, index=True),
    # the collection's dimension again: Postgres's HNSW indexes are partial, one per dimension
    sa.Column("dim", sa.Integer, nullable=False),
    # pgvector's type without a fixed dimension (collections differ); float32 bytes on SQLite
    sa.Column("embedding", VECTOR().with_variant(sa.LargeBinary(), "sqlite"), nullable=False),
    sa.Column("meta", _json, nullable=False),
)

documents = sa.Table(  # store.documents
    "documents",
    metadata,
    sa.Column("kind", sa.String(50), primary_key=True),
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("payload", _json, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Index("documents_kind_status", "kind", "status", "created_at"),
)
