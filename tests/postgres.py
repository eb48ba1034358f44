"""A real Postgres with pgvector for tests, started on loopback in a temporary directory.

The server binaries and the ``vector`` extension come from the PyPI package ``pgserver``
(the ``dev`` extra): its wheel ships ``initdb``, ``postgres`` and pgvector, which Debian's
package lists here lack. Only the binaries are used; this module runs them itself so the
server listens on ``127.0.0.1`` on a free TCP port (two server processes under test must
reach it, not only through a unix socket) with a random password.

Postgres refuses to run as root, and CI runs as root: then the server runs as ``nobody``
(which every Debian has) in a temporary directory that user owns.

Pytest fixtures (a plugin of the root ``conftest.py``, so any test can take them):
``postgres`` (the session's server) and ``postgres_url`` (a fresh empty database per test,
dropped afterwards).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

USER = "voxline"
_NOBODY = 65534


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Postgres tests need pgserver (pip install -e '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A running Postgres: a superuser with a password, on 127.0.0.1."""

    def __init__(self, root: Path, port: int, password: str, process: subprocess.Popen[bytes]):
        self.root = root
        self.port = port
        self.password = password
        self.process = process

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL of ``database`` (with the password)."""
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (``CREATE DATABASE`` needs that)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.encode())

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = "t_" + secrets.token_hex(6)
        self.admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its clients."""
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Fast shutdown (clients disconnected), then remove the directory."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(timeout_s: float = 60.0) -> PostgresServer:
    """Initialize a cluster in a new temporary directory and start it on a free port.

    Durability settings are off (``fsync``): it is a throwaway test server, and tests kill
    its clients, never it.
    """
    bin_dir = _bin_dir()
    as_root = os.geteuid() == 0
    run_as: dict[str, Any] = (
        {"user": _NOBODY, "group": _NOBODY, "extra_groups": []} if as_root else {}
    )
    root = Path(tempfile.mkdtemp(prefix="voxline-pg-"))
    password = secrets.token_urlsafe(16)
    (root / "pwfile").write_text(password + "\n")
    if as_root:
        for path in (root, root / "pwfile"):
            os.chown(path, _NOBODY, _NOBODY)
    subprocess.run(
        [
            str(bin_dir / "initdb"),
            "-D", str(root / "data"),
            "-U", USER,
            "--pwfile", str(root / "pwfile"),
            "--auth", "scram-sha-256",
            "--encoding", "UTF8",
            "--locale", "C",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        **run_as,
    )  # fmt: skip
    for _ in range(3):  # the port may be taken between choosing and binding it
        port = _free_port()
        log = (root / "postgres.log").open("ab")
        process = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D", str(root / "data"),
                "-h", "127.0.0.1",
                "-p", str(port),
                "-k", str(root),
                "-c", "fsync=off",
                "-c", "full_page_writes=off",
                "-c", "max_connections=200",
                "-c", "shared_buffers=64MB",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of pytest does not reach it: stop() does
            **run_as,
        )  # fmt: skip
        log.close()
        server = PostgresServer(root, port, password, process)
        if _wait_ready(server, timeout_s):
            return server
        server.process.kill()
        server.process.wait()
    text = (root / "postgres.log").read_text(errors="replace")[-3000:]
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"Postgres did not start:\n{text}")


def _wait_ready(server: PostgresServer, timeout_s: float) -> bool:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            with psycopg.connect(server.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's Postgres server (started at first use)."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh empty database on the session's server, dropped after the test."""
    name = postgres.create_database()
    try:
        yield postgres.url(name)
    finally:
        with contextlib.suppress(Exception):
            postgres.drop_database(name)
