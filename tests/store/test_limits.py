"""Rate limits (GCRA) on both backends, from one process and from two."""

from __future__ import annotations

import json
import math
import threading

import pytest

from pipeline.errors import InvalidInput
from store import Store
from tests.store.conftest import Clock
from tests.store.worker import spawn


def test_a_burst_of_the_limit_passes_then_one_more_is_refused(store: Store, clock: Clock) -> None:
    decisions = [store.rate_limits.hit("rpm:k", 3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[0].reset_s == pytest.approx(20.0)
    assert decisions[2].reset_s == pytest.approx(60.0)
    refused = decisions[3]
    assert refused.limit == 3 and refused.retry_after_s == pytest.approx(20.0)
    # the window slides: after a third of it, exactly one more request fits
    clock.advance(20)
    assert store.rate_limits.hit("rpm:k", 3).allowed
    assert not store.rate_limits.hit("rpm:k", 3).allowed
    clock.advance(60)
    assert store.rate_limits.peek("rpm:k", 3).remaining == 3


def test_scopes_are_independent_and_cost_counts_units(store: Store) -> None:
    assert store.rate_limits.hit("tpm:a", 100, cost=60).remaining == 40
    assert not store.rate_limits.hit("tpm:a", 100, cost=41).allowed
    assert store.rate_limits.hit("tpm:a", 100, cost=40).remaining == 0
    assert store.rate_limits.hit("tpm:b", 100, cost=100).allowed
    too_big = store.rate_limits.hit("tpm:c", 100, cost=101)
    assert not too_big.allowed and math.isinf(too_big.retry_after_s)
    assert not store.rate_limits.hit("rpm:zero", 0).allowed
    with pytest.raises(InvalidInput):
        store.rate_limits.hit("rpm:x", 10, window_s=0)


def test_expired_buckets_are_purged(store: Store, clock: Clock) -> None:
    store.rate_limits.hit("rpm:a", 10)
    assert store.rate_limits.purge() == 0
    clock.advance(6.1)
    assert store.rate_limits.purge() == 1


def test_threads_share_one_limit(store: Store) -> None:
    allowed: list[bool] = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(15):
            ok = store.rate_limits.hit("rpm:shared", 20).allowed
            with lock:
                allowed.append(ok)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == 60 and sum(allowed) == 20


def test_two_processes_enforce_one_limit_together(store_url: str, store: Store) -> None:
    # the store fixture has migrated the database; the workers share it on a frozen clock
    workers = [spawn("hit", store_url, "rpm:two", "25", "40", "1000.0") for _ in range(2)]
    for w in workers:
        assert w.stdout is not None and w.stdout.readline().strip() == "ready"
    for w in workers:
        assert w.stdin is not None
        w.stdin.write("go\n")
        w.stdin.flush()
    counts = [json.loads(w.communicate(timeout=120)[0].strip()) for w in workers]
    assert all(w.returncode == 0 for w in workers)
    # per-process limits would let 50 through
    assert sum(counts) == 25, counts
