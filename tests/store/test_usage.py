"""Usage totals and quotas, on both backends."""

from __future__ import annotations

import threading

import pytest

from store import KeyLimits, Store, UsageAmounts
from store.usage import periods
from tests.store.conftest import Clock


def test_usage_adds_up_per_day_and_month(store: Store, clock: Clock) -> None:
    store.usage.add("key_a", UsageAmounts(requests=1, tokens=100, audio_seconds=2.5, usd=0.01))
    store.usage.add("key_a", UsageAmounts(requests=1, tokens=50, usd=0.02))
    store.usage.add("key_b", UsageAmounts(tokens=7))
    assert store.usage.day("key_a") == UsageAmounts(2, 150, 2.5, pytest.approx(0.03))
    clock.advance(86_400)  # the next day, same month
    store.usage.add("key_a", UsageAmounts(tokens=1))
    assert store.usage.day("key_a") == UsageAmounts(tokens=1)
    assert store.usage.month("key_a").tokens == 151
    history = store.usage.history("key_a")
    assert [p.period for p in history] == ["2025-01", "2025-01-15", "2025-01-16"]
    assert [p.subject for p in store.usage.history(since="2025-01-16")] == ["key_a"]


def test_periods_end_at_utc_midnight_and_month_start() -> None:
    day, month, day_left, month_left = periods(1_736_942_400.0)  # 2025-01-15 12:00 UTC
    assert (day, month) == ("2025-01-15", "2025-01")
    assert day_left == 12 * 3600
    assert month_left == (16 * 24 + 12) * 3600


def test_a_spent_quota_is_refused_and_names_itself(store: Store) -> None:
    limits = KeyLimits(tokens_per_day=100, usd_per_month=1.0)
    assert store.usage.check("k", limits).allowed
    assert not store.usage.check("k", limits, UsageAmounts(tokens=101)).allowed
    store.usage.add("k", UsageAmounts(tokens=100))
    refused = store.usage.check("k", limits)
    assert not refused.allowed
    assert (refused.quota, refused.limit, refused.used) == ("tokens_per_day", 100, 100)
    assert refused.reset_s == 12 * 3600
    store.usage.add("other", UsageAmounts(usd=1.5))
    money = store.usage.check("other", limits)
    assert (money.allowed, money.quota) == (False, "usd_per_month")
    assert store.usage.check("k", KeyLimits()).allowed  # no limits: unlimited


def test_add_within_counts_only_what_fits(store: Store) -> None:
    limits = KeyLimits(audio_seconds_per_day=10.0)
    assert store.usage.add_within("k", UsageAmounts(audio_seconds=6.0), limits).allowed
    refused = store.usage.add_within("k", UsageAmounts(audio_seconds=6.0), limits)
    assert not refused.allowed and refused.quota == "audio_seconds_per_day"
    assert store.usage.day("k").audio_seconds == 6.0
    assert store.usage.add_within("k", UsageAmounts(audio_seconds=4.0), limits).allowed
    assert store.usage.day("k").audio_seconds == 10.0


def test_concurrent_additions_are_all_counted_and_quotas_hold(store: Store) -> None:
    limits = KeyLimits(tokens_per_day=30)
    admitted: list[bool] = []

    def work() -> None:
        for _ in range(10):
            store.usage.add("all", UsageAmounts(requests=1, tokens=1))
            admitted.append(
                store.usage.add_within("capped", UsageAmounts(tokens=1), limits).allowed
            )

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.usage.day("all") == UsageAmounts(requests=40, tokens=40)
    assert store.usage.month("all").tokens == 40
    assert sum(admitted) == 30 and store.usage.day("capped").tokens == 30
