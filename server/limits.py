"""Request body limits enforced while the body is read.

A ``Content-Length`` header can lie or be absent (chunked uploads), so we count the bytes as
they arrive and answer 413 as soon as the limit is passed, before anything is parsed or decoded.
Two sizes: routes that take an audio upload (the policy table's ``upload``: transcriptions,
turns, the demo) may send ``audio.max_bytes`` and a little form overhead; every other body is
JSON, refused past ``edge.max_json_bytes`` (a 20 MB chat request is a 413 in microseconds, not
seconds of parsing and tokenizing).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.edge.policy import rule_for
from server.errors import error_body


class _TooLarge(HTTPException):
    """Raised from ``receive``: an HTTPException, so FastAPI's body parsing lets it through
    (it turns other exceptions into a 400) and the app's handler answers 413 with the code
    ``request_too_large`` (``server.errors``)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body is larger than {max_bytes} bytes")


class BodyLimitMiddleware:
    """Reject HTTP request bodies larger than their route's limit with 413 (OpenAI error shape).

    Args:
        app: The ASGI app.
        max_bytes: The limit of JSON bodies.
        upload_max_bytes: The limit of routes taking an upload (default: ``max_bytes``).
        overrides: A path prefix's own limit (``/v1/jobs`` takes long recordings).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        upload_max_bytes: int | None = None,
        overrides: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.json_max_bytes = max_bytes
        self.upload_max_bytes = upload_max_bytes or max_bytes
        self.overrides = dict(overrides or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope["path"], scope["method"])
        await _Limited(self.app, limit)(scope, receive, send)

    def _limit(self, path: str, method: str) -> int:
        for prefix, limit in self.overrides.items():
            if path == prefix or path.startswith(prefix + "/"):
                return limit
        return self.upload_max_bytes if rule_for(path, method).upload else self.json_max_bytes


class _Limited:
    """One request's body limit (the middleware picks it per route)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._reject(send, limit)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send, limit)

    async def _reject(self, send: Send, limit: int) -> None:
        body = error_body(
            f"request body is larger than {limit} bytes",
            type_="invalid_request_error",
            code="request_too_large",
        )
        payload = json.dumps(body).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
