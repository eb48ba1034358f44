"""Vectors: top-k cosine search checked against a brute-force reference, on both backends."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.errors import InvalidInput
from store import Store


def _reference(data: dict[str, np.ndarray], query: np.ndarray, names: list[str], k: int):  # type: ignore[no-untyped-def]
    """(collection, row index, score) of the k best, by plain numpy."""
    scored = []
    unit = query / np.linalg.norm(query)
    for name in names:
        rows = data[name] / np.linalg.norm(data[name], axis=1, keepdims=True)
        scored += [(name, i, float(s)) for i, s in enumerate(rows @ unit)]
    return sorted(scored, key=lambda t: -t[2])[:k]


@pytest.fixture
def filled(store: Store) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    data = {name: rng.standard_normal((n, 32)).astype(np.float32) for name, n in
            [("vs_a", 300), ("vs_b", 200), ("vs_c", 50)]}  # fmt: skip
    for name, rows in data.items():
        half = len(rows) // 2
        for owner, part, offset in (("file_1", rows[:half], 0), ("file_2", rows[half:], half)):
            metas = [
                {"row": offset + i, "text": f"{name} chunk {offset + i}"} for i in range(len(part))
            ]
            store.vectors.add(name, f"{name}/{owner}", part, metas)
    return data


@pytest.mark.parametrize("approximate", [False, True])
def test_top_k_matches_a_brute_force_reference(
    store: Store, filled: dict[str, np.ndarray], approximate: bool
) -> None:
    rng = np.random.default_rng(11)
    for names, k in ((["vs_a"], 5), (["vs_a", "vs_c"], 10), (["vs_b", "vs_c", "vs_missing"], 3)):
        for _ in range(5):
            query = rng.standard_normal(32).astype(np.float32)
            hits = store.vectors.search(query, names, k, approximate=approximate)
            expected = _reference(filled, query, [n for n in names if n in filled], k)
            got = [(h.collection, h.meta["row"]) for h in hits]
            if approximate:  # HNSW may miss a neighbour; most must be there, in order
                assert len(hits) == k
                assert len(set(got) & {(c, i) for c, i, _ in expected}) >= k - 1
            else:
                assert got == [(c, i) for c, i, _ in expected]
                assert [h.score for h in hits] == pytest.approx([s for *_, s in expected], abs=1e-5)
            assert all(h.owner.startswith(h.collection) for h in hits)


def test_an_exact_match_scores_one_and_min_score_filters(
    store: Store, filled: dict[str, np.ndarray]
) -> None:
    target = filled["vs_b"][17] * 3.0  # scale does not change the direction
    [best] = store.vectors.search(target, ["vs_a", "vs_b"], 1)
    assert (best.collection, best.meta["row"]) == ("vs_b", 17)
    assert best.score == pytest.approx(1.0, abs=1e-5)
    assert best.meta["text"] == "vs_b chunk 17"
    assert len(store.vectors.search(target, ["vs_b"], 5, min_score=0.99)) == 1


def test_deleting_an_owner_or_collection_removes_its_vectors(
    store: Store, filled: dict[str, np.ndarray]
) -> None:
    query = filled["vs_a"][3]
    assert store.vectors.search(query, ["vs_a"], 1)[0].meta["row"] == 3  # warms the cache
    assert store.vectors.delete_owner("vs_a/file_1") == 150
    assert store.vectors.count("vs_a") == 150
    hits = store.vectors.search(query, ["vs_a"], 200)
    assert len(hits) == 150 and all(h.owner == "vs_a/file_2" for h in hits)
    assert store.vectors.delete_collection("vs_a") == 150
    assert store.vectors.search(query, ["vs_a"], 5) == []
    assert store.vectors.count("vs_b") == 200


def test_a_change_by_another_process_is_seen(store_url: str, store: Store) -> None:
    rows = np.eye(4, dtype=np.float32)
    store.vectors.add("vs", "f", rows[:2], [{"i": 0}, {"i": 1}])
    assert store.vectors.search(rows[2] + rows[0] * 0.1, ["vs"], 1)[0].meta == {"i": 0}
    with Store.open(url=store_url) as other:  # another process's store: its own cache
        other.vectors.add("vs", "g", rows[2:3], [{"i": 2}])
    assert store.vectors.search(rows[2] + rows[0] * 0.1, ["vs"], 1)[0].meta == {"i": 2}


def test_bad_embeddings_are_refused(store: Store) -> None:
    store.vectors.add("vs", "f", np.ones((1, 4)), [{}])
    with pytest.raises(InvalidInput):
        store.vectors.add("vs", "f", np.ones((1, 5)), [{}])  # another dimension
    with pytest.raises(InvalidInput):
        store.vectors.add("vs", "f", np.zeros((1, 4)), [{}])
    with pytest.raises(InvalidInput):
        store.vectors.add("vs", "f", np.full((1, 4), np.nan), [{}])
    with pytest.raises(InvalidInput):
        store.vectors.add("vs", "f", np.ones((2, 4)), [{}])
    with pytest.raises(InvalidInput):
        store.vectors.search(np.ones(5), ["vs"], 1)
    with pytest.raises(InvalidInput):
        store.vectors.search(np.ones(4), ["vs"], 0)
    assert store.vectors.count("vs") == 1
    assert store.vectors.search(np.ones(4), [], 3) == []


def test_approximate_search_on_postgres_walks_the_hnsw_index(postgres_url: str) -> None:
    rng = np.random.default_rng(3)
    with Store.open(url=postgres_url) as store:
        store.vectors.add("vs", "f", rng.standard_normal((500, 16)), [{}] * 500)

        def index_scans() -> int:
            with store.db.read() as conn:
                return int(
                    conn.exec_driver_sql(
                        "SELECT idx_scan FROM pg_stat_user_indexes "
                        "WHERE indexrelname = 'vectors_hnsw_16'"
                    ).scalar_one()
                )

        before = index_scans()
        hits = store.vectors.search(rng.standard_normal(16), ["vs"], 5, approximate=True)
        assert len(hits) == 5
        # statistics reach the view with a delay; poll briefly
        for _ in range(300):  # a hang guard: the view catches up within a second or so
            if index_scans() > before:
                break
            time.sleep(0.1)
        assert index_scans() > before
