"""Start a voxline server for the ``realtime`` and ``load`` scenarios when no ``--url`` is given.

The server runs in its own process, as users run it (``voxline serve``), so the benchmark client
does not share an event loop or a GIL with the engines; it gets the configuration under test as
``VOXLINE_*`` environment variables. We wait on ``/readyz`` (engines loaded and warm) and record
how long that took: the server's cold start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.configs import ConfigSpec
from pipeline.errors import EngineUnavailable


@dataclass(frozen=True, slots=True)
class StartedServer:
    """A server this benchmark started: its base URL and how long it took to get ready."""

    url: str
    ready_ms: float
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def local_server(
    config: ConfigSpec,
    log_path: Path,
    *,
    ready_timeout_s: float = 300.0,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[StartedServer]:
    """Run ``voxline serve`` on a free local port with ``config`` until the block exits
    (``extra_env``: more variables for the process, over the configuration's).

    Raises:
        EngineUnavailable: the server exited or was not ready within ``ready_timeout_s``.
    """
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "VOXLINE_STATE__URL"}
    env.update(config.environ())
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # a state store of its own: no API keys (its clients are loopback, keyless), and its
    # charges stay out of the user's ledger
    env["VOXLINE_STATE__DATA_DIR"] = tempfile.mkdtemp(prefix="state-", dir=log_path.parent)
    env.update(extra_env or {})
    command = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1"]
    with log_path.open("wb") as log:
        start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *command, "--port", str(port), env=env, stdout=log, stderr=log
        )
        try:
            base = f"http://127.0.0.1:{port}"
            await _wait_ready(proc, base, ready_timeout_s, log_path)
            ready_ms = round((time.perf_counter() - start) * 1000, 1)
            yield StartedServer(base, ready_ms, log_path)
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _wait_ready(
    proc: asyncio.subprocess.Process, base: str, timeout_s: float, log: Path
) -> None:
    deadline = time.perf_counter() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.perf_counter() < deadline:
            if proc.returncode is not None:
                raise EngineUnavailable(
                    f"the benchmark's server exited with {proc.returncode}; see {log}",
                    stage="pipeline",
                    backend="voxline-server",
                    retryable=False,
                )
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{base}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.5)
    raise EngineUnavailable(
        f"the benchmark's server was not ready in {timeout_s:.0f} s; see {log}",
        stage="pipeline",
        backend="voxline-server",
        retryable=False,
    )


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, log: Path, *, poll_s: float, timeout_s: float | None
) -> None:
    """Block until ``url``'s ``/readyz`` answers 200.

    Raises:
        RuntimeError: the process exited first, or ``timeout_s`` passed (``None``: no limit);
            the message points at its ``log``.
    """
    import httpx

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while deadline is None or time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited; see {log}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"not ready; see {log}")
