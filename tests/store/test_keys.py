"""API keys and client secrets, on both backends."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from pipeline.errors import InvalidInput
from store import KeyLimits, NotFound, Store
from store.keys import secret_hash
from store.schema import api_keys, client_secrets
from tests.store.conftest import Clock


def test_a_created_key_verifies_by_its_secret_and_is_stored_only_hashed(store: Store) -> None:
    limits = KeyLimits(rpm=60, max_sessions=2, tokens_per_day=1000, usd_per_month=5.0)
    new = store.keys.create("ci bot", ["audio", "realtime"], limits)
    assert new.secret.startswith("vx-") and len(new.secret) > 40
    assert new.key.prefix == new.secret[:10]
    assert new.secret not in repr(new)
    assert store.keys.verify(new.secret) == new.key
    assert store.keys.verify(new.secret + "x") is None
    assert store.keys.verify("") is None
    with store.db.read() as conn:
        row = conn.execute(sa.select(api_keys)).one()
    assert new.secret not in str(tuple(row))
    assert row.secret_hash == secret_hash(new.secret)
    got = store.keys.get(new.key.id)
    assert got is not None and got.limits == limits and got.scopes == ("audio", "realtime")


def test_auth_is_on_from_the_first_key_and_stays_on_after_revoking_it(store: Store) -> None:
    assert not store.keys.any_keys()
    new = store.keys.create("k", ["admin"])
    assert store.keys.any_keys()
    assert store.keys.revoke(new.key.id)
    assert not store.keys.revoke(new.key.id)  # already revoked
    assert store.keys.verify(new.secret) is None
    assert store.keys.any_keys()
    listed = store.keys.list()
    assert [k.id for k in listed] == [new.key.id] and listed[0].revoked
    assert store.keys.list(include_revoked=False) == []


def test_keys_list_oldest_first_and_limits_can_change(store: Store, clock: Clock) -> None:
    first = store.keys.create("a", ["chat"])
    clock.advance(1)
    second = store.keys.create("b", ["chat"])
    assert [k.name for k in store.keys.list()] == ["a", "b"]
    changed = store.keys.set_limits(second.key.id, KeyLimits(rpm=1))
    assert changed.limits.rpm == 1 and store.keys.get(first.key.id).limits.rpm is None  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        store.keys.set_limits("key_missing", KeyLimits())


@pytest.mark.parametrize(
    ("name", "scopes"), [("", ["chat"]), ("x", []), ("x", ["Bad Scope"]), ("x" * 201, ["chat"])]
)
def test_bad_names_and_scopes_are_refused(store: Store, name: str, scopes: list[str]) -> None:
    with pytest.raises(InvalidInput):
        store.keys.create(name, scopes)


def test_negative_limits_are_refused() -> None:
    with pytest.raises(InvalidInput):
        KeyLimits(rpm=-1)


def test_a_client_secret_grants_its_keys_identity_until_it_expires(
    store: Store, clock: Clock
) -> None:
    key = store.keys.create("browser", ["realtime", "audio"]).key
    minted = store.client_secrets.mint(
        key.id, 60, scopes=["realtime"], session={"type": "realtime", "voice": "joe"}
    )
    assert minted.secret.startswith("ek_") and minted.secret not in repr(minted)
    grant = store.client_secrets.verify(minted.secret)
    assert grant is not None
    assert grant.key == key and grant.scopes == ("realtime",)
    assert grant.session == {"type": "realtime", "voice": "joe"}
    assert grant.expires_at == clock.now + 60
    assert store.keys.verify(minted.secret) is None  # not an API key
    with store.db.read() as conn:
        assert minted.secret not in str(conn.execute(sa.select(client_secrets)).all())
    clock.advance(59)
    assert store.client_secrets.verify(minted.secret) is not None
    clock.advance(1)
    assert store.client_secrets.verify(minted.secret) is None
    assert store.client_secrets.purge_expired() == 1


def test_minting_a_secret_removes_the_expired_ones(store: Store, clock: Clock) -> None:
    key = store.keys.create("demo", ["realtime"]).key
    for _ in range(3):
        store.client_secrets.mint(key.id, 60)
    clock.advance(61)
    live = store.client_secrets.mint(key.id, 60)
    with store.db.read() as conn:
        rows = conn.execute(sa.select(client_secrets)).all()
    assert len(rows) == 1 and store.client_secrets.verify(live.secret) is not None


def test_revoking_a_key_kills_its_client_secrets(store: Store) -> None:
    key = store.keys.create("k", ["realtime"]).key
    minted = store.client_secrets.mint(key.id, 600)
    assert store.client_secrets.verify(minted.secret) is not None
    store.keys.revoke(key.id)
    assert store.client_secrets.verify(minted.secret) is None
    with pytest.raises(NotFound):
        store.client_secrets.mint(key.id, 600)


def test_a_client_secret_cannot_widen_its_keys_scopes(store: Store) -> None:
    key = store.keys.create("k", ["realtime"]).key
    with pytest.raises(InvalidInput):
        store.client_secrets.mint(key.id, 60, scopes=["admin"])
    with pytest.raises(InvalidInput):
        store.client_secrets.mint(key.id, 0)
    with pytest.raises(NotFound):
        store.client_secrets.mint("key_missing", 60)
