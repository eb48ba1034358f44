"""API keys and ephemeral client secrets, stored hashed.

A key's secret is 32 random bytes (``vx-`` + 43 URL-safe characters), shown once at creation
and stored only as its SHA-256. A fast unsalted hash is the right tool here, unlike for
passwords: slow salted hashes (bcrypt, argon2) exist to make guessing low-entropy passwords
expensive, but a 256-bit random secret cannot be guessed however fast the hash, and SHA-256
lets :meth:`ApiKeys.verify` find the key by an indexed equality lookup on every request.
Lookup by hash is constant-time with respect to the secret in the way that matters: the index
walk depends on the hash, which reveals nothing usable about the secret (a preimage would be
needed), and the final comparison uses :func:`hmac.compare_digest`.

A key keeps a short visible prefix (``vx-AbCdEfG``) so lists can tell keys apart, its scopes
and its limits (``None``: unlimited). Revoking keeps the row (usage and charges still name it).

Client secrets are OpenAI Realtime's ``client_secrets``: minted for a key by an authenticated
call, short-lived, carrying the key's identity and (a subset of) its scopes, for a browser
that cannot send an ``Authorization`` header on a WebSocket. Stored hashed the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from pipeline.errors import InvalidInput
from store.database import Database
from store.errors import NotFound
from store.schema import api_keys, client_secrets

KEY_PREFIX = "vx-"
CLIENT_SECRET_PREFIX = "ek_"
_VISIBLE = 7  # random characters shown after the prefix: 42 of the secret's 256 bits
_SCOPE = re.compile(r"^[a-z][a-z0-9_.:-]{0,39}$")


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """What one key may use; ``None`` is unlimited."""

    rpm: int | None = None
    """Requests per minute."""
    max_sessions: int | None = None
    """Concurrent realtime sessions."""
    tokens_per_day: int | None = None
    """LLM tokens (prompt + completion) per UTC day."""
    audio_seconds_per_day: float | None = None
    """Seconds of audio (in and out) per UTC day."""
    usd_per_month: float | None = None
    """Cost in USD per UTC calendar month."""

    def __post_init__(self) -> None:
        for name in ("rpm", "max_sessions", "tokens_per_day", "audio_seconds_per_day"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidInput(f"{name} must be >= 0", param=name, code="invalid_limit")
        if self.usd_per_month is not None and self.usd_per_month < 0:
            raise InvalidInput("usd_per_month must be >= 0", param="usd_per_month")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored API key (never its secret)."""

    id: str
    name: str
    prefix: str
    """The secret's first characters, for telling keys apart in lists."""
    scopes: tuple[str, ...]
    limits: KeyLimits
    created_at: float
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked (it then verifies as nothing)."""
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just created, with its secret: the only time the secret exists outside its owner."""

    key: ApiKey
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClientSecretGrant:
    """What a valid client secret grants: its key's identity and (a subset of) its scopes."""

    key: ApiKey
    scopes: tuple[str, ...]
    session: Mapping[str, Any] | None
    """The session configuration it was minted with (OpenAI's ``session`` object), if any."""
    expires_at: float


@dataclass(frozen=True, slots=True)
class NewClientSecret:
    """A client secret just minted, with its value (returned once)."""

    grant: ClientSecretGrant
    secret: str = field(repr=False)


