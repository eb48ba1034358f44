"""Documents: versions, compare-and-set transitions, and claims that never collide."""

from __future__ import annotations

import threading

import pytest

from store import Conflict, NotFound, Store
from tests.store.conftest import Clock


def test_documents_are_created_read_updated_and_deleted(store: Store, clock: Clock) -> None:
    jobs = store.documents("job")
    created = jobs.create("job_1", {"kind": "transcription", "progress": 0.0}, status="queued")
    assert created.version == 1 and jobs.get("job_1") == created
    assert store.documents("release").get("job_1") is None  # kinds are separate
    with pytest.raises(Conflict):
        jobs.create("job_1", {}, status="queued")
    clock.advance(5)
    updated = jobs.update("job_1", payload={"progress": 0.5}, expect_version=1)
    assert (updated.version, updated.payload, updated.status) == (2, {"progress": 0.5}, "queued")
    assert updated.updated_at == created.updated_at + 5 and updated.created_at == created.created_at
    with pytest.raises(Conflict):
        jobs.update("job_1", status="running", expect_version=1)  # stale
    with pytest.raises(NotFound):
        jobs.update("job_2", status="running")
    assert jobs.delete("job_1") and not jobs.delete("job_1")


def test_transitions_are_compare_and_set(store: Store) -> None:
    releases = store.documents("release")
    releases.create("r1", {"name": "r1"}, status="candidate")
    assert releases.transition("r1", "active", "retired") is None
    active = releases.transition("r1", ["candidate", "retired"], "active")
    assert active is not None and active.status == "active" and active.version == 2
    assert [d.id for d in releases.list(status="active")] == ["r1"]
    assert releases.list(status=["candidate"]) == []


def test_concurrent_claims_take_each_document_once(store: Store, clock: Clock) -> None:
    jobs = store.documents("job")
    for i in range(20):
        clock.advance(1)
        jobs.create(f"job_{i:02d}", {"n": i}, status="queued")
    assert jobs.claim_next("queued", "running").id == "job_00"  # type: ignore[union-attr]
    claimed: list[str] = []

    def worker() -> None:
        while (doc := jobs.claim_next("queued", "running")) is not None:
            claimed.append(doc.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [f"job_{i:02d}" for i in range(1, 20)]
    assert len(jobs.list(status="running")) == 20
    assert jobs.claim_next("queued", "running") is None
