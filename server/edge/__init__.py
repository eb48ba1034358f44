"""The edge of the server: the one layer every request crosses before any route.

The core never sees an unauthenticated request, and an identity travels with every request
and session into usage, charges, logs and metrics. What lives here, one idea per module:

- :mod:`server.edge.policy`: which scope each route needs and what it counts against;
- :mod:`server.edge.hosts`: the ``Host`` check (DNS rebinding), the ``Origin`` check
  (cross-site requests, WebSocket hijacking) and CORS;
- :mod:`server.edge.auth`: API keys and client secrets, from a bearer header, the realtime
  subprotocol or the demo's login cookie;
- :mod:`server.edge.quotas`: per-key requests per minute, quotas, session slots, and OpenAI's
  ``x-ratelimit-*`` headers;
- :mod:`server.edge.realtime`: the same limits inside a realtime session
  (``rate_limits.updated``, an ``error`` event);
- :mod:`server.edge.middleware`: the ASGI middleware that runs them in order;
- :mod:`server.edge.demo_login`: the demo page's login (an API key in, a cookie out).

The caller's identity is :func:`server.identity.current` (key id, scopes, limits).

Middleware order in ``server.app`` (outermost first)::

    RequestContextMiddleware   request id, access log line (reads the key id the edge left)
    RequestMetricsMiddleware   voxline_requests_total (refusals included)
    EdgeMiddleware             Host, Origin/CORS, key, scope, quotas, rpm, session slots
    AdmissionMiddleware        server-wide capacity (server.admission): after the edge, so that a
                               request the edge refuses never takes a place in an engine's queue
    BodyLimitMiddleware        413 past the route's body limit, before parsing
    MeterMiddleware            one meter per request (server.accounting)
    ReleaseMiddleware          the release a route leases on first use (server.releases)
    routes
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from server.edge.middleware import EdgeMiddleware
from server.edge.quotas import OverLimit

__all__ = ["EdgeMiddleware", "OverLimit", "install_handlers"]


def install_handlers(app: FastAPI) -> None:
    """Answer ``OverLimit`` (a quota found spent inside a route) like the edge would."""

    async def over_limit(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OverLimit)
        refusal = exc.refusal
        headers = {k.decode(): v.decode() for k, v in refusal.headers}
        return JSONResponse(
            {
                "error": {
                    "message": refusal.message,
                    "type": refusal.type,
                    "param": None,
                    "code": refusal.code,
                }
            },
            status_code=refusal.status,
            headers=headers,
        )

    app.add_exception_handler(OverLimit, over_limit)
