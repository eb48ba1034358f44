"""What a release is: the values ``store.releases`` reads and writes, and the rules of names
and statuses.

Frozen values (``Release``, ``Canary``, ``Pointer``), the status names a release moves through,
``IMPLICIT`` (the release a server runs when none was promoted: its own settings) and
``check_name``; the transactions that move them are in ``store.releases``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import InvalidInput

IMPLICIT = "settings"
"""The release a server runs when none was promoted: its own settings."""

CANDIDATE, ACTIVE, CANARY, RETIRED, ROLLED_BACK = (
    "candidate",
    "active",
    "canary",
    "retired",
    "rolled_back",
)
STATUSES = (CANDIDATE, ACTIVE, CANARY, RETIRED, ROLLED_BACK)
"""``candidate`` (created, or refused by the gate), ``active``, ``canary``, ``retired`` (replaced
by a promotion), ``rolled_back`` (taken back, by hand or by the canary's watch: see ``reason``)."""

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


@dataclass(frozen=True, slots=True)
class Release:
    """One stored release.

    Attributes:
        name: Its id (``[a-z0-9][a-z0-9._-]*``, up to 63 characters).
        status: One of ``STATUSES``.
        env: The ``VOXLINE_*`` lines it was made of, as written.
        overrides: The same as nested settings overrides.
        description: Free text from its author.
        scorecard: What its last scored ``voxline eval`` was: ``blob`` (the scorecard JSON),
            ``suites``, ``quick``, ``settings_sha256``, ``golden_sha256``, ``created`` and a
            ``summary`` of metric values; ``None`` before one.
        gate: The last promotion gate's verdict: ``against`` (the active release), ``passed``,
            ``failures`` (one line per metric), ``at``.
        reason: Why it was last rolled back (by hand or automatically).
        history: Events, oldest first: ``{at, event, detail}``.
        created_at: Unix time.
        version: The document's version.
    """

    name: str
    status: str
    env: Mapping[str, str]
    overrides: Mapping[str, Any]
    description: str | None = None
    scorecard: Mapping[str, Any] | None = None
    gate: Mapping[str, Any] | None = None
    reason: str | None = None
    history: tuple[Mapping[str, Any], ...] = ()
    created_at: float = 0.0
    version: int = 0

    @property
    def implicit(self) -> bool:
        """Whether this is the server's own settings rather than a created release."""
        return self.name == IMPLICIT


@dataclass(frozen=True, slots=True)
class Canary:
    """A canary: ``percent`` of new sessions and turns go to release ``name``."""

    name: str
    percent: float
    since: float


@dataclass(frozen=True, slots=True)
class Pointer:
    """Which release serves.

    Attributes:
        active: The active release (``IMPLICIT`` when none was promoted).
        previous: The releases active before it, oldest first (``rollback`` pops the last).
        canary: The canary, if one runs.
        version: The pointer document's version (0: never written); a change names the
            version it read.
    """

    active: str = IMPLICIT
    previous: tuple[str, ...] = ()
    canary: Canary | None = None
    version: int = 0
    updated_at: float = 0.0

    def serving(self) -> tuple[str, ...]:
        """The releases a server must hold: the active one and the canary."""
        return (self.active,) if self.canary is None else (self.active, self.canary.name)


def check_name(name: str) -> str:
    """``name`` if it can name a release.

    Raises:
        InvalidInput: not ``[a-z0-9][a-z0-9._-]*`` (up to 63), or the reserved ``settings``.
    """
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"release name {name[:80]!r}: use lower-case letters, digits, '.', '_' and '-' "
            "(up to 63, starting with a letter or digit)",
            param="name",
        )
    if name == IMPLICIT:
        raise InvalidInput(
            f"{IMPLICIT!r} is reserved: it names the server's own settings", param="name"
        )
    return name
