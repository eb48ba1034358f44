"""Running the app under uvicorn: bounded connections, and a graceful drain on SIGTERM.

What uvicorn does not bound by itself, measured against the server before this module: a client
that sent half a request's headers held its connection forever (1000 of them, all held), and
one stalled HTTP client held SIGTERM for 88.8 s. So:

- a connection that has not sent a complete request head within ``limits.header_timeout_s`` is
  closed (:class:`_HeaderTimeout`, on uvicorn's httptools protocol), and an idle keep-alive
  connection after ``limits.keep_alive_timeout_s``;
- on SIGTERM the app drains first (``server.admission.Admission.drain``: ``/readyz`` 503, new
  work refused, in-flight turns, speech streams and realtime responses finish, realtime sockets
  close with 1001, at most ``limits.drain_timeout_s``); uvicorn's own shutdown then has
  ``limits.shutdown_timeout_s`` for the connections left, and the process exits 0. (Uvicorn
  alone would close every WebSocket with 1012 at once, and end the process by re-raising the
  signal.) A second SIGTERM, or SIGINT, shuts down at once, as uvicorn does;
- glibc's malloc arenas are capped at 2 (unless ``MALLOC_ARENA_MAX`` says otherwise): every
  engine call runs in a fresh worker thread (``pipeline.offload``), and glibc gives threads
  arenas of their own that keep what they freed. Measured: a realtime client reading two long
  spoken answers grew the server's resident set by 75 MB with glibc's default (8 per core),
  by 10 MB with the cap.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pipeline.settings import LimitsSettings
from server.state import AppState

log = logging.getLogger("voxline.server")


def serve(
    app: FastAPI,
    *,
    host: str,
    port: int,
    limits: LimitsSettings,
    sockets: list[socket.socket] | None = None,
    **config: Any,
) -> None:
    """Serve ``app`` until SIGTERM (drained) or SIGINT.

    Args:
        app: The voxline app (``server.app.create_app``).
        host: Interface to listen on.
        port: TCP port.
        limits: The ``limits`` settings (timeouts and the drain).
        sockets: Already-bound sockets to serve on instead of ``host``/``port``.
        **config: Extra ``uvicorn.Config`` keywords (logging).
    """
    _cap_malloc_arenas()
    uv_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_header_timeout_protocol(limits.header_timeout_s),
        timeout_keep_alive=max(1, round(limits.keep_alive_timeout_s)),
        timeout_graceful_shutdown=max(1, round(limits.shutdown_timeout_s)),
        **config,
    )
    _DrainingServer(uv_config, app).run(sockets=sockets)


_M_ARENA_MAX = -8  # glibc's mallopt parameter number
_ARENAS = 2


def _cap_malloc_arenas() -> None:
    """Cap glibc's malloc arenas (see the module docstring); elsewhere, do nothing."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return  # the operator chose, or not glibc's allocator
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, _ARENAS)
    except (OSError, AttributeError):  # musl and others: no such knob
        log.debug("could not cap malloc arenas", exc_info=True)


class _DrainingServer(uvicorn.Server):
    """uvicorn, with the app's drain between SIGTERM and uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        state = app.state.voxline
        assert isinstance(state, AppState)
        self._admission = state.admission
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drain: asyncio.Task[None] | None = None  # kept: a task nobody holds may vanish

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._draining and self._loop is not None:
            self._draining = True
            # a signal handler: schedule the drain on the loop, which this interrupted
            self._loop.call_soon_threadsafe(self._start_drain)
            return  # not recorded as captured: uvicorn would re-raise it and exit non-zero
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        self._drain = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self._admission.drain()
        except Exception:  # the drain must never keep the server from exiting
            log.exception("the drain failed")
        self.should_exit = True


def _header_timeout_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing connections whose request head is late."""

    class _HeaderTimeout(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # the next request of a keep-alive connection: its head is due too

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(timeout_s, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                log.info("closing a connection whose request head took over %g s", timeout_s)
                self.transport.close()

    return _HeaderTimeout
