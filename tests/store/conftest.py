"""The ``store`` fixture: every store test runs on SQLite and on the real Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from store import Store


class Clock:
    """A Unix clock that moves only when told (2025-01-15 12:00 UTC to start)."""

    def __init__(self, now: float = 1_736_942_400.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_url: str, clock: Clock) -> Iterator[Store]:
    """An open store on each backend, on the test's clock."""
    opened = Store.open(url=store_url, clock=clock)
    try:
        yield opened
    finally:
        opened.close()
