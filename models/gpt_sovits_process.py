"""One GPT-SoVITS worker process: spawn it, wait until it is ready and warm, exchange frames.

The worker runs ``models/gpt_sovits_worker.py`` (whose docstring defines the pipe protocol) under
GPT-SoVITS's own interpreter. Every read has a deadline, so a slow or hung worker blocks neither
the event loop nor a turn. A worker counts as ready only after it has spoken one warm-up request:
on a fresh GPT-SoVITS venv the first request pays one-off costs (librosa's numba JIT compiles,
kernel selection, encoding the reference clip) that took a first chunk from 5 s to 17 s.
``models/gpt_sovits_pool.py`` keeps several of these.
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
TERMINAL = frozenset({"done", "cancelled", "error"})  # a request's last frame
# Ids of the requests a worker gets while starting; the engine numbers its own from 1.
_WARMUP_ID = -1
_STATS_ID = -2


@dataclass(frozen=True, slots=True)
class Warmup:
    """The request a new worker speaks before it counts as ready.

    Attributes:
        inputs: upstream ``run()`` inputs (a short text in a registered voice).
        voice_key: the reference clip those inputs encode (the worker's affinity afterwards).
    """

    inputs: Mapping[str, Any]
    voice_key: str


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
        self.stats: dict[str, Any] = {}  # memory it holds, after its warm-up
        self.voice_key: str | None = None  # the reference clip upstream has encoded last
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, warmup: Warmup | None = None) -> dict[str, Any]:
        """Spawn the process, wait for its ready frame, speak ``warmup`` and read its memory
        use; return the ready frame.

        Raises:
            ModelLoadError: the interpreter could not start, upstream failed to load, or the
                warm-up request failed.
            EngineTimeout: not ready (or not warm) within ``start_timeout_s``.
        """
        try:
            async with asyncio.timeout(self.spec.start_timeout_s):
                ready = await self._spawn()
                if warmup is not None:
                    await self._warm_up(warmup)
                self.send({"op": "stats", "id": _STATS_ID})
                frame = await self.read_frame(self.spec.start_timeout_s, starting=True)
        except TimeoutError as e:
            await self.kill()
            what = "become ready and warm up"
            limit = self.spec.start_timeout_s
            raise self._error(EngineTimeout, f"did not {what} within {limit:g} s") from e
        except BaseException:
            await self.kill()
            raise
        if frame.type != "stats":
            await self.kill()
            raise self._error(ModelLoadError, f"answered a stats request with {frame.header}")
        self.stats = frame.header
        return ready

    async def _warm_up(self, warmup: Warmup) -> None:
        self.send({"op": "run", "id": _WARMUP_ID, "inputs": dict(warmup.inputs)})
        while True:
            frame = await self.read_frame(self.spec.start_timeout_s, starting=True)
            if frame.type == "chunk":
                continue
            if frame.type == "done":
                self.voice_key = warmup.voice_key
                return
            h = frame.header
            detail = f"{h.get('error')}: {h.get('message')}" if frame.type == "error" else f"{h}"
            raise self._error(ModelLoadError, f"the warm-up request failed: {detail}")

    async def _spawn(self) -> dict[str, Any]:
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
        frame = await self.read_frame(self.spec.start_timeout_s, starting=True)
        if frame.type == "ready" and frame.header.get("protocol") == PROTOCOL:
            self.ready = frame.header
            return frame.header
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
