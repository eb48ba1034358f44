"""Leases: limits per scope, expiry, renewal, and two processes sharing one limit."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import InvalidInput
from store import Store
from tests.store.conftest import Clock
from tests.store.worker import spawn


def test_a_scope_holds_at_most_its_limit(store: Store, clock: Clock) -> None:
    a = store.leases.acquire("sessions:k", "a", ttl_s=30, limit=2)
    b = store.leases.acquire("sessions:k", "b", ttl_s=30, limit=2)
    assert a is not None and b is not None
    assert store.leases.acquire("sessions:k", "c", ttl_s=30, limit=2) is None
    assert store.leases.acquire("sessions:other", "c", ttl_s=30, limit=2) is not None
    assert store.leases.count("sessions:k") == 2
    assert [x.holder for x in store.leases.holders("sessions:k")] == ["a", "b"]
    assert store.leases.release("sessions:k", "a")
    assert not store.leases.release("sessions:k", "a")
    assert store.leases.acquire("sessions:k", "c", ttl_s=30, limit=2) is not None


def test_acquire_again_renews_rather_than_taking_a_second_slot(store: Store, clock: Clock) -> None:
    first = store.leases.acquire("job:1", "w1", ttl_s=10)
    clock.advance(5)
    again = store.leases.acquire("job:1", "w1", ttl_s=10)
    assert first is not None and again is not None
    assert again.expires_at == clock.now + 10 and again.acquired_at == first.acquired_at
    assert store.leases.acquire("job:1", "w2", ttl_s=10) is None


def test_a_dead_holders_lease_lapses_and_cannot_be_renewed(store: Store, clock: Clock) -> None:
    assert store.leases.acquire("job:7", "dead", ttl_s=10) is not None
    clock.advance(9)
    renewed = store.leases.renew("job:7", "dead", ttl_s=10)
    assert renewed is not None and renewed.expires_at == clock.now + 10
    clock.advance(10)
    assert store.leases.count("job:7") == 0
    assert store.leases.renew("job:7", "dead", ttl_s=10) is None
    taken = store.leases.acquire("job:7", "alive", ttl_s=10)
    assert taken is not None and taken.holder == "alive"
    clock.advance(11)
    assert store.leases.purge() == 1


def test_bad_lease_arguments_are_refused(store: Store) -> None:
    with pytest.raises(InvalidInput):
        store.leases.acquire("s", "h", ttl_s=0)


def test_two_processes_share_one_session_limit(store_url: str, store: Store) -> None:
    workers = [spawn("acquire", store_url, "sessions:k", "7", "10", "1000.0") for _ in range(2)]
    for w in workers:
        assert w.stdout is not None and w.stdout.readline().strip() == "ready"
    for w in workers:
        assert w.stdin is not None
        w.stdin.write("go\n")
        w.stdin.flush()
    counts = [json.loads(w.communicate(timeout=120)[0].strip()) for w in workers]
    assert sum(counts) == 7, counts
