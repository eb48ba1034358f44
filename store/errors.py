"""What the state store raises on purpose (part of voxline's one tree, ``pipeline.errors``)::

    VoxlineError
     ├── InvalidInput          a caller's bad value (a wrong dimension, an empty scope list)
     └── StoreError            the store could not do what was asked
          ├── StoreUnavailable the database cannot be reached, or stayed locked past the
          │                    busy timeout: retry later (the server answers 503)
          ├── Conflict         the write clashes with what is stored (an id taken, a stale
          │                    version, a schema newer than this code)
          └── NotFound         the thing named does not exist (where ``None`` cannot say it)

Database driver exceptions never leave the store: :mod:`store.database` translates them at the
boundary (``raise StoreUnavailable(...) from e``), so callers branch on these types only.
"""

from __future__ import annotations

from pipeline.errors import VoxlineError


class StoreError(VoxlineError):
    """The state store could not do what was asked."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or stayed busy past the timeout; the call may be retried."""


class Conflict(StoreError):
    """The write clashes with what is stored (an id already taken, a stale version)."""


class NotFound(StoreError):
    """The thing named does not exist."""
