"""Shared fixtures for the server tests: real engines loaded once per module, the app, clients.

Loading the default models (whisper tiny.en, SmolLM2-135M, Piper joe) takes a few seconds, so
``engines`` is module-scoped and every test of a module shares it. ``httpx.ASGITransport`` does not
run the app's lifespan, so the app is built with the already-started engines
(``create_app(settings, engines=engines)``) and never loads models itself.

A test module that uses ``engines`` runs all its tests on one module-scoped event loop::

    pytestmark = pytest.mark.asyncio(loop_scope="module")

    async def test_something(app_factory):
        app = app_factory(make_settings(audio=AudioLimits(max_bytes=1000)))
        async with openai_client(app) as client:
            ...

Fixtures: ``engines`` (module), ``app_factory`` (module), ``app`` (the default app),
``engine_calls`` (the CallRecords of every engine call a test made).
Helpers (import from ``tests.server.conftest``): ``make_settings``, ``openai_client``,
``http_client``, ``LiveServer`` (a real uvicorn server in a thread, for disconnect tests, where
ASGITransport would buffer the whole response), ``wait_ready`` (poll a live server's
``/readyz``), ``silences_ms`` (the pauses inside 16-bit pcm), ``hang_up_once`` (a client that
leaves before the response starts), ``live_threads``, ``wait_threads_started`` and
``wait_threads_gone`` (engine worker threads by name prefix, e.g.
``models.llm_transformers.THREAD_NAME``), ``wait_for_calls`` (engine calls recorded by a live
server), ``spoken_wav``.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI

from models.registry import Engines, start_engines
from pipeline.audio import encode_wav
from pipeline.settings import Settings, StateSettings
from pipeline.stages import CallRecord
from server.app import create_app
from tests.conftest import speak


def make_settings(**sections: Any) -> Settings:
    """Settings for a test: the default packaged CPU models, no ``.env`` file, and the given
    sections replaced (``make_settings(audio=AudioLimits(max_bytes=1000))``).

    Environment variables still apply (``VOXLINE_...``), as for the server itself.
    """
    sections.setdefault("demo_enabled", False)  # mounting gradio costs ~0.3 s per app
    # a state store of its own (an empty SQLite file), never the user's data directory
    sections.setdefault("state", StateSettings(data_dir=Path(tempfile.mkdtemp(prefix="vx-state-"))))
    return Settings(_env_file=None, **sections)  # type: ignore[call-arg]  # pydantic-settings kw


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines() -> AsyncIterator[Engines]:
    """The default engines, started and warmed once per test module (closed at its end)."""
    started = await start_engines(make_settings())
    try:
        yield started
    finally:
        await started.aclose()


AppFactory = Callable[..., FastAPI]


@pytest.fixture(scope="module")
def app_factory(engines: Engines) -> AppFactory:
    """``app_factory(settings=None)``: an app serving the module's engines with ``settings``
    (default: ``make_settings()``). Route-level settings (limits, defaults) come from
    ``settings``; the engines are always the shared ones."""

    def build(settings: Settings | None = None) -> FastAPI:
        return create_app(settings or make_settings(), engines=engines)

    return build


@pytest.fixture
def app(app_factory: AppFactory) -> FastAPI:
    """An app with the default settings and the module's engines."""
    return app_factory()


@pytest.fixture
def engine_calls(engines: Engines) -> Iterator[list[CallRecord]]:
    """Every stage call (STT, LLM, TTS) made during the test, recorded by an engine listener.

    A call that is rejected before any engine work (validation) leaves no record, so
    ``assert engine_calls == []`` proves a bad request cost nothing.
    """
    calls: list[CallRecord] = []
    stages = (engines.stt, engines.llm, engines.tts)
    for stage in stages:
        stage.listeners.append(calls.append)
    try:
        yield calls
    finally:
        for stage in stages:
            stage.listeners.remove(calls.append)


