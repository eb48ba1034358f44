"""The job queue, in the state store: submit, claim, lease, record chunks, finish.

Everything durable about a job is written the moment it exists, so a ``kill -9`` of any worker
loses nothing accepted and redoes nothing finished:

- ``submit`` stores the input as a blob, then the job document (``queued``): once the client
  has its id, the job is on disk (SQLite's WAL or Postgres).
- ``claim`` takes the oldest queued job (``claim_next``: two workers never get the same one) or
  a ``running`` job whose worker died, and holds a lease on it (scope ``job:<id>``, one holder,
  renewed by the worker; a dead worker's lease lapses after ``lease_ttl_s``).
- every finished chunk is a document of its own (kind ``jobchunk:<job id>``, id the chunk's
  index), created once: a resumed run reads them and does only the others; a late duplicate (a
  worker that lost its lease but finished anyway) is refused by the store (``Conflict``).
- progress, the result and the final status are compare-and-set on ``running``, so a job
  cancelled meanwhile stays cancelled.

Blocking (each call is a short transaction); async code calls it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

from pipeline.errors import EngineOverloaded
from pipeline.settings import JobSettings
from server.jobs.records import ACTIVE, DOCUMENT_KIND, Job, JobKind, JobStatus, job_of
from store import Conflict, Store


def worker_id() -> str:
    """A name for this worker process, unique across restarts and machines."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _chunk_kind(job_id: str) -> str:
    return f"jobchunk:{job_id}"


