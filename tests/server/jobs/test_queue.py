"""The job queue on the state store, on SQLite and on the real Postgres: claims, leases,
takeover of a dead worker's job, chunks recorded once, cancellation, limits, owners."""

from __future__ import annotations

import pytest

from pipeline.errors import EngineOverloaded
from pipeline.settings import JobSettings
from server.jobs.queue import JobQueue
from store import Store
from tests.store.conftest import Clock

TTL = 30.0


def _queue(store: Store, clock: Clock, **settings: object) -> JobQueue:
    return JobQueue(store, JobSettings(lease_ttl_s=TTL, **settings), clock=clock)  # type: ignore[arg-type]


def _submit(queue: JobQueue, owner: str | None = "key_a") -> str:
    job = queue.submit(
        "speech", b"Hello there. Bye.", content_type="text/plain", owner=owner, options={}
    )
    return job.id


def test_a_job_is_claimed_by_one_worker_and_leased(store: Store, clock: Clock) -> None:
    queue = _queue(store, clock)
    first = _submit(queue)
    clock.advance(1)
    second = _submit(queue)
    job = queue.claim("w1")
    assert job is not None and job.id == first and job.status == "running"
    assert job.runs[-1]["worker"] == "w1" and job.runs[-1]["resumed"] is False
    other = queue.claim("w2")
    assert other is not None and other.id == second  # the leased one is not handed out again
    assert queue.claim("w3") is None


def test_a_dead_workers_job_is_taken_over_after_its_lease_lapses(
    store: Store,
    clock: Clock,
) -> None:
    queue = _queue(store, clock)
    job_id = _submit(queue)
    job = queue.claim("w1")
    assert job is not None
    job = queue.save_plan(job, ["Hello there.", "Bye."])
    assert job is not None
    assert queue.chunk_done(job_id, 0, {"blob": "x"})
    clock.advance(TTL / 2)
    assert queue.claim("w2") is None  # w1's lease is alive
    clock.advance(TTL)  # w1 died: it stopped renewing
    taken = queue.claim("w2")
    assert taken is not None and taken.id == job_id
    assert taken.runs[-1] == {
        "worker": "w2",
        "started_at": clock.now,
        "chunks_done": 1,
        "resumed": True,
    }
    assert taken.failures == 1 and taken.chunks_total == 2
    assert queue.plan(taken) == ["Hello there.", "Bye."]  # the same cut as the first run
    assert not queue.renew(job_id, "w1")  # w1, if it was only slow, learns it must stop
    assert queue.renew(job_id, "w2")


def test_a_chunk_is_recorded_once(store: Store, clock: Clock) -> None:
    queue = _queue(store, clock)
    job_id = _submit(queue)
    assert queue.chunk_done(job_id, 3, {"text": "first"})
    assert not queue.chunk_done(job_id, 3, {"text": "late duplicate"})
    assert queue.chunk_done(job_id, 1, {"text": "other"})
    assert queue.chunk_results(job_id) == {1: {"text": "other"}, 3: {"text": "first"}}


def test_a_cancelled_job_stops_taking_progress_and_results(
    store: Store,
    clock: Clock,
) -> None:
    queue = _queue(store, clock)
    job_id = _submit(queue)
    job = queue.claim("w1")
    assert job is not None
    cancelled = queue.cancel(job_id)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert queue.progress(job, 1) is None  # the worker learns it must stop
    assert queue.succeed(job, "blob", "audio/wav") is None
    final = queue.get(job_id, owner="key_a")
    assert final is not None and final.status == "cancelled"
    assert queue.cancel(job_id) is None  # already ended


def test_a_job_that_keeps_killing_workers_fails(store: Store, clock: Clock) -> None:
    queue = _queue(store, clock, max_attempts=2)
    job_id = _submit(queue)
    assert queue.claim("w1") is not None
    clock.advance(TTL + 1)
    assert queue.claim("w2") is not None  # first takeover: failures 1
    clock.advance(TTL + 1)
    assert queue.claim("w3") is None  # second: failures 2 = max_attempts
    failed = queue.get(job_id, owner="key_a")
    assert failed is not None and failed.status == "failed"
    assert failed.error is not None and failed.error["code"] == "too_many_attempts"


def test_requeue_after_an_engine_failure_counts_it(store: Store, clock: Clock) -> None:
    queue = _queue(store, clock)
    job_id = _submit(queue)
    job = queue.claim("w1")
    assert job is not None
    queue.requeue(job, "w1", failed=True)
    again = queue.claim("w2")  # no lease to wait for: it was released
    assert again is not None and again.id == job_id and again.failures == 1
    queue.requeue(again, "w2", failed=False)  # a worker that stops costs no attempt
    last = queue.claim("w3")
    assert last is not None and last.failures == 1 and len(last.runs) == 3


def test_pending_limits_per_key_and_overall(store: Store, clock: Clock) -> None:
    queue = _queue(store, clock, max_pending=3, max_pending_per_key=2)
    queue.admit("key_a")
    _submit(queue, "key_a")
    _submit(queue, "key_a")
    with pytest.raises(EngineOverloaded):
        queue.admit("key_a")
    queue.admit("key_b")
    _submit(queue, "key_b")
    with pytest.raises(EngineOverloaded):
        queue.admit("key_c")  # three pending in all


def test_jobs_belong_to_their_key(store: Store, clock: Clock) -> None:
    queue = _queue(store, clock)
    mine = _submit(queue, "key_a")
    theirs = _submit(queue, "key_b")
    assert queue.get(mine, owner="key_a") is not None
    assert queue.get(theirs, owner="key_a") is None
    assert [j.id for j in queue.of_owner(owner="key_a")] == [mine]
    queue.delete(mine)
    assert queue.get(mine, any_owner=True) is None
    assert store.blobs.info(f"{mine}.input") is None
