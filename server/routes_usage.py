"""``GET /v1/usage``: what the cost ledger has recorded, per backend and per UTC day.

Operators read it to see where the money and the engine time go; the same figures reach
Prometheus as ``voxline_cost_usd_total``. It carries no per-user data (there are no users yet);
once API keys land it belongs behind an admin key.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from pipeline.ledger import Ledger, Totals
from server.state import state_of

router = APIRouter()


def ledger_of(request: Request) -> Ledger:
    """The app's cost ``Ledger`` (``AppState.ledger``; a FastAPI dependency)."""
    ledger = getattr(state_of(request), "ledger", None)
    if not isinstance(ledger, Ledger):
        raise RuntimeError("this app has no Ledger: set AppState.ledger in create_app")
    return ledger


def _totals_json(totals: Totals) -> dict[str, Any]:
    out = asdict(totals)
    # sub-micro-dollar float noise helps nobody reading a bill
    out["cost_usd"] = round(totals.cost_usd, 9)
    out["audio_seconds"] = round(totals.audio_seconds, 3)
    out["engine_seconds"] = round(totals.engine_seconds, 3)
    return out


@router.get("/v1/usage")
async def usage(ledger: Annotated[Ledger, Depends(ledger_of)]) -> dict[str, Any]:
    """Totals over everything recorded, per backend, and per UTC day (then per backend).

    Each totals object has ``charges`` (engine calls priced), ``tokens_in``, ``tokens_out``,
    ``chars``, ``audio_seconds``, ``engine_seconds`` and ``cost_usd``. ``speculative`` is the
    part of the total spent on speculative replies that were dropped before anyone heard them.
    """
    by_day: dict[str, Any] = {}
    for day, backends in ledger.by_day().items():
        total = Totals()
        for t in backends.values():
            total = total.plus(t)
        by_day[day] = {
            "total": _totals_json(total),
            "by_backend": {b: _totals_json(t) for b, t in backends.items()},
        }
    return {
        "object": "usage",
        "currency": "USD",
        "total": _totals_json(ledger.total()),
        "speculative": _totals_json(ledger.speculative()),
        "by_backend": {b: _totals_json(t) for b, t in ledger.by_backend().items()},
        "by_day": by_day,
    }
