"""GPT-SoVITS worker processes and the pool that shares them between requests.

Each worker is a child process running ``models/gpt_sovits_worker.py`` (whose docstring defines the
pipe protocol) under GPT-SoVITS's own interpreter. Upstream's ``TTS`` is not thread-safe: a worker
serves one request at a time, and concurrency comes from several workers. It is all asyncio and
every read has a deadline, so a slow or hung worker blocks neither the event loop nor a turn.

A worker that dies, hangs or garbles the protocol is killed and replaced in the background; the
request that saw it fails with a retryable error. A worker whose request was cancelled is sent a
cancel frame and drained in the background until it confirms, then serves the next request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.gpt_sovits_worker import PROTOCOL, encode_frame
from pipeline.errors import EngineTimeout, EngineUnavailable, ModelLoadError, StageError

log = logging.getLogger("voxline.gpt_sovits")

WORKER_SCRIPT = Path(__file__).with_name("gpt_sovits_worker.py")
_HEADER_LIMIT = 1 << 20  # longest header line we accept from a worker
_STDERR_TAIL = 40  # lines of a worker's stderr kept for error messages
_EXIT_WAIT_S = 3.0  # how long aclose() lets a worker exit before killing it
_TERMINAL = frozenset({"done", "cancelled", "error"})  # a request's last frame


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """How to start a worker: the command, where, with what environment and init frame."""

    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str]
    init: Mapping[str, Any]
    start_timeout_s: float
    request_timeout_s: float


@dataclass(frozen=True, slots=True)
class Frame:
    """One protocol frame read from a worker."""

    header: dict[str, Any]
    payload: bytes = b""

    @property
    def type(self) -> str:  # chunk, done, cancelled, error or ready
        return str(self.header.get("type"))


@dataclass(slots=True)
class _Slot:
    """One place in the pool: its current worker, or why it has none."""

    index: int
    worker: WorkerProcess | None = None
    broken: StageError | None = None  # the last start failed with this


class WorkerProcess:
    """One worker process: spawn it, wait until it is ready, exchange frames, kill it.

    Args:
        spec: How to start it.
        index: Its slot in the pool (names it in logs).
        backend: The backend name used in errors (e.g. ``"gpt_sovits:cpu"``).
    """

    def __init__(self, spec: WorkerSpec, index: int, backend: str) -> None:
        self.spec = spec
        self.index = index
        self.backend = backend
        self.ready: dict[str, Any] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> dict[str, Any]:
        """Spawn the process and wait for its ready frame.

        Raises:
            ModelLoadError: the interpreter could not start, or upstream failed to load.
            EngineTimeout: no ready frame within ``start_timeout_s``.
        """
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                cwd=self.spec.cwd,
                env=dict(self.spec.env),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=_HEADER_LIMIT,
                # Its own session: a Ctrl-C in the server's terminal must not kill workers behind
                # our back, and kill() takes down anything upstream spawned with it.
                start_new_session=True,
            )
        except OSError as e:
            raise self._error(ModelLoadError, f"cannot start {self.spec.argv[0]!r}: {e}") from e
        assert self._proc.stderr is not None
        self._stderr_task = asyncio.create_task(self._pump_stderr(self._proc.stderr))
        self.send(dict(self.spec.init))
        try:
            frame = await self.read_frame(self.spec.start_timeout_s, starting=True)
        except BaseException:
            await self.kill()
            raise
        if frame.type == "ready" and frame.header.get("protocol") == PROTOCOL:
            self.ready = frame.header
            return frame.header
        await self.kill()
        h = frame.header
        detail = f"{h.get('error')}: {h.get('message')}" if frame.type == "error" else f"sent {h}"
        raise self._error(ModelLoadError, f"GPT-SoVITS failed to load: {detail}")

    def send(self, header: Mapping[str, Any]) -> None:
        """Queue one frame for the worker. Never blocks; a dead worker shows on the next read."""
        if self._proc is None or self._proc.stdin is None or self._proc.stdin.is_closing():
            return
        self._proc.stdin.write(encode_frame(header))

    async def read_frame(self, within_s: float, *, starting: bool = False) -> Frame:
        """The next frame from the worker, within ``within_s`` seconds.

        Raises:
            EngineTimeout: nothing arrived in time (the caller kills the worker).
            EngineUnavailable: the worker exited or sent something that is not a frame
                (``ModelLoadError`` instead while ``starting``).
        """
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        try:
            async with asyncio.timeout(within_s):
                line = await stdout.readline()
                if not line:
                    raise EOFError
                header = json.loads(line)
                if not isinstance(header, dict):
                    raise ValueError(f"frame header is not an object: {line[:200]!r}")
                nbytes = int(header.get("nbytes", 0))
                payload = await stdout.readexactly(nbytes) if nbytes else b""
        except TimeoutError as e:
            what = "become ready" if starting else "answer"
            raise self._error(EngineTimeout, f"did not {what} within {within_s:g} s") from e
        except (EOFError, asyncio.IncompleteReadError) as e:
            raise await self._died(starting) from e
        except (ValueError, asyncio.LimitOverrunError) as e:  # garbled: not our protocol
            raise self._error(EngineUnavailable, f"broke the protocol: {e}") from e
        return Frame(header, payload)

    async def kill(self) -> None:
        """Kill the worker (and anything it spawned) now and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        await proc.wait()
        await self._finish_stderr()

    async def aclose(self) -> None:
        """Ask the worker to exit (close its stdin); kill it if it has not after a moment."""
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.write(encode_frame({"op": "exit"}))
            proc.stdin.close()
        try:
            async with asyncio.timeout(_EXIT_WAIT_S):
                await proc.wait()
        except TimeoutError:
            await self.kill()
        await self._finish_stderr()

    def _error(self, kind: type[StageError], message: str) -> StageError:  # also the pool's
        return kind(f"GPT-SoVITS worker {self.index}: {message}", stage="tts", backend=self.backend)

    async def _died(self, starting: bool) -> StageError:
        assert self._proc is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._proc.wait()
        await self._finish_stderr()  # its last lines (a traceback) are the useful ones
        tail, code = "\n".join(self._stderr_tail), self._proc.returncode
        if starting:
            return self._error(ModelLoadError, f"exited (code {code}) while loading:\n{tail}")
        # The tail may hold the text being spoken: log it, keep it out of the error message.
        log.warning("GPT-SoVITS worker %d exited (code %s); stderr:\n%s", self.index, code, tail)
        return self._error(EngineUnavailable, f"exited (code {code}) during a request")

    async def _pump_stderr(self, stderr: asyncio.StreamReader) -> None:
        # Read blocks, not lines: tqdm redraws its bar with \r and could exceed any line limit.
        pending = b""
        while block := await stderr.read(65536):
            *lines, pending = (pending + block.replace(b"\r", b"\n")).split(b"\n")
            for raw in lines:
                if text := raw.decode("utf-8", "replace").rstrip():
                    self._stderr_tail.append(text)
                    log.debug("worker %d: %s", self.index, text)
            pending = pending[-65536:]
        if text := pending.decode("utf-8", "replace").rstrip():
            self._stderr_tail.append(text)

    async def _finish_stderr(self) -> None:
        if self._stderr_task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._stderr_task)


