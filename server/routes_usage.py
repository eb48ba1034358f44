"""``GET /v1/usage``: what the cost ledger has stored, per key, per backend and per UTC day.

Served from the state store (``store.charges``, ``store.usage``), so it is the same on every
replica and survives restarts and ``kill -9``. It needs the ``admin`` scope (OpenAI's usage API
needs an admin key too): an operator sees every key, and narrows to one with ``?key_id=``. A key
sees its own position in its limits without it, in the ``x-ratelimit-*`` headers of every
response. The same money reaches Prometheus as ``voxline_cost_usd_total``.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from pipeline.ledger import Totals
from server.state import AppState, state_of
from store import Store, UsageAmounts

router = APIRouter()

_DAY = r"^\d{4}-\d{2}-\d{2}$"


def _totals_json(totals: Totals) -> dict[str, Any]:
    out = asdict(totals)
    # sub-micro-dollar float noise helps nobody reading a bill
    out["cost_usd"] = round(totals.cost_usd, 9)
    out["audio_seconds"] = round(totals.audio_seconds, 3)
    out["engine_seconds"] = round(totals.engine_seconds, 3)
    return out


def _amounts_json(amounts: UsageAmounts) -> dict[str, Any]:
    return {
        "requests": amounts.requests,
        "tokens": amounts.tokens,
        "audio_seconds": round(amounts.audio_seconds, 3),
        "cost_usd": round(amounts.usd, 9),
    }


def _report(store: Store, key_id: str | None, since: str | None, until: str | None) -> Any:
    """Everything the route shows, read in one worker thread (blocking store reads)."""
    charges = store.charges
    by_day: dict[str, Any] = {}
    for day, backends in charges.by_day(key_id=key_id, since=since, until=until).items():
        total = Totals()
        for t in backends.values():
            total = total.plus(t)
        by_day[day] = {
            "total": _totals_json(total),
            "by_backend": {b: _totals_json(t) for b, t in backends.items()},
        }
    keys = {k.id: k for k in store.keys.list()}
    by_key = []
    for kid, totals in store.charges.by_key(since=since, until=until).items():
        if key_id is not None and kid != key_id:
            continue
        key = keys.get(kid) if kid is not None else None
        entry: dict[str, Any] = {
            "key_id": kid,
            "name": key.name if key else None,
            "total": _totals_json(totals),
        }
        if kid is not None:
            entry["today"] = _amounts_json(store.usage.day(kid))
            entry["this_month"] = _amounts_json(store.usage.month(kid))
            entry["limits"] = asdict(key.limits) if key else None
        by_key.append(entry)
    return {
        "object": "usage",
        "currency": "USD",
        "total": _totals_json(charges.totals(key_id=key_id, since=since, until=until)),
        "speculative": _totals_json(
            charges.totals(key_id=key_id, since=since, until=until, speculative=True)
        ),
        "by_backend": {
            b: _totals_json(t)
            for b, t in charges.by_backend(key_id=key_id, since=since, until=until).items()
        },
        "by_day": by_day,
        "by_key": by_key,
    }


@router.get("/v1/usage")
async def usage(
    state: Annotated[AppState, Depends(state_of)],
    key_id: Annotated[str | None, Query(max_length=64, description="Only this key's.")] = None,
    since: Annotated[
        str | None, Query(pattern=_DAY, description="First UTC day (YYYY-MM-DD).")
    ] = None,
    until: Annotated[
        str | None, Query(pattern=_DAY, description="Last UTC day (YYYY-MM-DD).")
    ] = None,
) -> dict[str, Any]:
    """Totals over the charges stored, per backend, per UTC day (then per backend) and per key.

    Each totals object has ``charges`` (engine calls priced), ``tokens_in``, ``tokens_out``,
    ``chars``, ``audio_seconds``, ``engine_seconds`` and ``cost_usd``. ``speculative`` is the
    part of the total spent on speculative replies that were dropped before anyone heard them.
    ``by_key`` has each key's totals (``key_id`` null: work done while auth was off), and its
    usage counted against its quotas ``today`` (UTC) and ``this_month``.
    """
    return await asyncio.to_thread(_report, state.store, key_id, since, until)
