"""The pool of GPT-SoVITS worker processes that requests share.

Upstream's ``TTS`` is not thread-safe: a worker (``models/gpt_sovits_process.py``) serves one
request at a time, and concurrency comes from several workers. The pool decides:

- **how many**: a fixed number, or (``size`` ``None``) as many as the device's memory holds. The
  first worker starts, warms up and reports the memory it holds and what is free; then as many
  more start as fit in the free memory less a reserve (the other engines on the device need
  theirs), up to a maximum, and on a CPU at most one per two cores (a worker with too few
  cores falls behind real time).
- **which one**: upstream caches one reference clip per worker, so a voice's request goes to
  the idle worker that encoded that voice last, then to one that has encoded none, then to the
  one idle longest; a freed worker goes to the waiter whose voice it holds, else the oldest. An
  idle worker is always taken over waiting for a busy one with the right voice: re-encoding a
  clip costs less than a whole request.
- **what happens after a failure**: a worker that dies, hangs or garbles the protocol is killed
  and replaced (and warmed) in the background; the request that saw it fails with a retryable
  error. A worker whose request was cancelled is sent a cancel frame and drained in the
  background until it confirms, then serves the next request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from models.gpt_sovits_process import TERMINAL, Warmup, WorkerProcess, WorkerSpec
from pipeline.errors import EngineUnavailable, ModelLoadError, StageError

log = logging.getLogger("voxline.gpt_sovits")


def size_by_memory(
    stats: Mapping[str, Any], *, max_size: int, reserve_bytes: int, cpu_count: int
) -> int:
    """How many workers fit, from the first worker's ``stats`` frame (see the worker script).

    ``worker_bytes`` is what one warmed worker holds (GPU memory reserved by torch, or peak RSS
    on a CPU), ``free_bytes`` what the device has free with that worker loaded.
    """
    worker = max(1, int(stats.get("worker_bytes") or 0))
    free = int(stats.get("free_bytes") or 0)
    size = 1 + max(0, (free - reserve_bytes) // worker)
    if not str(stats.get("device", "cpu")).startswith("cuda"):
        size = min(size, max(1, cpu_count // 2))
    return max(1, min(size, max_size))


@dataclass(slots=True)
class _Slot:
    """One place in the pool: its current worker, or why it has none."""

    index: int
    worker: WorkerProcess | None = None
    broken: StageError | None = None  # the last start failed with this


@dataclass(eq=False, slots=True)
class _Waiter:
    future: asyncio.Future[WorkerProcess | None]
    key: str | None


class WorkerPool:
    """Workers started from one spec; a request takes a free one or waits for one.

    Args:
        spec: How to start each worker.
        backend: The backend name used in errors.
        warmup: The request each new worker speaks before it serves (asked at every start,
            restarts included, so it follows the registered voices); ``None``: no warm-up.
    """

    def __init__(self, spec: WorkerSpec, backend: str, warmup: Callable[[], Warmup | None]) -> None:
        self.spec = spec
        self.backend = backend
        self._warmup = warmup
        self._slots: list[_Slot] = []
        self._idle: list[WorkerProcess] = []  # longest idle first
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def size(self) -> int:
        """Number of workers (started or restarting)."""
        return len(self._slots)

    def set_backend(self, backend: str) -> None:
        """Rename the backend in errors raised from now on (the device is known after start)."""
        self.backend = backend
        for worker in (s.worker for s in self._slots if s.worker is not None):
            worker.backend = backend

    async def start(
        self, size: int | None, *, max_size: int = 4, reserve_bytes: int = 0, cpu_count: int = 1
    ) -> list[dict[str, Any]]:
        """Start ``size`` workers at once (``None``: sized by memory, see the module docstring)
        and wait until all are ready and warm; return their ready frames.

        Raises:
            ModelLoadError, EngineTimeout: a worker failed to start (all are killed again).
        """
        if size is not None:
            return await self._start_more(size)
        first = await self._start_more(1)
        worker = self._slots[0].worker
        assert worker is not None
        target = size_by_memory(
            worker.stats, max_size=max_size, reserve_bytes=reserve_bytes, cpu_count=cpu_count
        )
        log.info(
            "GPT-SoVITS pool: a worker holds %.2f GiB, %.2f GiB free on %s: %d worker(s)",
            int(worker.stats.get("worker_bytes") or 0) / 2**30,
            int(worker.stats.get("free_bytes") or 0) / 2**30,
            worker.stats.get("device"),
            target,
        )
        return first + (await self._start_more(target - 1) if target > 1 else [])

    async def _start_more(self, count: int) -> list[dict[str, Any]]:
        base = len(self._slots)
        workers = [WorkerProcess(self.spec, base + i, self.backend) for i in range(count)]
        warmup = self._warmup()
        # Each start() kills its own process when it fails or is cancelled; stop the others too.
        results = await asyncio.gather(*(w.start(warmup) for w in workers), return_exceptions=True)
        if failures := [r for r in results if isinstance(r, BaseException)]:
            await asyncio.gather(*(w.kill() for w in workers))
            raise failures[0]
        for worker in workers:
            self._slots.append(_Slot(worker.index, worker))
            self._idle.append(worker)
        return [w.ready for w in workers]

    async def acquire(self, key: str | None = None) -> WorkerProcess:
        """A ready worker for one request in the voice whose reference clip is ``key``; waits
        while every worker is busy or restarting.

        Raises:
            EngineUnavailable: the pool is closed, or no worker could be (re)started.
        """
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise EngineUnavailable("the pool is closed", stage="tts", backend=self.backend)
            while (worker := self._take_idle(key)) is not None:
                if worker.alive:
                    return worker
                self._replace(worker)  # it died while idle
            if all(s.broken for s in self._slots):
                why = self._slots[-1].broken
                raise EngineUnavailable(
                    f"no worker could start: {why}", stage="tts", backend=self.backend
                )
            waiter = _Waiter(loop.create_future(), key)
            self._waiters.append(waiter)
            try:
                handed = await waiter.future
            except asyncio.CancelledError:
                # Cancelled just after a worker was handed to us: pass it on, do not lose it.
                future = waiter.future
                if future.done() and not future.cancelled() and (late := future.result()):
                    self._hand_back(late)
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if handed is not None:  # None: something changed, look again
                if handed.alive:
                    return handed
                self._replace(handed)

    def release(self, worker: WorkerProcess, *, healthy: bool) -> None:
        """Give a worker back after a finished request; an unhealthy one is killed and replaced."""
        if self._closed:
            self._spawn(worker.kill())
        elif healthy and worker.alive:
            self._hand_back(worker)
        else:
            self._replace(worker)

    def cancel(self, worker: WorkerProcess, request_id: int) -> None:
        """The consumer of ``request_id`` went away: cancel it, and release the worker once it
        confirms (or replace it if it does not within ``request_timeout_s``)."""
        if self._closed:
            self._spawn(worker.kill())
            return
        worker.send({"op": "cancel", "id": request_id})
        self._spawn(self._drain(worker, request_id))

    async def aclose(self) -> None:
        """Stop every worker (busy ones too: their requests fail) and stop restarting them."""
        self._closed = True
        self._wake_all()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        workers = [s.worker for s in self._slots if s.worker is not None]
        await asyncio.gather(*(w.aclose() for w in workers), return_exceptions=True)

    def _take_idle(self, key: str | None) -> WorkerProcess | None:
        if not self._idle:
            return None
        for wanted in (key, None):
            for worker in self._idle:
                if worker.voice_key == wanted:
                    self._idle.remove(worker)
                    return worker
        return self._idle.pop(0)  # idle the longest

    async def _drain(self, worker: WorkerProcess, request_id: int) -> None:
        try:
            while True:
                frame = await worker.read_frame(self.spec.request_timeout_s)
                if frame.header.get("id") != request_id:
                    raise worker._error(EngineUnavailable, f"answered out of turn: {frame.header}")
                if frame.type in TERMINAL:
                    break
        except StageError as exc:
            log.warning("GPT-SoVITS worker %d failed to cancel: %s", worker.index, exc)
            self.release(worker, healthy=False)
            return
        self.release(worker, healthy=True)

    def _hand_back(self, worker: WorkerProcess) -> None:
        pending = [w for w in self._waiters if not w.future.done()]
        if pending:
            chosen = next((w for w in pending if w.key == worker.voice_key), pending[0])
            self._waiters.remove(chosen)
            chosen.future.set_result(worker)
            return
        self._idle.append(worker)

    def _wake_all(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(None)

    def _replace(self, worker: WorkerProcess) -> None:
        self._spawn(self._restart(self._slots[worker.index], worker))

    async def _restart(self, slot: _Slot, old: WorkerProcess) -> None:
        await old.kill()
        delay = 0.5
        while not self._closed:
            new = WorkerProcess(self.spec, slot.index, self.backend)
            slot.worker = new
            try:
                await new.start(self._warmup())
            except asyncio.CancelledError:
                await new.kill()
                raise
            except Exception as exc:  # a StageError, or a bug: either way this slot has no worker
                error = (
                    exc if isinstance(exc, StageError) else new._error(ModelLoadError, repr(exc))
                )
                slot.broken = error
                log.error("GPT-SoVITS worker %d failed to restart: %s", slot.index, error)
                self._wake_all()  # waiters re-check: if every slot is broken, they fail now
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            slot.broken = None
            log.info("GPT-SoVITS worker %d restarted (pid %s)", slot.index, new.ready["pid"])
            self._hand_back(new)
            return

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