class WorkerPool:
    """``size`` workers started from one spec; a request takes a free one or waits for one.

    Args:
        spec: How to start each worker.
        size: Number of workers (each holds its own model).
        backend: The backend name used in errors.
    """

    def __init__(self, spec: WorkerSpec, size: int, backend: str) -> None:
        self.spec = spec
        self.backend = backend
        self._slots = [_Slot(i) for i in range(size)]
        self._idle: collections.deque[WorkerProcess] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[WorkerProcess | None]] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def set_backend(self, backend: str) -> None:
        """Rename the backend in errors raised from now on (the device is known after start)."""
        self.backend = backend
        for worker in (s.worker for s in self._slots if s.worker is not None):
            worker.backend = backend

    async def start(self) -> list[dict[str, Any]]:
        """Start every worker at once and wait until all are ready; return their ready frames.

        Raises:
            ModelLoadError, EngineTimeout: a worker failed to start (all are killed again).
        """
        workers = [WorkerProcess(self.spec, s.index, self.backend) for s in self._slots]
        # Each start() kills its own process when it fails or is cancelled; stop the others too.
        results = await asyncio.gather(*(w.start() for w in workers), return_exceptions=True)
        if failures := [r for r in results if isinstance(r, BaseException)]:
            await asyncio.gather(*(w.kill() for w in workers))
            raise failures[0]
        for slot, worker in zip(self._slots, workers, strict=True):
            slot.worker = worker
            self._idle.append(worker)
        return [w.ready for w in workers]

    async def acquire(self) -> WorkerProcess:
        """A ready worker for one request; waits while every worker is busy or restarting.

        Raises:
            EngineUnavailable: the pool is closed, or no worker could be (re)started.
        """
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise EngineUnavailable("the pool is closed", stage="tts", backend=self.backend)
            while self._idle:
                worker = self._idle.popleft()
                if worker.alive:
                    return worker
                self._replace(worker)  # it died while idle
            if all(s.broken for s in self._slots):
                why = self._slots[-1].broken
                raise EngineUnavailable(
                    f"no worker could start: {why}", stage="tts", backend=self.backend
                )
            waiter: asyncio.Future[WorkerProcess | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                # Cancelled just after a worker was handed to us: pass it on, do not lose it.
                if waiter.done() and not waiter.cancelled() and (late := waiter.result()):
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

    async def _drain(self, worker: WorkerProcess, request_id: int) -> None:
        try:
            while True:
                frame = await worker.read_frame(self.spec.request_timeout_s)
                if frame.header.get("id") != request_id:
                    raise worker._error(EngineUnavailable, f"answered out of turn: {frame.header}")
                if frame.type in _TERMINAL:
                    break
        except StageError as exc:
            log.warning("GPT-SoVITS worker %d failed to cancel: %s", worker.index, exc)
            self.release(worker, healthy=False)
            return
        self.release(worker, healthy=True)

    def _hand_back(self, worker: WorkerProcess) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    def _wake_all(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _replace(self, worker: WorkerProcess) -> None:
        self._spawn(self._restart(self._slots[worker.index], worker))

    async def _restart(self, slot: _Slot, old: WorkerProcess) -> None:
        await old.kill()
        delay = 0.5
        while not self._closed:
            new = WorkerProcess(self.spec, slot.index, self.backend)
            slot.worker = new
            try:
                await new.start()
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
