"""Opening the store: URLs, migrations (idempotent, concurrent, versioned), SQLite's setup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.errors import InvalidInput
from pipeline.settings import Settings, StateSettings
from store import Conflict, Store, StoreUnavailable, database_url
from store.migrations import LATEST
from store.schema import schema_version
from tests.store.worker import spawn


def test_urls_select_the_backend(tmp_path: Path) -> None:
    assert database_url(None, tmp_path).database == str(tmp_path / "state.db")
    assert database_url("postgres://u:p@h/db", tmp_path).drivername == "postgresql+psycopg"
    assert database_url("postgresql://u:p@h/db", tmp_path).drivername == "postgresql+psycopg"
    assert database_url("sqlite:////x/y.db", tmp_path).database == "/x/y.db"
    for bad in ("mysql://h/db", "sqlite://", "sqlite:///:memory:", "not a url"):
        with pytest.raises(InvalidInput):
            database_url(bad, tmp_path)


def test_the_default_is_a_sqlite_file_in_the_data_dir_in_wal_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXLINE_STATE__DATA_DIR", str(tmp_path / "data"))
    settings = Settings().state
    with Store.open(settings) as store:
        assert store.db.dialect == "sqlite"
        with store.db.read() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    assert (tmp_path / "data" / "state.db").exists()


def test_the_password_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLINE_STATE__URL", "postgresql://voxline:hunter2@db:5432/voxline")
    settings = Settings().state
    assert "hunter2" not in repr(settings)
    assert settings.url is not None and "hunter2" in settings.url.get_secret_value()


def test_migrations_are_idempotent_and_versioned(store_url: str) -> None:
    with Store.open(url=store_url) as first:
        first.keys.create("k", ["admin"])
    with Store.open(url=store_url) as again:  # nothing to do, nothing lost
        assert len(again.keys.list()) == 1
        with again.db.read() as conn:
            assert conn.execute(sa.select(schema_version.c.version)).scalar_one() == LATEST


def test_a_newer_schema_is_refused(store_url: str) -> None:
    with Store.open(url=store_url) as store, store.db.write() as conn:
        conn.execute(schema_version.update().values(version=LATEST + 1))
    with pytest.raises(Conflict):
        Store.open(url=store_url)


def test_two_processes_opening_a_new_database_at_once_migrate_it_once(
    store_url: str, tmp_path: Path
) -> None:
    workers = [spawn("open", store_url) for _ in range(3)]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], outputs
    assert [json.loads(o) for o in outputs] == [LATEST] * 3
    with Store.open(url=store_url) as store, store.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema_version)).scalar() == 1


def test_state_settings_have_safe_defaults() -> None:
    state = StateSettings()
    assert state.url is None and state.sqlite_synchronous == "NORMAL"
    assert state.data_dir == Path.home() / ".local" / "share" / "voxline"


def test_full_synchronous_can_be_chosen(tmp_path: Path) -> None:
    settings = StateSettings(data_dir=tmp_path, sqlite_synchronous="FULL")
    with Store.open(settings) as store, store.db.read() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2


def test_an_unreachable_postgres_is_unavailable_without_leaking_the_password() -> None:
    url = "postgresql://voxline:s3cret-pw@127.0.0.1:1/voxline"
    with pytest.raises(StoreUnavailable) as raised:
        Store.open(StateSettings(busy_timeout_s=1.0), url=url)
    assert "s3cret-pw" not in str(raised.value) and "***" in str(raised.value)


def test_a_sqlite_writer_waits_for_the_lock_then_gives_up_typed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with Store.open(url=url) as holder:
        impatient = Store.open(StateSettings(busy_timeout_s=0.2), url=url)
        try:
            with holder.db.write() as conn:
                conn.execute(schema_version.update().values(updated_at=1.0))  # holds the lock
                with pytest.raises(StoreUnavailable):
                    impatient.keys.create("k", ["admin"])
                assert impatient.keys.list() == []  # readers are not blocked (WAL)
            assert impatient.keys.create("k", ["admin"]).key.name == "k"
        finally:
            impatient.close()
