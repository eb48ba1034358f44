"""Vector search latency: the store's backends, and sqlite-vec for the record.

``python -m tests.store.vector_bench [--n 10000] [--dim 384] [--queries 200]``

Measures top-5 search over one collection of ``n`` random embeddings, A/B interleaved query
by query (the machine may be shared): the store on SQLite (numpy scan of the cached matrix,
plus its version check and metadata queries), sqlite-vec's ``vec0`` KNN and its brute-force
``vec_distance_cosine`` over the same BLOBs (these two only when ``pysqlite3`` and
``sqlite_vec`` are importable: the standard library's sqlite3 of many Python builds cannot
load extensions), and the store on the test Postgres (pgvector, exact). Prints p50/p95 in ms.
Not a test: it asserts nothing, it reports.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from store import Store

Search = Callable[[np.ndarray], Any]


def _store(url: str, data: np.ndarray) -> Store:
    store = Store.open(url=url)
    metas = [{"chunk": i, "text": f"chunk {i}"} for i in range(len(data))]
    for start in range(0, len(data), 1000):
        end = start + 1000
        store.vectors.add("vs_bench", "file_1", data[start:end], metas[start:end])
    return store


def _sqlite_vec_searches(path: Path, data: np.ndarray) -> dict[str, Search]:
    try:
        import pysqlite3  # type: ignore[import-not-found]
        import sqlite_vec  # type: ignore[import-untyped]
    except ImportError:
        return {}
    conn = pysqlite3.connect(str(path))
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    dim = data.shape[1]
    conn.execute(
        f"CREATE VIRTUAL TABLE knn USING vec0(collection text partition key, "
        f"embedding float[{dim}] distance_metric=cosine, +meta text)"
    )
    conn.execute(
        "CREATE TABLE flat (id INTEGER PRIMARY KEY, collection TEXT, embedding BLOB, meta TEXT)"
    )
    conn.execute("CREATE INDEX flat_collection ON flat(collection)")
    rows = [(i + 1, "vs_bench", v.tobytes(), f"chunk {i}") for i, v in enumerate(data)]
    conn.executemany("INSERT INTO knn(rowid, collection, embedding, meta) VALUES (?,?,?,?)", rows)
    conn.executemany("INSERT INTO flat VALUES (?,?,?,?)", rows)
    conn.commit()

    def knn(q: np.ndarray) -> Any:
        return conn.execute(
            "SELECT rowid, distance, meta FROM knn WHERE embedding MATCH ? AND k = 5 "
            "AND collection = ?",
            (q.astype(np.float32).tobytes(), "vs_bench"),
        ).fetchall()

    def flat(q: np.ndarray) -> Any:
        return conn.execute(
            "SELECT id, vec_distance_cosine(embedding, ?) AS d, meta FROM flat "
            "WHERE collection = ? ORDER BY d LIMIT 5",
            (q.astype(np.float32).tobytes(), "vs_bench"),
        ).fetchall()

    return {"sqlite-vec vec0 knn": knn, "sqlite-vec flat scan": flat}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    data = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    queries = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    closers: list[Callable[[], None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        searches: dict[str, Search] = {}
        lite = _store(f"sqlite:///{tmp}/s.db", data)
        closers.append(lite.close)
        searches["store sqlite (numpy)"] = lambda q: lite.vectors.search(q, ["vs_bench"], k=5)
        searches.update(_sqlite_vec_searches(Path(tmp) / "vec.db", data))
        server = None
        if not args.no_postgres:
            from tests.postgres import start_postgres

            server = start_postgres()
            pg = _store(server.url(server.create_database()), data)
            closers.append(pg.close)
            searches["store postgres exact"] = lambda q: pg.vectors.search(q, ["vs_bench"], k=5)
            searches["store postgres hnsw"] = lambda q: pg.vectors.search(
                q, ["vs_bench"], k=5, approximate=True
            )
        times: dict[str, list[float]] = {name: [] for name in searches}
        for search in searches.values():  # warm: caches loaded, plans made
            search(queries[0])
        for q in queries:  # interleaved: A, B, C, A, B, C...
            for name, search in searches.items():
                start = time.perf_counter()
                search(q)
                times[name].append((time.perf_counter() - start) * 1000)
        for close in closers:
            close()
        if server is not None:
            server.stop()
    print(f"top-5 of {args.n} x {args.dim} float32, {args.queries} queries interleaved")
    for name, ms in times.items():
        p95 = statistics.quantiles(ms, n=20)[18]
        print(f"  {name:28s} p50 {statistics.median(ms):7.2f} ms   p95 {p95:7.2f} ms")


if __name__ == "__main__":
    main()
