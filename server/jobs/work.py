"""Running one job: plan once, do the chunks not yet done (several at once), then finish.

The order of writes is what makes a job resumable (:mod:`server.jobs.queue`): the plan is
stored before any chunk runs, each chunk's result is stored the moment it is done, and the
result blob is written before the status says ``succeeded``. A run that dies anywhere leaves a
state the next run continues from; the only work lost is the chunks that were in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from models.registry import Engines
from pipeline.settings import Settings
from pipeline.types import AudioChunk
from pipeline.vad import VAD
from server.jobs.chunks import speak_chunk, transcribe_chunk, turn_chunk
from server.jobs.kinds import Calls, ChunkWorker, KindRun, SpeechRun, TranscriptionRun, TurnsRun
from server.jobs.queue import JobQueue
from server.jobs.records import Job


class LocalChunks:
    """Chunks run on this process's engines.

    Args:
        engines: The started engines.
        settings: The server's settings (turn defaults).
    """

    def __init__(self, engines: Engines, settings: Settings) -> None:
        self.engines = engines
        self.settings = settings

    async def transcribe(
        self, audio: AudioChunk, *, language: str | None, prompt: str | None
    ) -> tuple[dict[str, Any], Calls]:
        return await transcribe_chunk(self.engines.stt, audio, language=language, prompt=prompt)

    async def speak(
        self, text: str, *, voice: str | None, speed: float
    ) -> tuple[AudioChunk, Calls]:
        return await speak_chunk(self.engines.tts, text, voice=voice, speed=speed)

    async def turn(
        self, line: Mapping[str, Any], *, options: Mapping[str, Any]
    ) -> tuple[dict[str, Any], Calls]:
        e = self.engines
        return await turn_chunk(e.stt, e.llm, e.tts, line, settings=self.settings, options=options)


class Stopped(Exception):
    """The job stopped being ours to run (cancelled, or the lease was lost)."""


@dataclass(slots=True)
class JobContext:
    """What a job's run needs besides the job."""

    queue: JobQueue
    chunks: ChunkWorker
    settings: Settings
    vad: VAD
    """A VAD of the run's own (a fork: its state is per stream)."""
    charge: Callable[[Job, Calls], None]
    """Bills a chunk's engine calls to the job's owner."""
    done: Callable[[], None] = lambda: None
    """Called once when the run ends (or no job was claimed with it): lets go of the release
    whose engines and settings it ran on (``server.releases``)."""


def kind_run(job: Job, ctx: JobContext) -> KindRun:
    """The run of ``job``'s kind."""
    if job.kind == "transcription":
        return TranscriptionRun(job, ctx.queue, ctx.chunks, ctx.settings, ctx.vad)
    if job.kind == "speech":
        return SpeechRun(job, ctx.queue, ctx.chunks, ctx.settings)
    return TurnsRun(job, ctx.queue, ctx.chunks)


async def run_job(job: Job, ctx: JobContext) -> Job:
    """Run ``job`` (claimed and leased by the caller) to its end.

    Returns:
        The job as it ended (``succeeded``).

    Raises:
        Stopped: the job was cancelled while it ran.
        VoxlineError: a chunk failed (the caller decides: fail it, or queue it again).
    """
    queue = ctx.queue
    run = kind_run(job, ctx)
    plan = await asyncio.to_thread(queue.plan, job)
    if plan is None:
        plan = await run.plan()
        saved = await asyncio.to_thread(queue.save_plan, job, plan)
        if saved is None:
            raise Stopped(job.id)
        job = saved
    results = dict(await asyncio.to_thread(queue.chunk_results, job.id))
    skipped = sum(1 for item in plan if not run.needed(item))
    todo = [i for i, item in enumerate(plan) if run.needed(item) and i not in results]
    state = _Progress(job, len(results) + skipped)
    slots = asyncio.Semaphore(ctx.settings.jobs.chunk_parallelism)

    async def one(index: int) -> None:
        async with slots:
            if state.stopped:
                return
            result, calls = await run.chunk(index, plan[index])
        ctx.charge(state.job, calls)
        if await asyncio.to_thread(queue.chunk_done, job.id, index, result):
            results[index] = result
            await state.advance(queue)

    try:
        async with asyncio.TaskGroup() as group:
            for index in todo:
                group.create_task(one(index), name=f"job-chunk-{index}")
    except BaseExceptionGroup as failed:
        raise _first(failed) from None
    if state.stopped:
        raise Stopped(job.id)
    results = dict(await asyncio.to_thread(queue.chunk_results, job.id))
    media = await asyncio.to_thread(run.finish, plan, results)
    done = await asyncio.to_thread(queue.succeed, state.job, f"{job.id}.result", media)
    if done is None:
        raise Stopped(job.id)
    return done


class _Progress:
    """The chunks done, written to the job as they finish (one write at a time)."""

    def __init__(self, job: Job, done: int) -> None:
        self.job = job
        self.done = done
        self.stopped = False
        self._lock = asyncio.Lock()

    async def advance(self, queue: JobQueue) -> None:
        async with self._lock:
            self.done += 1
            job = await asyncio.to_thread(queue.progress, self.job, self.done)
            if job is None:
                self.stopped = True  # cancelled: the chunks not started are not started
                raise Stopped(self.job.id)
            self.job = job


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to raise for a failed group of chunks: ``Stopped`` if the job was stopped,
    else the first failure (the others were cancelled because of it)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, Stopped)), leaves[0])
