"""The jobs of one server process: the queue every route uses and this process's worker."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from models.registry import Engines
from pipeline.settings import Settings
from pipeline.vad import VAD
from server.accounting import Accounting
from server.identity import Identity
from server.jobs.kinds import Calls, ChunkWorker
from server.jobs.queue import JobQueue
from server.jobs.records import Job
from server.jobs.runner import JobRunner
from server.jobs.work import JobContext, LocalChunks
from server.releases import LiveRelease
from store import Store


class JobService:
    """The queue (``queue``) and the worker (``runner``) of this process.

    Args:
        store: The state store.
        settings: The server's settings.
        lease: The release a new job runs on (its engines and settings), held until the run
            ends (``None`` while no release is ready: no job is claimed); ``unlease`` lets go.
        vad: Loads the shared VAD (each job run forks it).
        accounting: Where chunks' engine calls are billed (request id: the job's id).
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        lease: Callable[[], LiveRelease | None],
        unlease: Callable[[LiveRelease], None],
        vad: Callable[[], Awaitable[VAD]],
        accounting: Accounting,
    ) -> None:
        self.settings = settings
        self._store = store
        self.queue = JobQueue(store, settings.jobs)
        self._lease = lease
        self._unlease = unlease
        self._vad = vad
        self._accounting = accounting
        self.runner = JobRunner(self.queue, self._context, settings.jobs)

    async def _context(self) -> JobContext | None:
        live = self._lease()
        if live is None:
            return None
        done = functools.partial(self._unlease, live)
        try:
            vad = (await self._vad()).fork()
        except BaseException:
            done()
            raise
        chunks = self._chunks(live.engines, live.settings)
        return JobContext(self.queue, chunks, live.settings, vad, self._charge, done)

    def _chunks(self, engines: Engines, settings: Settings) -> ChunkWorker:
        ray = self.settings.ray
        if ray.address and ray.job_tasks:
            from server.ray_tasks import RayChunks  # ray is an optional extra

            return RayChunks(settings)
        return LocalChunks(engines, settings)

    def _charge(self, job: Job, calls: Calls) -> None:
        # the runner works outside any request: the job's owner pays (usage and quotas too)
        key = self._store.keys.get(job.owner) if job.owner is not None else None
        who = Identity.of_key(key) if key is not None else None
        self._accounting.charge(calls, request_id=job.id, who=who)
