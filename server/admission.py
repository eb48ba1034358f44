"""The server's intake: how many realtime sessions it takes, what it refuses, how it lets go.

Engine calls are admitted by each engine's scheduler (``pipeline.scheduler``); this is the
server-wide half (docs/architecture.md, "Admission and scheduling"):

- **Sessions.** At most ``limits.session_limit()`` realtime sessions at once: one more is refused
  at the handshake with 503 and ``Retry-After`` (:meth:`Admission.open_session`), before any
  engine work, so the sessions already in get the engines they were promised.
- **Requests.** HTTP requests are counted while in flight (their response body included), and
  a response whose client takes none of its body for ``client_stall_timeout_s`` is aborted
  (:class:`AdmissionMiddleware`): the engines have long finished (their worker threads never
  wait for a reader), and the bytes waiting for nobody are freed.
- **Drain.** On SIGTERM (``server.serving``) :meth:`Admission.drain` stops taking work:
  ``/readyz`` says 503 at once, new requests and sessions get 503; in-flight requests (a turn, a
  speech stream) and realtime responses finish, each realtime socket is closed with 1001 as
  soon as its session is idle, and what is left at ``drain_timeout_s`` is closed then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.errors import EngineBusy
from pipeline.settings import LimitsSettings
from server.errors import error_body

log = logging.getLogger("voxline.server.admission")

GOING_AWAY = 1001
"""WebSocket close code of a session ended by the server's drain."""

_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})  # answered while draining, not counted
_DRAIN_POLL_S = 0.05  # the drain notices an idle session or a finished request this quickly
_CLOSE_GRACE_S = 5.0  # after the drain, time the closing sockets get to say goodbye


class SessionLease:
    """A realtime session's place in the server, from the handshake until the socket closes.

    ``busy`` and ``shutdown`` are set once the session runs: whether it is answering a turn
    now, and how to close its socket with a code.
    """

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.busy: Callable[[], bool] = lambda: False
        self.shutdown: Callable[[int], None] = lambda _code: None
        self.closing = False

    def close(self) -> None:
        """The session is over: its place is free (idempotent)."""
        self._admission._sessions.discard(self)


class Admission:
    """What the server is serving now, and whether it still takes more.

    Args:
        limits: The ``limits`` settings.
        clock: Monotonic seconds (the drain's deadline).
    """

    def __init__(
        self, limits: LimitsSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_sessions = limits.session_limit()
        self.stall_timeout_s = limits.client_stall_timeout_s
        self.drain_timeout_s = limits.drain_timeout_s
        self.draining = False
        """Set at the start of a drain: new work is refused and ``/readyz`` says 503."""
        self._clock = clock
        self._sessions: set[SessionLease] = set()
        self._requests = 0
        self.refused_sessions = 0
        """Sessions refused so far."""
        self.listeners: list[Callable[[str, str], None]] = []
        """Told of each refusal: what (``session`` or ``request``) and why (``draining`` or
        ``capacity``); the server's metrics count them."""

    @property
    def sessions(self) -> int:
        """Realtime sessions open now."""
        return len(self._sessions)

    @property
    def requests(self) -> int:
        """HTTP requests in flight now (probes not counted)."""
        return self._requests

    def open_session(self) -> SessionLease:
        """A place for one more realtime session.

        Raises:
            EngineBusy: the server is draining, or serving ``max_sessions`` already.
        """
        if self.draining:
            self.refused("session", "draining")
            raise EngineBusy(
                "the server is shutting down: connect to another replica or try again",
                stage="pipeline",
                backend="server",
                retry_after_s=1.0,
            )
        if len(self._sessions) >= self.max_sessions:
            self.refused("session", "capacity")
            raise EngineBusy(
                f"the server is serving its limit of {self.max_sessions} realtime sessions "
                "(VOXLINE_LIMITS__MAX_SESSIONS): try again shortly",
                stage="pipeline",
                backend="server",
                retry_after_s=1.0,
            )
        lease = SessionLease(self)
        self._sessions.add(lease)
        return lease

    def refused(self, kind: str, reason: str) -> None:
        """Record a refused ``session`` or ``request`` (``draining`` or ``capacity``)."""
        if kind == "session":
            self.refused_sessions += 1
        for listener in self.listeners:
            listener(kind, reason)

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Count one HTTP request in flight for the block."""
        self._requests += 1
        try:
            yield
        finally:
            self._requests -= 1

    async def drain(self) -> None:
        """Stop taking work, let the work in flight finish (at most ``drain_timeout_s``), and
        close every realtime socket with 1001 (each as soon as its session is idle)."""
        self.draining = True
        deadline = self._clock() + self.drain_timeout_s
        log.info(
            "draining: %d realtime sessions, %d requests in flight",
            len(self._sessions),
            self._requests,
        )
        while self._sessions or self._requests:
            for lease in list(self._sessions):
                if not lease.closing and not lease.busy():
                    lease.closing = True
                    lease.shutdown(GOING_AWAY)
            if self._clock() >= deadline:
                break
            await asyncio.sleep(_DRAIN_POLL_S)
        left = [lease for lease in self._sessions if not lease.closing]
        if left or self._requests:
            log.warning(
                "drain timeout: closing %d busy sessions, %d requests still in flight",
                len(left),
                self._requests,
            )
        for lease in left:
            lease.closing = True
            lease.shutdown(GOING_AWAY)
        grace = self._clock() + _CLOSE_GRACE_S
        # sessions leave from their own tasks, with no awaitable signal: poll, as above
        while self._sessions and self._clock() < grace:  # noqa: ASYNC110
            await asyncio.sleep(_DRAIN_POLL_S)
        log.info("drained")


class _Stalled(Exception):
    """The client took none of the response body for the stall timeout."""


class AdmissionMiddleware:
    """HTTP intake: refuses new requests while draining, counts those in flight, and aborts a
    response whose client stopped reading it.

    Args:
        app: The ASGI app.
        admission: The app's ``Admission``.
    """

    def __init__(self, app: ASGIApp, *, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _PROBES:
            await self.app(scope, receive, send)
            return
        admission = self.admission
        if admission.draining:
            admission.refused("request", "draining")
            await _refuse(send)
            return
        stall_s = admission.stall_timeout_s

        async def watched_send(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            deadline = asyncio.timeout(stall_s)
            try:
                async with deadline:
                    await send(message)  # waits while the client's socket is full
            except TimeoutError as exc:
                if deadline.expired():
                    raise _Stalled from exc
                raise

        with admission.request():
            try:
                await self.app(scope, receive, watched_send)
            except _Stalled:
                # returning with the body unfinished makes the server close the connection
                log.warning(
                    "%s %s: the client read nothing for %g s; response aborted",
                    scope.get("method"),
                    scope["path"],
                    stall_s,
                )


async def _refuse(send: Send) -> None:
    body = error_body(
        "the server is shutting down: try again on another replica or shortly",
        type_="server_error",
        code="server_shutting_down",
    )
    payload = json.dumps(body).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