def secret_hash(secret: str) -> str:
    """The stored form of a secret: hex SHA-256 (see the module docstring for why)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _scopes(values: Iterable[str]) -> tuple[str, ...]:
    scopes = tuple(sorted(set(values)))
    if not scopes:
        raise InvalidInput("a key needs at least one scope", param="scopes", code="invalid_scope")
    bad = [s for s in scopes if not _SCOPE.match(s)]
    if bad:
        raise InvalidInput(f"invalid scope names: {bad}", param="scopes", code="invalid_scope")
    return scopes


def _key_of(row: sa.Row[Any]) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=tuple(row.scopes),
        limits=KeyLimits(
            rpm=row.rpm,
            max_sessions=row.max_sessions,
            tokens_per_day=row.tokens_per_day,
            audio_seconds_per_day=row.audio_seconds_per_day,
            usd_per_month=row.usd_per_month,
        ),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _limit_values(limits: KeyLimits) -> dict[str, Any]:
    return {
        "rpm": limits.rpm,
        "max_sessions": limits.max_sessions,
        "tokens_per_day": limits.tokens_per_day,
        "audio_seconds_per_day": limits.audio_seconds_per_day,
        "usd_per_month": limits.usd_per_month,
    }


class ApiKeys:
    """Create, verify, list and revoke API keys.

    Args:
        db: The database.
        clock: Unix time source.
    """

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def create(self, name: str, scopes: Iterable[str], limits: KeyLimits | None = None) -> NewKey:
        """A new key; its secret is in the result and nowhere else, ever.

        Raises:
            InvalidInput: An empty name, no scopes or a malformed scope name.
        """
        name = name.strip()
        if not name or len(name) > 200:
            raise InvalidInput("a key needs a name of 1-200 characters", param="name")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id="key_" + secrets.token_hex(8),
            name=name,
            prefix=secret[: len(KEY_PREFIX) + _VISIBLE],
            scopes=_scopes(scopes),
            limits=limits or KeyLimits(),
            created_at=self._clock(),
        )
        with self._db.write() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=key.id,
                    name=key.name,
                    prefix=key.prefix,
                    secret_hash=secret_hash(secret),
                    scopes=list(key.scopes),
                    created_at=key.created_at,
                    **_limit_values(key.limits),
                )
            )
        return NewKey(key, secret)

    def verify(self, secret: str) -> ApiKey | None:
        """The live key whose secret this is, or ``None`` (unknown, malformed or revoked)."""
        digest = secret_hash(secret)
        with self._db.read() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.secret_hash == digest)).first()
        if row is None or not hmac.compare_digest(row.secret_hash, digest):
            return None
        key = _key_of(row)
        return None if key.revoked else key

    def get(self, key_id: str) -> ApiKey | None:
        """The key with this id (revoked or not), or ``None``."""
        with self._db.read() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        return None if row is None else _key_of(row)

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        """Every key, oldest first."""
        query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        with self._db.read() as conn:
            return [_key_of(row) for row in conn.execute(query)]

    def set_limits(self, key_id: str, limits: KeyLimits) -> ApiKey:
        """Replace a key's limits.

        Raises:
            NotFound: No key has this id.
        """
        with self._db.write() as conn:
            row = conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id)
                .values(**_limit_values(limits))
                .returning(*api_keys.c)
            ).first()
        if row is None:
            raise NotFound(f"no API key {key_id!r}")
        return _key_of(row)

    def revoke(self, key_id: str) -> bool:
        """Revoke a key (and with it every client secret minted for it); ``False`` if no live
        key has this id."""
        with self._db.write() as conn:
            done = conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            ).rowcount
            conn.execute(client_secrets.delete().where(client_secrets.c.key_id == key_id))
        return bool(done)

    def any_keys(self) -> bool:
        """Whether any key was ever created. Auth is on from the first key, and stays on when
        every key is revoked: revoking the last key must not open the server to everyone."""
        with self._db.read() as conn:
            return conn.execute(sa.select(api_keys.c.id).limit(1)).first() is not None


class ClientSecrets:
    """Short-lived secrets minted for a key (OpenAI Realtime's ``client_secrets``).

    Args:
        db: The database.
        keys: The key repository (a grant carries the key record).
        clock: Unix time source.
    """

    def __init__(self, db: Database, keys: ApiKeys, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._keys = keys
        self._clock = clock

    def mint(
        self,
        key_id: str,
        ttl_s: float,
        *,
        scopes: Iterable[str] | None = None,
        session: Mapping[str, Any] | None = None,
    ) -> NewClientSecret:
        """A new secret for ``key_id`` that expires ``ttl_s`` seconds from now.

        Args:
            key_id: The live key it acts for.
            ttl_s: Lifetime in seconds.
            scopes: A subset of the key's scopes (default: all of them).
            session: A session configuration to carry (stored as JSON).

        Raises:
            NotFound: No live key has this id.
            InvalidInput: A non-positive ttl, or scopes the key does not have.
        """
        if not ttl_s > 0:
            raise InvalidInput("expires_after must be positive", param="expires_after")
        key = self._keys.get(key_id)
        if key is None or key.revoked:
            raise NotFound(f"no live API key {key_id!r}")
        granted = key.scopes if scopes is None else _scopes(scopes)
        if not set(granted) <= set(key.scopes):
            raise InvalidInput(
                f"scopes {sorted(set(granted) - set(key.scopes))} are not the key's",
                param="scopes",
                code="invalid_scope",
            )
        now = self._clock()
        secret = CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)
        grant = ClientSecretGrant(key, granted, dict(session) if session else None, now + ttl_s)
        with self._db.write() as conn:
            # expired secrets go as new ones come: the table holds the live ones, not every
            # demo login and browser session ever minted
            conn.execute(client_secrets.delete().where(client_secrets.c.expires_at <= now))
            conn.execute(
                client_secrets.insert().values(
                    secret_hash=secret_hash(secret),
                    key_id=key.id,
                    scopes=list(granted),
                    session=grant.session,
                    created_at=now,
                    expires_at=grant.expires_at,
                )
            )
        return NewClientSecret(grant, secret)

    def verify(self, secret: str) -> ClientSecretGrant | None:
        """What the secret grants, or ``None`` (unknown, expired, or its key revoked)."""
        digest = secret_hash(secret)
        query = (
            sa.select(
                api_keys,
                client_secrets.c.secret_hash.label("grant_hash"),
                client_secrets.c.scopes.label("grant_scopes"),
                client_secrets.c.session.label("grant_session"),
                client_secrets.c.expires_at.label("grant_expires_at"),
            )
            .join_from(client_secrets, api_keys, api_keys.c.id == client_secrets.c.key_id)
            .where(client_secrets.c.secret_hash == digest)
        )
        with self._db.read() as conn:
            row = conn.execute(query).first()
        if row is None or not hmac.compare_digest(row.grant_hash, digest):
            return None
        key = _key_of(row)
        if key.revoked or row.grant_expires_at <= self._clock():
            return None
        return ClientSecretGrant(
            key, tuple(row.grant_scopes), row.grant_session, row.grant_expires_at
        )

    def purge_expired(self) -> int:
        """Delete expired secrets; returns how many (they already verify as nothing)."""
        with self._db.write() as conn:
            return int(
                conn.execute(
                    client_secrets.delete().where(client_secrets.c.expires_at <= self._clock())
                ).rowcount
            )
