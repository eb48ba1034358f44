"""Who a request is for: the API key behind it, bound in a context variable by the edge.

The edge (``server.edge``) authenticates every request and WebSocket before any route runs and
binds its :class:`Identity` for the request's whole life: the route, its streaming body and
every task created inside (a realtime session's turns and responses) see the same one. Other
features read it rather than parsing headers again::

    from server import identity

    who = identity.current()          # None: auth is off (no API key exists yet)
    owner = who.key_id if who else None

What travels with it: the key's id (charges, usage, logs and ``voxline_key_requests_total``
carry it), its scopes and its limits. A request authenticated by a client secret (a browser's
realtime session, the demo) carries the key the secret was minted for, with the secret's
scopes. Nothing here holds a secret: only ids and the key's visible prefix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from store import ApiKey, ClientSecretGrant, KeyLimits

Via = Literal["api_key", "client_secret"]


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller."""

    key_id: str
    """The API key's id (``key_...``): what usage, charges, logs and leases are keyed by."""
    key_name: str
    """The key's name, as given to ``voxline keys create``."""
    scopes: tuple[str, ...]
    """What the caller may do (``realtime``, ``audio``, ``chat``, ``admin``)."""
    limits: KeyLimits
    """The key's rate limits and quotas (``None`` fields: unlimited)."""
    via: Via = "api_key"
    """How the caller authenticated: the key itself, or a client secret minted for it."""
    session: Mapping[str, Any] | None = None
    """A client secret's session configuration (OpenAI's ``session`` object), if it has one."""

    @classmethod
    def of_key(cls, key: ApiKey) -> Identity:
        """The identity of a caller presenting the key itself."""
        return cls(key.id, key.name, key.scopes, key.limits)

    @classmethod
    def of_grant(cls, grant: ClientSecretGrant) -> Identity:
        """The identity of a caller presenting a client secret."""
        key = grant.key
        return cls(key.id, key.name, grant.scopes, key.limits, "client_secret", grant.session)

    def allows(self, scope: str | None) -> bool:
        """Whether this caller has ``scope`` (``None``: any authenticated caller)."""
        return scope is None or scope in self.scopes


_current: ContextVar[Identity | None] = ContextVar("voxline_identity", default=None)


def current() -> Identity | None:
    """The identity of the request (or realtime session) being served here; ``None`` when auth
    is off (no API key exists: the server then serves loopback clients only) or outside one."""
    return _current.get()


@contextmanager
def bind(who: Identity | None) -> Iterator[None]:
    """Make ``who`` the current identity inside the block (and in tasks created inside it)."""
    token = _current.set(who)
    try:
        yield
    finally:
        _current.reset(token)
