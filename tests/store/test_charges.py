"""Charges of the cost ledger: append, sums, and durability across kill -9."""

from __future__ import annotations

import json
import signal

import pytest

from pipeline.ledger import Charge, Ledger, PriceTable, Totals
from store import Store
from tests.store.worker import spawn

DAY1 = 1_736_942_400.0  # 2025-01-15 12:00 UTC
DAY2 = DAY1 + 86_400


def _charge(at: float, backend: str, request_id: str = "r1", **usage: float) -> Charge:
    return Charge(at=at, request_id=request_id, backend=backend, stage="llm", **usage)  # type: ignore[arg-type]


def test_charges_sum_by_key_day_and_backend(store: Store) -> None:
    store.charges.append(_charge(DAY1, "hosted:x:1", tokens_in=10, cost_usd=0.5), key_id="a")
    store.charges.append(_charge(DAY1, "llamacpp:cpu", tokens_out=5, cost_usd=0.25), key_id="a")
    store.charges.append(
        _charge(DAY2, "hosted:x:1", tokens_in=1, cost_usd=1.0), key_id="b", speculative=True
    )
    store.charges.append(_charge(DAY2, "whisper:cpu", audio_seconds=2.0))
    total = store.charges.totals()
    assert (total.charges, total.tokens_in, total.tokens_out) == (4, 11, 5)
    assert total.cost_usd == pytest.approx(1.75) and total.audio_seconds == 2.0
    assert store.charges.totals(key_id="a").cost_usd == pytest.approx(0.75)
    assert store.charges.totals(speculative=False).charges == 3
    assert store.charges.totals(since="2025-01-16").charges == 2
    assert store.charges.totals(until="2025-01-15").charges == 2
    assert store.charges.totals(key_id="nobody") == Totals()
    by_day = store.charges.by_day()
    assert list(by_day) == ["2025-01-15", "2025-01-16"]
    assert sorted(by_day["2025-01-16"]) == ["hosted:x:1", "whisper:cpu"]
    assert store.charges.by_backend()["hosted:x:1"].charges == 2
    by_key = store.charges.by_key()
    assert by_key["a"].charges == 2 and by_key[None].charges == 1


def test_stored_charges_come_back_whole(store: Store) -> None:
    charge = Charge(
        at=DAY1, request_id="req", backend="piper:cpu", stage="tts", chars=12,
        audio_seconds=1.5, engine_seconds=0.4, cost_usd=1e-5,
    )  # fmt: skip
    row_id = store.charges.append(charge, key_id="k", speculative=True)
    [stored] = store.charges.for_request("req")
    assert (stored.id, stored.charge, stored.key_id, stored.speculative) == (
        row_id, charge, "k", True,
    )  # fmt: skip


def test_charges_of_one_request_are_stored_together(store: Store) -> None:
    items = [
        _charge(DAY1, "whisper:cpu", "req", audio_seconds=2.0, cost_usd=0.1),
        _charge(DAY1, "llamacpp:cpu", "req", tokens_in=7, tokens_out=3, cost_usd=0.2),
    ]
    store.charges.append_many(items, key_id="k")
    store.charges.append_many([], key_id="k")  # nothing to store: no transaction, no error
    stored = store.charges.for_request("req")
    assert [s.charge for s in stored] == items
    assert {s.key_id for s in stored} == {"k"}
    assert store.charges.totals(key_id="k").cost_usd == pytest.approx(0.3)


def test_the_store_agrees_with_the_ledgers_own_totals(store: Store) -> None:
    ledger = Ledger(PriceTable(), clock=lambda: DAY1)
    ledger.listeners.append(store.charges.append)  # the store as the ledger's sink
    ledger.charge("r", "hosted:api:443", "llm", tokens_in=1000, tokens_out=200)
    ledger.charge("r", "whisper:cpu", "stt", audio_seconds=3.0, engine_seconds=0.5)
    assert store.charges.totals() == ledger.total()
    assert store.charges.by_day() == ledger.by_day()
    assert store.charges.by_backend() == ledger.by_backend()


def test_a_charge_survives_kill_9_of_its_process(store_url: str, store: Store) -> None:
    worker = spawn("charge", store_url, "req-killed")
    assert worker.stdout is not None
    assert json.loads(worker.stdout.readline()) == "stored"
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    assert worker.returncode == -signal.SIGKILL
    with Store.open(url=store_url) as reopened:
        [stored] = reopened.charges.for_request("req-killed")
    assert stored.key_id == "key_1" and stored.charge.backend == "whisper:cpu"
