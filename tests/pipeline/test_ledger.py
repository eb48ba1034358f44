"""The cost ledger: pricing by backend kind, totals per backend and per UTC day, and concurrent
recording. (Durability is the state store's: tests/store/test_charges.py, and the server's
``kill -9`` test in tests/server/test_edge_server.py.)"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from pipeline.ledger import Charge, Ledger, PriceTable, backend_kind
from pipeline.settings import PricingSettings
from pipeline.stages import CallRecord

DAY1 = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC).timestamp()
DAY2 = datetime(2026, 3, 2, 0, 0, 1, tzinfo=UTC).timestamp()  # two seconds later, next UTC day


class Clock:
    """A settable clock for the ledger."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("backend", "kind"),
    [
        ("whisper:cpu", "cpu"),
        ("transformers:cuda", "gpu"),
        ("transformers:cuda:1", "gpu"),
        ("gpt_sovits:auto", "cpu"),
        ("piper:cpu", "cpu"),
        ("hosted:api.openai.com:443", "hosted"),
    ],
)
def test_backend_kind_is_read_from_the_engine_name(backend: str, kind: str) -> None:
    assert backend_kind(backend) == kind


def test_prices_follow_the_table() -> None:
    prices = PriceTable.from_settings(PricingSettings())
    hosted = "hosted:api.openai.com:443"

    # OpenAI list prices (the documented defaults)
    assert prices.price("stt", hosted, audio_seconds=90) == pytest.approx(0.009)
    assert prices.price("llm", hosted, tokens_in=1_000_000, tokens_out=2_000_000) == pytest.approx(
        0.15 + 1.20
    )
    assert prices.price("tts", hosted, chars=1000) == pytest.approx(0.015)
    # engine seconds of a hosted call are latency, not billed
    assert prices.price("tts", hosted, chars=0, engine_seconds=100) == 0.0
    # local: engine-hours times the machine kind's rate; tokens are free
    assert prices.price("llm", "transformers:cpu", tokens_in=10**6, engine_seconds=3600) == (
        pytest.approx(0.05)
    )
    assert prices.price("llm", "transformers:cuda", engine_seconds=1800) == pytest.approx(1.0)


def test_price_table_takes_edited_settings() -> None:
    prices = PriceTable.from_settings(
        PricingSettings(local_gpu_usd_per_hour=3.6, hosted_tts_usd_per_1m_chars=30.0)
    )

    assert prices.price("stt", "whisper:cuda", engine_seconds=10) == pytest.approx(0.01)
    assert prices.price("tts", "hosted:x:443", chars=100) == pytest.approx(0.003)


def test_totals_per_backend_and_per_day_match_what_was_recorded() -> None:
    clock = Clock(DAY1)
    ledger = Ledger(PriceTable(), clock=clock)
    hosted = "hosted:api.openai.com:443"

    c1 = ledger.charge(
        "r1", hosted, "llm", tokens_in=1200, tokens_out=300, engine_seconds=0.8
    ).cost_usd
    c2 = ledger.charge("r1", "whisper:cpu", "stt", audio_seconds=3.0, engine_seconds=0.5).cost_usd
    clock.now = DAY2
    c3 = ledger.charge("r2", hosted, "llm", tokens_in=800, tokens_out=100).cost_usd
    c4 = ledger.charge(
        "r2", "piper:cpu", "tts", chars=42, audio_seconds=2.5, engine_seconds=0.2
    ).cost_usd

    by_backend = ledger.by_backend()
    assert set(by_backend) == {hosted, "whisper:cpu", "piper:cpu"}
    assert by_backend[hosted].tokens_in == 2000
    assert by_backend[hosted].tokens_out == 400
    assert by_backend[hosted].charges == 2
    assert by_backend[hosted].cost_usd == pytest.approx(c1 + c3)
    assert by_backend[hosted].cost_usd == pytest.approx((2000 * 0.15 + 400 * 0.60) / 1e6)
    assert by_backend["piper:cpu"].chars == 42
    assert by_backend["piper:cpu"].audio_seconds == pytest.approx(2.5)

    by_day = ledger.by_day()
    assert list(by_day) == ["2026-03-01", "2026-03-02"]
    assert set(by_day["2026-03-01"]) == {hosted, "whisper:cpu"}
    assert by_day["2026-03-01"]["whisper:cpu"].cost_usd == pytest.approx(c2)
    assert by_day["2026-03-02"][hosted].tokens_in == 800
    assert by_day["2026-03-02"]["piper:cpu"].cost_usd == pytest.approx(c4)

    total = ledger.total()
    assert total.charges == 4
    assert total.cost_usd == pytest.approx(c1 + c2 + c3 + c4)
    assert total.engine_seconds == pytest.approx(1.5)


def test_listeners_hear_each_new_charge() -> None:
    heard: list[Charge] = []
    ledger = Ledger(clock=Clock(DAY1))
    ledger.listeners.append(heard.append)

    cost = ledger.charge("r9", "transformers:cuda", "llm", tokens_out=5, engine_seconds=36).cost_usd

    assert len(heard) == 1
    assert heard[0].request_id == "r9"
    assert heard[0].cost_usd == cost == pytest.approx(0.02)
    assert heard[0].day == "2026-03-01"


def test_concurrent_records_are_all_counted() -> None:
    ledger = Ledger(PriceTable())
    per_thread = 500

    def work(n: int) -> None:
        for _ in range(per_thread):
            ledger.charge(f"r{n}", f"b{n % 2}:cpu", "llm", tokens_in=1, engine_seconds=3.6)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert ledger.total().tokens_in == 4 * per_thread
    assert ledger.by_backend()["b0:cpu"].charges == 2 * per_thread
    assert ledger.total().cost_usd == pytest.approx(4 * per_thread * 0.00005)


def test_record_call_prices_each_engine_call_from_its_own_counts() -> None:
    ledger = Ledger(PriceTable(), clock=Clock(DAY1))
    hosted = "hosted:api.openai.com:443"
    stt = CallRecord("stt", "whisper:cpu", 100.0, 400.0, 1, audio_in_seconds=2.4)
    llm = CallRecord("llm", hosted, 50.0, 1800.0, 9, tokens_in=60, tokens_out=7)
    tts = CallRecord("tts", "piper:cuda", 80.0, 900.0, 3, chars=19, audio_out_seconds=2.0)

    costs = [ledger.record_call("r1", call) for call in (stt, llm, tts)]
    spec = ledger.record_call("r1", llm, speculative=True)

    assert costs[0] == pytest.approx(0.4 * 0.05 / 3600)  # local: compute time
    assert costs[1] == pytest.approx((60 * 0.15 + 7 * 0.60) / 1e6)  # hosted: tokens
    assert costs[2] == pytest.approx(0.9 * 2.0 / 3600)
    assert spec == costs[1]
    assert ledger.total().cost_usd == pytest.approx(sum(costs) + spec)
    by_backend = ledger.by_backend()
    assert by_backend["whisper:cpu"].audio_seconds == pytest.approx(2.4)
    assert by_backend["whisper:cpu"].engine_seconds == pytest.approx(0.4)
    assert by_backend[hosted].tokens_in == 120 and by_backend[hosted].tokens_out == 14
    assert by_backend["piper:cuda"].chars == 19
    assert by_backend["piper:cuda"].audio_seconds == pytest.approx(2.0)
    # dropped speculative work is in every total, and also shown apart
    speculative = ledger.speculative()
    assert (speculative.charges, speculative.tokens_in) == (1, 60)
    assert speculative.cost_usd == pytest.approx(spec)
