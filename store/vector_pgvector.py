"""Postgres's vector search: pgvector, exact by default, HNSW when asked to be approximate.

The ``embedding`` column is pgvector's ``vector`` without a fixed dimension (collections may
differ), and pgvector can only index a fixed dimension, so each dimension gets its own
partial HNSW index on a cast (``(embedding::vector(384)) vector_cosine_ops WHERE dim = 384``,
pgvector's documented pattern), created when the first collection of that dimension is.

Exact search (the default) ranks every row of the searched collections by ``<=>`` (cosine
distance) after the B-tree index on ``collection`` has picked them. Approximate search walks
the HNSW index instead: much faster on large tables, but pgvector (0.6) applies the
collection filter *after* the index returns its ``ef_search`` candidates, so a small
collection inside a large table can come back short; then the exact query runs instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from pgvector.sqlalchemy import VECTOR
from sqlalchemy.engine import Connection

from store.database import Database

HNSW_MAX_DIM = 2000  # pgvector's limit for indexing ``vector``
_COLUMNS = ("id", "collection", "owner", "meta")


def index_name(dim: int) -> str:
    """The HNSW index of one dimension."""
    return f"vectors_hnsw_{dim}"


def ensure_index(conn: Connection, db: Database, dim: int) -> None:
    """Create the HNSW index of ``dim`` if it does not exist (in ``conn``'s transaction)."""
    if dim > HNSW_MAX_DIM:
        return  # exact search only
    db.lock(conn, "vectors.index")  # two creators would clash on the index name
    exists = conn.execute(
        sa.text("SELECT 1 FROM pg_indexes WHERE indexname = :name"), {"name": index_name(dim)}
    ).first()
    if exists is None:
        dim = int(dim)  # DDL takes no bind parameters: the value is an int, never text
        conn.exec_driver_sql(
            f"CREATE INDEX {index_name(dim)} ON vectors USING hnsw "
            f"((embedding::vector({dim})) vector_cosine_ops) WHERE dim = {dim}"
        )


def top_k(
    conn: Connection,
    vectors: sa.Table,
    query: npt.NDArray[np.float32],
    names: list[str],
    k: int,
    *,
    approximate: bool,
) -> Sequence[Any]:
    """Rows ``(id, collection, owner, meta, score)`` of the ``k`` nearest, best first."""
    columns = [vectors.c[name] for name in _COLUMNS]
    dim = len(query)
    if approximate and dim <= HNSW_MAX_DIM:
        # the cast and the literal dim must match the partial index's expression and predicate
        distance = sa.cast(vectors.c.embedding, VECTOR(dim)).cosine_distance(query)
        conn.exec_driver_sql(f"SET LOCAL hnsw.ef_search = {max(40, min(1000, 10 * k))}")
        # the caller asked for the index: with statistics not yet analyzed (a freshly filled
        # table) the planner would otherwise scan the collection's B-tree instead
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
        rows = conn.execute(
            sa.select(*columns, (1 - distance).label("score"))
            .where(
                vectors.c.dim == sa.literal(dim, literal_execute=True),
                vectors.c.collection.in_(names),
            )
            .order_by(distance)
            .limit(k)
        ).all()
        if len(rows) == k:
            return rows
        # the filter starved the index walk: fall through to the exact query, planned freely
        conn.exec_driver_sql("RESET enable_seqscan")
        conn.exec_driver_sql("RESET enable_bitmapscan")
    distance = vectors.c.embedding.cosine_distance(query)
    return conn.execute(
        sa.select(*columns, (1 - distance).label("score"))
        .where(vectors.c.collection.in_(names))
        .order_by(distance)
        .limit(k)
    ).all()