def http_client(app: FastAPI, base_url: str = "http://test") -> httpx.AsyncClient:
    """An httpx client that calls ``app`` in process (use as ``async with``)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


def openai_client(app: FastAPI) -> openai.AsyncOpenAI:
    """The official OpenAI SDK talking to ``app`` in process (use as ``async with``).

    Retries are off: a test must see the first answer, not the SDK's retry of a 5xx.
    """
    # The SDK is typed for httpx2 but accepts an httpx client (and so an ASGI transport).
    client: Any = http_client(app)
    return openai.AsyncOpenAI(
        base_url="http://test/v1", api_key="test", max_retries=0, http_client=client
    )


class LiveServer:
    """``app`` served by a real uvicorn on a free 127.0.0.1 port, in a background thread.

    Use it where the network behaviour matters (client disconnects, WebSockets): ASGITransport
    buffers whole responses and never disconnects. The server runs its own event loop in its
    thread, so the module's engines (loop-agnostic) serve it too::

        with LiveServer(app) as server:
            async with httpx.AsyncClient(base_url=server.url) as client: ...

    Args:
        app: The ASGI app.
        start_timeout_s: How long to wait for the server to accept connections.
        config: Extra ``uvicorn.Config`` keywords (e.g. ``ws="websockets"``).
    """

    def __init__(self, app: FastAPI, *, start_timeout_s: float = 10.0, **config: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))  # bound here and handed over: no race for the port
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        """Base URL, e.g. ``http://127.0.0.1:53211`` (``ws://`` for WebSockets: replace)."""
        options: dict[str, Any] = {"log_level": "warning", "lifespan": "on", **config}
        self._server = uvicorn.Server(uvicorn.Config(app, **options))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="live-server"
        )
        self._start_timeout_s = start_timeout_s

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._stop()
                raise RuntimeError("the live server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def live_threads(prefix: str) -> list[threading.Thread]:
    """Alive threads whose name starts with ``prefix`` (engine workers are named by engine)."""
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


async def wait_threads_gone(prefix: str, timeout_s: float = 60.0) -> list[threading.Thread]:
    """Wait for the threads named ``prefix*`` to end; return those left after ``timeout_s``.

    ``timeout_s`` only guards against a hang: how quickly work stops is not a test's business
    (a loaded machine is slow); that it stopped early is shown by what it did (outputs, tokens).
    """
    deadline = time.monotonic() + timeout_s
    # a thread has no awaitable end: polling is the only way to wait for it here
    while (left := live_threads(prefix)) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return left


async def wait_threads_started(prefix: str, timeout_s: float = 10.0) -> list[threading.Thread]:
    """Wait up to ``timeout_s`` until a thread named ``prefix*`` is alive; return them."""
    deadline = time.monotonic() + timeout_s
    while not (found := live_threads(prefix)) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return found


async def hang_up_once(server: LiveServer, request: httpx.Request, *, thread_prefix: str) -> None:
    """Send ``request`` whole over a raw connection, then hang up once a thread named
    ``thread_prefix*`` runs (the server is working on it), without reading any answer.

    This is the client that gives up before the response starts (a timeout, a closed tab); an
    httpx client cannot hang up at a chosen moment of the server's work.

    Raises:
        AssertionError: no such thread started within 10 s.
    """
    body = request.read()
    head = "".join(
        f"{name}: {value}\r\n"
        for name, value in request.headers.items()
        if name.lower() not in ("content-length", "transfer-encoding")
    )
    target = request.url.raw_path.decode()
    raw = f"{request.method} {target} HTTP/1.1\r\n{head}content-length: {len(body)}\r\n\r\n"
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(raw.encode() + body)
        await writer.drain()
        assert await wait_threads_started(thread_prefix), f"no {thread_prefix} thread started"
    finally:
        writer.close()
        await writer.wait_closed()


async def wait_for_calls(
    calls: list[CallRecord], stage: str, timeout_s: float = 60.0
) -> list[CallRecord]:
    """The ``stage`` calls in ``calls`` (see ``engine_calls``), waiting for one to end (a live
    server records calls from its own thread); ``timeout_s`` only guards against a hang."""
    deadline = time.monotonic() + timeout_s
    # the records come from another thread: polling is the only way to wait for them here
    while not (found := [c for c in calls if c.stage == stage]) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return found


def spoken_wav(text: str, sample_rate: int = 16_000) -> bytes:
    """``text`` spoken by the packaged Piper voice, as the bytes of a 16-bit wav file."""
    return encode_wav(speak(text, sample_rate))


def wait_ready(url: str, timeout_s: float = 180.0) -> dict[str, Any]:
    """``/readyz`` once it says ready (``timeout_s`` only guards against a hang); blocking."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = httpx.get(f"{url}/readyz", timeout=10)
        if answer.status_code == 200:
            return dict(answer.json())
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)


def silences_ms(
    pcm: bytes, rate: int = 24_000, floor: int = 33, at_least_ms: float = 20.0
) -> list[float]:
    """Runs of near-silence (|x| below ~1e-3 of full scale) inside ``pcm`` (16-bit), in ms,
    longer than ``at_least_ms``; the silence before the first and after the last sound is not
    between phrases and is left out."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    loud = np.flatnonzero(np.abs(samples) > floor)
    if loud.size < 2:
        return []
    gaps = np.diff(loud) - 1
    return [g * 1000 / rate for g in gaps if g * 1000 / rate >= at_least_ms]
