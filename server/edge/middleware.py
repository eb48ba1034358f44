"""The edge middleware: every HTTP request and WebSocket handshake passes here before any route.

In order, each step refusing in OpenAI's error shape (``server.edge.refusal``):

1. **Host** (DNS rebinding): 400 ``invalid_host`` (``server.edge.hosts``).
2. **Origin** (cross-site requests and WebSocket hijacking): 403 ``origin_not_allowed``; an
   allowed origin's preflight is answered here and its responses get CORS headers.
3. **Who** (``server.edge.auth``): no API key exists yet → auth is off, and only loopback
   clients are served (403 ``remote_access_disabled`` unless ``edge.allow_remote_without_keys``);
   otherwise the route's rule (``server.edge.policy``) needs a valid credential (401) with its
   scope (403).
4. **Limits** (``server.edge.quotas``): quotas (429 ``insufficient_quota``), requests per
   minute (429 ``rate_limit_exceeded``), and for ``/v1/realtime`` a session slot (429).

Steps 3 and 4 are store calls, made in one worker thread hop. Then the identity is bound
(``server.identity``) for the route and everything it starts, the key id goes on log lines,
and the rate-limit and CORS headers go on the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import identity
from server.edge import auth, hosts, quotas
from server.edge.policy import DEMO_LOGIN_PATH, Rule, rule_for
from server.edge.refusal import Header, Refusal, forbidden
from server.identity import Identity
from server.logging_setup import bind
from server.state import AppState
from store import Leases, StoreError

log = logging.getLogger("voxline.server.edge")

KEY_ID_SCOPE = "voxline.key_id"
"""Where the edge leaves the caller's key id in the ASGI scope (for middleware outside it:
the access log line and the request metrics)."""


@dataclass(slots=True)
class _Decision:
    who: Identity | None = None
    refusal: Refusal | None = None
    headers: list[Header] = field(default_factory=list)


def _remote_disabled() -> Refusal:
    return forbidden(
        "No API key exists yet, so this server answers loopback clients only. Create one"
        " (`voxline keys create NAME`), or set VOXLINE_EDGE__ALLOW_REMOTE_WITHOUT_KEYS=true to"
        " serve everyone without authentication.",
        "remote_access_disabled",
    )


def _store_down() -> Refusal:
    return Refusal(
        503,
        "The state store is unavailable: try again shortly.",
        "store_unavailable",
        type="server_error",
        headers=[(b"retry-after", b"1")],
    )


class EdgeMiddleware:
    """Host, Origin, API keys and per-key limits in front of every route (module docstring).

    Args:
        app: The ASGI app behind the edge.
        state: The application state (settings, store, metrics).
    """

    def __init__(self, app: ASGIApp, *, state: AppState) -> None:
        self.app = app
        self.state = state
        # auth stays on once a key exists (revoking every key must not open the server), so a
        # positive answer is kept; a negative one is asked again: `voxline keys create` in
        # another process turns auth on for the next request
        self._keys_exist = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        settings = self.state.settings.edge
        headers = Headers(scope=scope)
        rule = rule_for(scope["path"], scope.get("method", "GET"))
        host = headers.get("host")
        server = scope.get("server")
        if not hosts.host_allowed(host, server[0] if server else None, settings.allowed_hosts):
            shown = (host or "")[:100]
            refusal = Refusal(
                400,
                f"Host {shown!r} is not served here: add it to VOXLINE_EDGE__ALLOWED_HOSTS.",
                "invalid_host",
            )
            await self._refuse(refusal, scope, receive, send)
            return
        cors: list[Header] = []
        origin = headers.get("origin")
        if origin is not None:
            if not hosts.origin_allowed(origin, host, settings.allowed_origins):
                refusal = forbidden(
                    f"Origin {origin[:100]!r} is not allowed: add it to"
                    " VOXLINE_EDGE__ALLOWED_ORIGINS.",
                    "origin_not_allowed",
                )
                await self._refuse(refusal, scope, receive, send)
                return
            cors = hosts.cors_headers(origin)
            if (
                scope["type"] == "http"
                and scope["method"] == "OPTIONS"
                and "access-control-request-method" in headers
            ):
                asked = headers.get("access-control-request-headers")
                await _no_content(send, hosts.preflight_headers(origin, asked))
                return
        secret = auth.credential(headers, list(scope.get("subprotocols") or ()), rule)
        client = scope.get("client")
        peer = client[0] if client else None
        decision = await asyncio.to_thread(self._decide, rule, secret, peer, scope["path"])
        if decision.refusal is not None:
            refusal = decision.refusal.with_headers(cors)
            if refusal.status == 401 and rule.cookie and _wants_page(scope, headers):
                refusal = _to_login(scope)
            await self._refuse(refusal, scope, receive, send)
            return
        await self._serve(scope, receive, send, decision, rule, cors + decision.headers)

    def _decide(self, rule: Rule, secret: str | None, peer: str | None, path: str) -> _Decision:
        """Who the caller is and whether it may go on (blocking: store calls)."""
        store, settings = self.state.store, self.state.settings.edge
        try:
            if not self._keys_exist:
                self._keys_exist = store.keys.any_keys()
            if not self._keys_exist:
                loopback = peer is not None and hosts.is_loopback(peer)
                if rule.open or loopback or settings.allow_remote_without_keys:
                    return _Decision()
                return _Decision(refusal=_remote_disabled())
            if rule.open:
                return _Decision()
            if path == "/metrics" and settings.metrics_from_loopback and peer is not None:
                if hosts.is_loopback(peer):
                    return _Decision()
            who = auth.authorize(store, secret, rule)
            if isinstance(who, Refusal):
                return _Decision(refusal=who)
            refusal, headers = quotas.admit(store, who, rule)
            return _Decision(who, refusal, headers)
        except StoreError:
            log.exception("the edge could not reach the state store")
            return _Decision(refusal=_store_down())

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        decision: _Decision,
        rule: Rule,
        extra: list[Header],
    ) -> None:
        who = decision.who

        async def send_with_headers(message: Message) -> None:
            # the handshake's 101 carries them too (ASGI's accept takes headers)
            if message["type"] in ("http.response.start", "websocket.accept") and extra:
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        if who is not None:
            scope[KEY_ID_SCOPE] = who.key_id
            self.state.metrics.count_key_request(who.key_id)
        async with contextlib.AsyncExitStack() as stack:
            if scope["type"] == "websocket" and rule.spends and who is not None:
                slot = await self._session_slot(who)
                if isinstance(slot, Refusal):
                    await self._refuse(slot.with_headers(extra), scope, receive, send)
                    return
                await stack.enter_async_context(slot)
            stack.enter_context(identity.bind(who))
            stack.enter_context(bind(key_id=who.key_id if who is not None else None))
            await self.app(scope, receive, send_with_headers)

    async def _session_slot(
        self, who: Identity
    ) -> contextlib.AbstractAsyncContextManager[None] | Refusal:
        """A lease on one of the key's ``max_sessions`` realtime slots, held (and renewed)
        while the socket is open; or the refusal when they are all taken."""
        limit = who.limits.max_sessions
        if limit is None:
            return contextlib.nullcontext()
        leases, ttl = self.state.store.leases, self.state.settings.edge.session_lease_ttl_s
        scope, holder = quotas.sessions_scope(who.key_id), uuid.uuid4().hex
        try:
            lease = await asyncio.to_thread(leases.acquire, scope, holder, ttl_s=ttl, limit=limit)
        except StoreError:
            log.exception("the edge could not reach the state store")
            return _store_down()
        if lease is None:
            return Refusal(
                429,
                f"Rate limit reached on concurrent realtime sessions: limit {limit}. Close a"
                " session first.",
                "rate_limit_exceeded",
                type="requests",
                headers=[(b"retry-after", b"1")],
            )
        return _held(leases, scope, holder, ttl, limit)

    async def _refuse(self, refusal: Refusal, scope: Scope, receive: Receive, send: Send) -> None:
        self.state.metrics.count_refusal(refusal.reason or refusal.code)
        if scope["type"] == "websocket":
            await refusal.send_websocket(scope.get("extensions") or {}, receive, send)
        else:
            await refusal.send_http(send)


@contextlib.asynccontextmanager
async def _held(
    leases: Leases, scope: str, holder: str, ttl_s: float, limit: int
) -> AsyncIterator[None]:
    """Hold a session's lease: renewed every third of its ttl, released at the end."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl_s / 3)
            try:
                if await asyncio.to_thread(leases.renew, scope, holder, ttl_s=ttl_s) is None:
                    # it lapsed (the store was away for a while): take the slot again if free
                    await asyncio.to_thread(leases.acquire, scope, holder, ttl_s=ttl_s, limit=limit)
            except StoreError:
                log.warning("could not renew a realtime session's slot")

    task = asyncio.create_task(renew(), name="edge-session-lease")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(StoreError):
            await asyncio.to_thread(leases.release, scope, holder)


def _wants_page(scope: Scope, headers: Headers) -> bool:
    page = "text/html" in headers.get("accept", "")
    return scope["type"] == "http" and scope["method"] == "GET" and page


def _to_login(scope: Scope) -> Refusal:
    """A browser without a login who asked for a demo page: to the login form (303)."""
    location = (scope.get("root_path", "") + DEMO_LOGIN_PATH).encode()
    headers = [(b"location", location)]
    return Refusal(303, "Log in with an API key first.", "login_required", headers=headers)


async def _no_content(send: Send, headers: list[Header]) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
