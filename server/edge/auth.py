"""Credentials: where a request carries one, and what it proves.

Three carriers, one secret format each:

- ``Authorization: Bearer <secret>``, what every OpenAI SDK sends (HTTP and the realtime
  WebSocket): an API key (``vx-...``) or a client secret (``ek_...``);
- the WebSocket subprotocol ``openai-insecure-api-key.<secret>``, for browsers, which cannot
  set headers on a WebSocket (OpenAI's convention; meant for client secrets, and an API key
  works too, as it does with OpenAI). The server never echoes it: it selects ``realtime``;
- the demo's login cookie (``voxline_demo``, a client secret; the ``/demo`` paths only).

Keys and client secrets are stored hashed (``store.keys``); a revoked key, an expired secret
or an unknown one all verify as nothing, and the caller gets the same 401.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie

from starlette.datastructures import Headers

from server.edge.policy import Rule
from server.edge.refusal import Refusal, forbidden, unauthenticated
from server.identity import Identity
from store import Store
from store.keys import CLIENT_SECRET_PREFIX, KEY_PREFIX

SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
DEMO_COOKIE = "voxline_demo"
_MAX_SECRET = 256  # longer than any secret we mint: not worth hashing


def bearer(headers: Headers) -> str | None:
    """The bearer token of the ``Authorization`` header, if any."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def subprotocol_secret(subprotocols: list[str]) -> str | None:
    """The secret a browser put in ``openai-insecure-api-key.<secret>``, if any."""
    for protocol in subprotocols:
        if protocol.startswith(SUBPROTOCOL_PREFIX):
            return protocol[len(SUBPROTOCOL_PREFIX) :] or None
    return None


def demo_cookie(headers: Headers) -> str | None:
    """The demo's login cookie, if the request carries one."""
    raw = headers.get("cookie")
    if not raw:
        return None
    try:
        morsel = SimpleCookie(raw).get(DEMO_COOKIE)
    except CookieError:
        return None
    return morsel.value if morsel is not None and morsel.value else None


def credential(headers: Headers, subprotocols: list[str], rule: Rule) -> str | None:
    """The secret the request presents for ``rule``'s route: the header first, then the
    subprotocol (a WebSocket), then the demo's cookie (the demo's paths)."""
    found = bearer(headers) or subprotocol_secret(subprotocols)
    if found is None and rule.cookie:
        found = demo_cookie(headers)
    return found


def verify(store: Store, secret: str) -> Identity | None:
    """Who ``secret`` belongs to (blocking: a store lookup), or ``None``."""
    if len(secret) > _MAX_SECRET:
        return None
    if secret.startswith(KEY_PREFIX):
        key = store.keys.verify(secret)
        return None if key is None else Identity.of_key(key)
    if secret.startswith(CLIENT_SECRET_PREFIX):
        grant = store.client_secrets.verify(secret)
        return None if grant is None else Identity.of_grant(grant)
    return None


def authorize(store: Store, secret: str | None, rule: Rule) -> Identity | Refusal:
    """The caller's identity for ``rule``'s route, or why it is refused (blocking)."""
    if secret is None:
        return unauthenticated(
            "You didn't provide an API key: send it as 'Authorization: Bearer <key>' (browsers:"
            " a realtime client secret as the WebSocket subprotocol"
            " 'openai-insecure-api-key.<secret>').",
            "missing_api_key",
        )
    who = verify(store, secret)
    if who is None:
        return unauthenticated(
            "Incorrect API key provided: it is unknown, revoked or expired.", "invalid_api_key"
        )
    if who.via != "api_key" and (rule.keys_only or not (rule.scope == "realtime" or rule.secrets)):
        # a client secret is handed to a browser: it opens realtime sessions (and the demo), not
        # the key's files, stores, jobs or anything else "any key" may do
        return forbidden(
            "A client secret opens realtime sessions only: use an API key.", "insufficient_scope"
        )
    if not who.allows(rule.scope):
        return forbidden(
            f"This key lacks the '{rule.scope}' scope this route needs (it has: "
            f"{', '.join(who.scopes)}).",
            "insufficient_scope",
        )
    return who
