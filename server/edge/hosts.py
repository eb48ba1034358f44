"""Host and Origin checks (DNS rebinding, cross-site requests) and CORS.

**Host.** A page on ``evil.example`` whose DNS name is re-pointed at 127.0.0.1 (DNS rebinding)
reaches a loopback server as same-origin, so its requests carry ``Host: evil.example``. A
request is served only when its ``Host`` names a loopback name (``localhost``, ``*.localhost``,
127.0.0.0/8, ``::1``), the very address the connection arrived on (an IP literal: a rebinding
page cannot make a browser send one), or one of ``edge.allowed_hosts``.

**Origin.** Browsers send ``Origin`` on cross-origin requests and on every WebSocket handshake
(which CORS does not protect: a foreign page may open one). A request with an ``Origin`` is
served when it is the server's own origin (its host and port are the request's ``Host``, which
passed the check above), a loopback origin (a local development page), or one of
``edge.allowed_origins``; anything else, ``null`` included, is refused with 403. Clients that
are not browsers send no ``Origin`` and are not concerned.

**CORS.** Allowed origins get ``Access-Control-Allow-Origin`` (their own, never ``*``) and the
rate-limit and request-id headers exposed; a preflight (``OPTIONS`` with
``Access-Control-Request-Method``) is answered here, before authentication (browsers send no
credentials on a preflight). Credentials are never allowed cross-origin: API clients send a
bearer key, and the demo's cookie is same-site only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

from server.edge.refusal import Header

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_METHODS = b"GET, POST, DELETE, OPTIONS"
_EXPOSED = (
    b"x-request-id, retry-after, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, "
    b"x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, "
    b"x-ratelimit-reset-tokens"
)
_DEFAULT_HEADERS = b"authorization, content-type, openai-beta, x-request-id"


def host_name(host: str) -> str:
    """The name or address of a ``Host`` header value, without port or brackets, lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def is_loopback(name: str) -> bool:
    """Whether ``name`` (a host name or IP address) is this machine's loopback."""
    name = name.rstrip(".")
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _matches(name: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        pattern = pattern.strip().lower()
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def host_allowed(host: str | None, local_address: str | None, allowed: Sequence[str]) -> bool:
    """Whether a request whose ``Host`` header is ``host`` may be served.

    Args:
        host: The ``Host`` header (``None``: absent, as from HTTP/1.0 clients, never browsers).
        local_address: The address the connection arrived on (ASGI ``scope["server"]``).
        allowed: ``edge.allowed_hosts``.
    """
    if host is None:
        return True
    name = host_name(host)
    return (
        is_loopback(name)
        or (local_address is not None and name == host_name(local_address))
        or _matches(name, allowed)
    )


def origin_allowed(origin: str, host: str | None, allowed: Sequence[str]) -> bool:
    """Whether a browser request from ``origin`` may be served (see the module docstring)."""
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False  # "null" (sandboxed frames, file://) and anything stranger
    if is_loopback(parts.hostname):
        return True
    return host is not None and parts.netloc.lower() == host.strip().lower()


def cors_headers(origin: str) -> list[Header]:
    """The headers of a response to an allowed cross-origin request."""
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", _EXPOSED),
        (b"vary", b"Origin"),
    ]


def preflight_headers(origin: str, requested_headers: str | None) -> list[Header]:
    """The headers of the answer to an allowed preflight (the requested headers are allowed:
    what a request may carry is the edge's business after the preflight, not the browser's)."""
    asked = (requested_headers or "").encode("latin-1") or _DEFAULT_HEADERS
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-methods", _METHODS),
        (b"access-control-allow-headers", asked),
        (b"access-control-max-age", b"600"),
        (b"vary", b"Origin"),
    ]
