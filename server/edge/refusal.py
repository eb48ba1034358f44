"""A request the edge refuses, answered in OpenAI's error shape over HTTP or at a handshake.

Over HTTP the refusal is an ordinary JSON response. A WebSocket is refused before it is
accepted, with the same status and body when the server supports ASGI's denial response
(uvicorn does): a browser's foreign-origin handshake gets a 403, not a 101 followed by a close.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from starlette.types import Receive, Send

from server.errors import error_body

Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the edge refuses a request, and how to say it."""

    status: int
    message: str
    code: str
    type: str = "invalid_request_error"
    headers: list[Header] = field(default_factory=list)
    """Extra headers (``Retry-After``, ``WWW-Authenticate``, ``Location``...)."""
    reason: str = ""
    """A short label for ``voxline_edge_refusals_total`` (default: the code)."""

    def body(self) -> bytes:
        """The OpenAI error object, encoded."""
        return json.dumps(error_body(self.message, type_=self.type, code=self.code)).encode()

    def with_headers(self, headers: list[Header]) -> Refusal:
        """This refusal with ``headers`` added (rate-limit and CORS headers)."""
        return Refusal(
            self.status,
            self.message,
            self.code,
            self.type,
            [*self.headers, *headers],
            self.reason,
        )

    async def send_http(self, send: Send) -> None:
        """Answer an HTTP request (its body is never read)."""
        payload = self.body()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            *self.headers,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def send_websocket(
        self, scope_extensions: dict[str, object], receive: Receive, send: Send
    ) -> None:
        """Refuse a WebSocket handshake with this status (or a plain close, which servers
        answer with 403, where the denial-response extension is missing)."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if "websocket.http.response" not in scope_extensions:
            await send({"type": "websocket.close", "code": 1008})
            return
        payload = self.body()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            *self.headers,
        ]
        await send(
            {"type": "websocket.http.response.start", "status": self.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": payload})


def unauthenticated(message: str, code: str) -> Refusal:
    """401: no credential, or one that is unknown, revoked or expired."""
    return Refusal(401, message, code, headers=[(b"www-authenticate", b"Bearer")])


def forbidden(message: str, code: str) -> Refusal:
    """403: known caller (or a browser origin) not allowed to do this."""
    return Refusal(403, message, code)
