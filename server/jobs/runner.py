"""The job worker of a server process: claims jobs from the store and runs them.

It runs in the app's lifespan (``jobs.workers`` jobs at once; 0 turns it off, for replicas that
only accept jobs). Idle, it looks for work every ``poll_interval_s`` and at once when this
process accepted a job. For each job it runs, a keeper renews the lease (every third of
``lease_ttl_s``) and watches the status: a cancelled job, or a lease lost to another worker, stops
the run at once (its chunks in flight are cancelled, which stops their engines).

How a run ends decides what happens to the job: done -> ``succeeded``; the input's fault
(``InvalidInput``) -> ``failed`` with its message; an engine failure (a retryable
``StageError``) -> back to ``queued`` after a pause, counted against ``max_attempts`` unless it
was a busy engine's refusal (``EngineBusy``: batch work waits for spare capacity); this
process stopping -> back to ``queued`` (another worker, or this one restarted, resumes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from pipeline.errors import EngineBusy, InvalidInput, StageError
from pipeline.settings import JobSettings
from server.jobs.queue import JobQueue, worker_id
from server.jobs.records import Job
from server.jobs.work import JobContext, Stopped, run_job

log = logging.getLogger("voxline.jobs")

ContextFactory = Callable[[], Awaitable[JobContext | None]]
"""The context for the next job, or ``None`` while the engines are not ready."""


class JobRunner:
    """Claims and runs jobs until closed.

    Args:
        queue: The job queue.
        context: Builds a run's context (``None``: not ready, nothing is claimed).
        settings: The ``jobs`` settings.
        worker: This worker's name in leases and run records (default: a fresh one).
    """

    def __init__(
        self,
        queue: JobQueue,
        context: ContextFactory,
        settings: JobSettings,
        *,
        worker: str | None = None,
    ) -> None:
        self.queue = queue
        self.worker = worker or worker_id()
        self._context = context
        self._settings = settings
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._runs: dict[str, asyncio.Task[None]] = {}

    @property
    def running(self) -> tuple[str, ...]:
        """Ids of the jobs this worker runs now."""
        return tuple(self._runs)

    def start(self) -> None:
        """Start claiming (call from the event loop)."""
        if self._loop_task is None and self._settings.workers > 0:
            self._loop_task = asyncio.create_task(self._loop(), name="jobs-runner")

    def wake(self) -> None:
        """Look for work now (a job was just accepted)."""
        self._wake.set()

    async def aclose(self) -> None:
        """Stop claiming; the jobs in progress go back to the queue for the next worker."""
        tasks = [t for t in (self._loop_task, *self._runs.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None

    async def _loop(self) -> None:
        while True:
            try:
                claimed = await self._claim()
            except Exception:  # the store is down: try again later, never die
                log.exception("claiming a job failed")
                claimed = False
            if claimed:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.poll_interval_s)

    async def _claim(self) -> bool:
        if len(self._runs) >= self._settings.workers:
            return False
        context = await self._context()
        if context is None:
            return False
        try:
            job = await asyncio.to_thread(self.queue.claim, self.worker)
        except BaseException:
            context.done()
            raise
        if job is None:
            context.done()
            return False
        log.info("job %s (%s) started by %s", job.id, job.kind, self.worker)
        task = asyncio.create_task(self._run(job, context), name=f"job-{job.id}")
        self._runs[job.id] = task
        task.add_done_callback(lambda _: self._finished(job.id))
        return True

    def _finished(self, job_id: str) -> None:
        self._runs.pop(job_id, None)
        self._wake.set()  # a slot is free

    async def _run(self, job: Job, context: JobContext) -> None:
        queue = self.queue
        work = asyncio.create_task(run_job(job, context), name=f"job-work-{job.id}")
        keeper = asyncio.create_task(self._keep(job.id, work), name=f"job-lease-{job.id}")
        release = True
        try:
            done = await work
            log.info("job %s succeeded", done.id)
        except Stopped:
            log.info("job %s stopped (cancelled, or taken over)", job.id)
        except InvalidInput as exc:
            await asyncio.to_thread(queue.fail, job.id, exc.code or "invalid_input", exc.message)
        except StageError as exc:
            if not exc.retryable:
                await asyncio.to_thread(queue.fail, job.id, "engine_error", exc.message)
            else:
                # a refusal by a busy engine (batch work gets only spare capacity) is no
                # failure: the job waits its turn without spending an attempt
                busy = isinstance(exc, EngineBusy)
                log.warning(
                    "job %s: engine %s, queued again: %s",
                    job.id,
                    "busy" if busy else "failure",
                    exc,
                )
                await asyncio.sleep(min(30.0, self._settings.poll_interval_s * 5))
                await asyncio.to_thread(queue.requeue, job, self.worker, failed=not busy)
                release = False
        except asyncio.CancelledError:
            if keeper.done() and not keeper.cancelled() and keeper.result():
                log.info("job %s stopped: %s", job.id, keeper.result())
            else:
                # this process stops: the job goes back to the queue, resumed from its last chunk
                await asyncio.shield(
                    asyncio.to_thread(queue.requeue, job, self.worker, failed=False)
                )
                release = False
                raise
        except Exception as exc:  # a bug: the job fails, the worker lives on
            log.exception("job %s failed", job.id)
            await asyncio.to_thread(queue.fail, job.id, "internal_error", type(exc).__name__)
        finally:
            keeper.cancel()
            if not work.done():
                work.cancel()
            await asyncio.gather(keeper, work, return_exceptions=True)
            context.done()  # its engines may close now, if their release no longer serves
            if release:
                await asyncio.shield(asyncio.to_thread(queue.release, job.id, self.worker))

    async def _keep(self, job_id: str, work: asyncio.Task[Job]) -> str | None:
        """Renew the lease and watch the status until the run ends; stop the run when the job
        is no longer ours, and say why."""
        loop = asyncio.get_running_loop()
        renew_every = self._settings.lease_ttl_s / 3
        renewed = loop.time()
        while not work.done():
            await asyncio.sleep(min(self._settings.poll_interval_s, renew_every))
            current = await asyncio.to_thread(self.queue.get, job_id, any_owner=True)
            if current is None or current.status != "running":
                work.cancel()
                return "cancelled" if current is not None else "deleted"
            if loop.time() - renewed >= renew_every:
                if not await asyncio.to_thread(self.queue.renew, job_id, self.worker):
                    log.warning("job %s: lease lost; stopping", job_id)
                    work.cancel()
                    return "lease lost"
                renewed = loop.time()
        return None
