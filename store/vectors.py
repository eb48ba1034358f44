"""Vectors: embeddings with an owner and metadata, searched by cosine similarity.

The primitive the knowledge base builds on: a *collection* (a vector store) holds float32
embeddings of one dimension, each with an *owner* (the file its chunk came from, so deleting
a file deletes its chunks) and JSON metadata (the chunk's text, its position...). Search
returns the top ``k`` by cosine similarity over a set of collections, exactly by default.

- **Postgres**: pgvector's ``vector`` column and its cosine distance operator ``<=>``: exact
  search within the B-tree-indexed collections, or (``approximate=True``) a walk of a
  per-dimension HNSW index (:mod:`store.vector_pgvector`).
- **SQLite**: the embeddings are float32 BLOBs; search multiplies the query by an in-memory
  matrix of each collection's normalized rows (:mod:`store.vector_matrix`), loaded once and
  reloaded when the collection's version (bumped by every change, in the same transaction)
  moves, so a change made by another process is seen at the next search. Measured against
  sqlite-vec on this 2-core machine (see ``docs/state.md``): the brute-force scan is faster,
  and it needs no loadable extension, which many Python builds (pyenv's, macOS's) disable.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa

from pipeline.errors import InvalidInput
from store import vector_pgvector
from store.database import Database
from store.schema import vector_collections, vectors
from store.vector_matrix import MatrixCache

Embedding = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class VectorHit:
    """One search result."""

    id: int
    collection: str
    owner: str
    score: float
    """Cosine similarity with the query, in [-1, 1]."""
    meta: Mapping[str, Any]


def _checked(values: npt.ArrayLike, *, what: str) -> Embedding:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0:
        raise InvalidInput(f"{what} must be a 2-D array of embeddings", code="bad_embedding")
    if not np.isfinite(array).all():
        raise InvalidInput(f"{what} contains NaN or infinity", code="bad_embedding")
    if (np.linalg.norm(array, axis=1) == 0).any():
        raise InvalidInput(f"{what} contains a zero vector (no direction)", code="bad_embedding")
    return array


class Vectors:
    """Add, delete and search embeddings.

    Args:
        db: The database.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache = MatrixCache(db) if db.dialect == "sqlite" else None

    def add(
        self,
        collection: str,
        owner: str,
        embeddings: npt.ArrayLike,
        metas: Sequence[Mapping[str, Any]],
    ) -> list[int]:
        """Store embeddings (one row of ``embeddings`` per entry of ``metas``) in one
        transaction; returns their ids in order.

        Raises:
            InvalidInput: A shape, NaN or zero vector, a count that differs from ``metas``, or
                a dimension other than the collection's (set by its first embeddings).
        """
        array = _checked(embeddings, what="embeddings")
        if len(array) != len(metas):
            raise InvalidInput("one metadata mapping per embedding", code="bad_embedding")
        dim = int(array.shape[1])
        with self._db.write() as conn:
            stored = self._db.upsert(vector_collections).values(id=collection, dim=dim, version=0)
            created = conn.execute(
                stored.on_conflict_do_nothing(index_elements=["id"]).returning(
                    vector_collections.c.id
                )
            ).first()
            if created is not None and self._cache is None:
                vector_pgvector.ensure_index(conn, self._db, dim)
            have = conn.execute(
                vector_collections.update()
                .where(vector_collections.c.id == collection)
                .values(version=vector_collections.c.version + 1)
                .returning(vector_collections.c.dim)
            ).scalar_one()
            if have != dim:
                raise InvalidInput(
                    f"collection {collection!r} holds {have}-dimensional embeddings, not {dim}",
                    code="bad_embedding",
                )
            rows = [
                {
                    "collection": collection,
                    "owner": owner,
                    "dim": dim,
                    "embedding": row.tobytes() if self._cache else row,
                    "meta": dict(meta),
                }
                for row, meta in zip(array, metas, strict=True)
            ]
            # SQLAlchemy batches these ("insertmanyvalues") and keeps the ids in row order
            inserted = conn.execute(
                vectors.insert().returning(vectors.c.id, sort_by_parameter_order=True), rows
            )
            return [int(i) for i in inserted.scalars()]

    def delete_owner(self, owner: str, *, collection: str | None = None) -> int:
        """Delete an owner's embeddings (in one collection, or all); returns how many."""
        where = [vectors.c.owner == owner]
        if collection is not None:
            where.append(vectors.c.collection == collection)
        with self._db.write() as conn:
            touched = sa.select(vectors.c.collection).where(*where).distinct()
            conn.execute(
                vector_collections.update()
                .where(vector_collections.c.id.in_(touched))
                .values(version=vector_collections.c.version + 1)
            )
            return int(conn.execute(vectors.delete().where(*where)).rowcount)

    def delete_collection(self, collection: str) -> int:
        """Delete a collection and its embeddings; returns how many embeddings."""
        with self._db.write() as conn:
            count = conn.execute(
                vectors.delete().where(vectors.c.collection == collection)
            ).rowcount
            conn.execute(vector_collections.delete().where(vector_collections.c.id == collection))
        return int(count)

    def count(self, collection: str) -> int:
        """How many embeddings ``collection`` holds."""
        query = sa.select(sa.func.count()).where(vectors.c.collection == collection)
        with self._db.read() as conn:
            return int(conn.execute(query).scalar_one())

    def search(
        self,
        query: npt.ArrayLike,
        collections: Collection[str],
        k: int = 5,
        *,
        min_score: float | None = None,
        approximate: bool = False,
    ) -> list[VectorHit]:
        """The ``k`` embeddings most similar to ``query`` in ``collections``, best first.

        Args:
            query: One embedding.
            collections: Collection ids to search (unknown ones hold nothing).
            k: How many hits at most.
            min_score: Drop hits whose cosine similarity is below this.
            approximate: Postgres: walk the HNSW index (fast on large tables, may miss a
                true neighbour); SQLite's scan is always exact.

        Raises:
            InvalidInput: A malformed query, ``k < 1``, or a dimension that differs from a
                searched collection's.
        """
        vector = _checked(query, what="the query")
        if len(vector) != 1:
            raise InvalidInput("search takes one query embedding", code="bad_embedding")
        if k < 1:
            raise InvalidInput("k must be at least 1", param="k")
        names = sorted(set(collections))
        if not names:
            return []
        # one transaction (one pooled connection, one snapshot) for the whole search
        with self._db.read() as conn:
            dims: dict[str, int] = dict(
                conn.execute(
                    sa.select(vector_collections.c.id, vector_collections.c.dim).where(
                        vector_collections.c.id.in_(names)
                    )
                ).all()
            )
            wrong = {name: dim for name, dim in dims.items() if dim != vector.shape[1]}
            if wrong:
                raise InvalidInput(
                    f"the query has {vector.shape[1]} dimensions; collections {wrong} differ",
                    code="bad_embedding",
                )
            if not dims:
                return []
            if self._cache is None:
                rows = vector_pgvector.top_k(
                    conn, vectors, vector[0], sorted(dims), k, approximate=approximate
                )
                hits = [
                    VectorHit(r.id, r.collection, r.owner, float(r.score), r.meta) for r in rows
                ]
            else:
                found = self._cache.top_k(conn, vector[0], sorted(dims), k)
                hits = self._with_rows(conn, found)
        return [h for h in hits if min_score is None or h.score >= min_score]

    @staticmethod
    def _with_rows(conn: sa.Connection, hits: list[tuple[int, float]]) -> list[VectorHit]:
        if not hits:
            return []
        ids = [i for i, _ in hits]
        columns = (vectors.c.id, vectors.c.collection, vectors.c.owner, vectors.c.meta)
        rows = {r.id: r for r in conn.execute(sa.select(*columns).where(vectors.c.id.in_(ids)))}
        # a row deleted since the matrix was read is dropped, not reported
        return [
            VectorHit(i, rows[i].collection, rows[i].owner, score, rows[i].meta)
            for i, score in hits
            if i in rows
        ]
