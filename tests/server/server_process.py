"""A real ``voxline serve`` process for the tests that need one: signals, exit codes, RSS.

A server in a thread of the test process (``LiveServer``) cannot receive SIGTERM on its own,
exit with a code, or have a resident set of its own; these tests start the command users run,
with the configuration as ``VOXLINE_*`` environment variables, on a free loopback port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

_READY_TIMEOUT_S = 180.0  # loading and warming the default models on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``voxline serve`` in a child process: ``with ServerProcess(env) as server: ...``.

    Args:
        env: Extra environment variables (settings).
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/realtime?model=voxline"
        self._log = Path(tempfile.mkstemp(prefix="voxline-server-", suffix=".log")[1])
        state = tempfile.mkdtemp(prefix="vx-state-")
        self._env = {
            **os.environ,
            "VOXLINE_DEMO_ENABLED": "false",
            "VOXLINE_STATE__DATA_DIR": state,
            "VOXLINE_OBSERVABILITY__LOG_FORMAT": "text",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> ServerProcess:
        root = Path(__file__).resolve().parents[2]
        with self._log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--port", str(self.port)],
                cwd=root,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self._kill()
        raise RuntimeError(f"the server was not ready in {_READY_TIMEOUT_S} s:\n{self.log()}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._kill()

    def terminate(self) -> None:
        """Send SIGTERM (a graceful drain)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 120.0) -> int:
        """The exit code, once the process has ended."""
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def rss_bytes(self) -> int:
        """The server's resident set size now, from ``/proc``."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def log(self) -> str:
        """What the server wrote so far."""
        return self._log.read_text(errors="replace")

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
