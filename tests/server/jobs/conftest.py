"""The store's fixtures (``store`` on SQLite and on the real Postgres, ``clock``) for the queue."""

from tests.store.conftest import clock, store, store_url  # noqa: F401  # fixtures, by name