class JobQueue:
    """Jobs in ``store`` (one instance per process; thread-safe like the store).

    Args:
        store: The state store.
        settings: The ``jobs`` settings (limits, lease length, attempts).
        clock: Unix time source.
    """

    def __init__(
        self, store: Store, settings: JobSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.settings = settings
        self.docs = store.documents(DOCUMENT_KIND)
        self._clock = clock

    # ------------------------------------------------------------------------------ clients

    def admit(self, owner: str | None) -> None:
        """Refuse a new job when too many are pending (all callers, or this one).

        A soft limit: two submissions at the same moment may both pass the count.

        Raises:
            EngineOverloaded: too many queued or running jobs (the API answers 429).
        """
        limit = self.settings.max_pending
        pending = self.docs.list(status=ACTIVE, limit=limit + 1)
        if len(pending) > limit - 1:
            raise EngineOverloaded(
                f"{len(pending)} jobs are pending; the limit is {limit}",
                stage="pipeline",
                backend="jobs",
            )
        mine = sum(1 for d in pending if d.payload.get("owner") == owner)
        if mine >= self.settings.max_pending_per_key:
            raise EngineOverloaded(
                f"this key has {mine} pending jobs; the limit is "
                f"{self.settings.max_pending_per_key}",
                stage="pipeline",
                backend="jobs",
            )

    def submit(
        self,
        kind: JobKind,
        source: bytes | IO[bytes] | Iterable[bytes],
        *,
        content_type: str,
        owner: str | None,
        options: Mapping[str, Any],
        input_seconds: float | None = None,
    ) -> Job:
        """Store the input, then the job (``queued``); admission is the caller's (``admit``)."""
        job_id = "job_" + secrets.token_hex(12)
        blob = self.store.blobs.put(
            source,
            content_type=content_type,
            blob_id=f"{job_id}.input",
            max_bytes=self.settings.max_bytes,
        )
        now = self._clock()
        job = Job(
            id=job_id,
            kind=kind,
            status="queued",
            owner=owner,
            input_blob=blob.id,
            options=dict(options),
            created_at=now,
            updated_at=now,
            input_seconds=input_seconds,
        )
        try:
            doc = self.docs.create(job_id, job.payload(), status="queued")
        except BaseException:
            self.store.blobs.delete(blob.id)
            raise
        return job_of(doc)

    def get(self, job_id: str, *, owner: str | None = None, any_owner: bool = False) -> Job | None:
        """The job, if it exists and belongs to ``owner`` (or ``any_owner``)."""
        doc = self.docs.get(job_id)
        if doc is None:
            return None
        job = job_of(doc)
        return job if any_owner or job.owner == owner else None

    def of_owner(
        self, *, owner: str | None, status: JobStatus | None = None, limit: int = 20
    ) -> list[Job]:
        """The owner's jobs, newest first."""
        found: list[Job] = []
        offset = 0
        while True:  # oldest first in the store; the owner filter is applied here
            page = self.docs.list(status=status, limit=500, offset=offset)
            found += [j for j in map(job_of, page) if j.owner == owner]
            if len(page) < 500:
                break
            offset += 500
        return sorted(found, key=lambda j: (j.created_at, j.id), reverse=True)[:limit]

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (its worker stops within a poll interval); ``None``
        when it had already ended."""
        doc = self.docs.transition(job_id, list(ACTIVE), "cancelled")
        return None if doc is None else job_of(doc)

    def delete(self, job_id: str) -> None:
        """Forget a job: its document, chunks and blobs."""
        job = self.get(job_id, any_owner=True)
        if job is None:
            return
        chunks = self.store.documents(_chunk_kind(job_id))
        for doc in chunks.list(limit=1_000_000):
            chunks.delete(doc.id)
            if blob := doc.payload.get("blob"):
                self.store.blobs.delete(blob)
        for blob in (job.input_blob, job.plan_blob, job.result_blob):
            if blob:
                self.store.blobs.delete(blob)
        self.docs.delete(job_id)

    # ------------------------------------------------------------------------------ workers

    def claim(self, worker: str) -> Job | None:
        """A job for ``worker`` to run, leased to it: one whose worker died (it resumes), else
        the oldest queued one; ``None`` when there is none.

        A job started ``max_attempts`` times already is failed instead of started again (its
        input may be what kills the workers).
        """
        for doc in self.docs.list(status="running", limit=100):
            if self.store.leases.count(self._scope(doc.id)):
                continue  # its worker is alive
            job = self._take(job_of(doc), worker, resumed=True)
            if job is not None:
                return job
        while (queued := self.docs.claim_next("queued", "running")) is not None:
            job = self._take(job_of(queued), worker, resumed=False)
            if job is not None:
                return job
        return None

    def _take(self, job: Job, worker: str, *, resumed: bool) -> Job | None:
        lease = self.store.leases.acquire(
            self._scope(job.id), worker, ttl_s=self.settings.lease_ttl_s
        )
        if lease is None:
            return None  # another worker took it first
        failures = job.failures + (1 if resumed else 0)  # its last worker died running it
        if failures >= self.settings.max_attempts:
            self.fail(
                job.id,
                "too_many_attempts",
                f"the job failed {failures} times (workers died or engines failed running it)",
            )
            self.release(job.id, worker)
            return None
        done = len(self.chunk_results(job.id))
        run = {
            "worker": worker,
            "started_at": self._clock(),
            "chunks_done": done,
            "resumed": resumed,
        }
        updated = job.with_(runs=(*job.runs, run), chunks_done=done, failures=failures)
        doc = self.docs.transition(job.id, "running", "running", payload=updated.payload())
        if doc is None:  # cancelled meanwhile
            self.release(job.id, worker)
            return None
        return job_of(doc)

    def renew(self, job_id: str, worker: str) -> bool:
        """Keep the lease; ``False`` when it was lost (stop: another worker may run the job)."""
        lease = self.store.leases.renew(
            self._scope(job_id), worker, ttl_s=self.settings.lease_ttl_s
        )
        return lease is not None

    def release(self, job_id: str, worker: str) -> None:
        """Give the lease up (the job ended, or the worker stops)."""
        self.store.leases.release(self._scope(job_id), worker)

    def requeue(self, job: Job, worker: str, *, failed: bool) -> None:
        """Put a running job back in the queue: this worker stops (``failed=False``), or its
        engines failed (``failed=True``: counted against ``max_attempts``)."""
        current = self.get(job.id, any_owner=True)
        if current is not None:
            updated = current.with_(failures=current.failures + (1 if failed else 0))
            self.docs.transition(job.id, "running", "queued", payload=updated.payload())
        self.release(job.id, worker)

    @staticmethod
    def _scope(job_id: str) -> str:
        return f"job:{job_id}"

    # ------------------------------------------------------------------------------ progress

    def save_plan(self, job: Job, plan: list[Any]) -> Job | None:
        """Store a job's chunk plan (once: a resumed run reads it back); ``None`` when the job
        is no longer running."""
        data = json.dumps(plan, separators=(",", ":")).encode()
        blob_id = f"{job.id}.plan"
        try:
            self.store.blobs.put(data, content_type="application/json", blob_id=blob_id)
        except Conflict:  # an earlier run stored it and died before saying so
            pass
        updated = job.with_(plan_blob=blob_id, chunks_total=len(plan))
        doc = self.docs.transition(job.id, "running", "running", payload=updated.payload())
        return None if doc is None else job_of(doc)

    def plan(self, job: Job) -> list[Any] | None:
        """The job's stored chunk plan, if it has one."""
        if job.plan_blob is None:
            return None
        loaded: list[Any] = json.loads(self.store.blobs.read(job.plan_blob))
        return loaded

    def chunk_done(self, job_id: str, index: int, result: Mapping[str, Any]) -> bool:
        """Record a finished chunk; ``False`` if it was already recorded (nothing changes)."""
        chunks = self.store.documents(_chunk_kind(job_id))
        try:
            chunks.create(f"{index:07d}", result, status="done")
        except Conflict:
            return False
        return True

    def chunk_results(self, job_id: str) -> dict[int, Mapping[str, Any]]:
        """The finished chunks' results by index."""
        chunks = self.store.documents(_chunk_kind(job_id))
        return {int(d.id): d.payload for d in chunks.list(limit=10_000_000)}

    def progress(self, job: Job, chunks_done: int) -> Job | None:
        """Record how many chunks are done; ``None`` when the job is no longer running
        (cancelled: the worker stops)."""
        updated = job.with_(chunks_done=chunks_done)
        doc = self.docs.transition(job.id, "running", "running", payload=updated.payload())
        return None if doc is None else job_of(doc)

    def succeed(self, job: Job, result_blob: str, result_type: str) -> Job | None:
        """The job is done; ``None`` if it was cancelled meanwhile."""
        updated = job.with_(
            result_blob=result_blob, result_type=result_type, chunks_done=job.chunks_total or 0
        )
        doc = self.docs.transition(job.id, "running", "succeeded", payload=updated.payload())
        return None if doc is None else job_of(doc)

    def fail(self, job_id: str, code: str, message: str) -> Job | None:
        """The job failed for good (``code``, ``message`` are shown to its owner)."""
        doc = self.docs.get(job_id)
        if doc is None:
            return None
        job = job_of(doc).with_(error={"code": code, "message": message})
        moved = self.docs.transition(job_id, list(ACTIVE), "failed", payload=job.payload())
        return None if moved is None else job_of(moved)
