"""Liveness, readiness and the model list."""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from pipeline.breaker import BackendState
from pipeline.fallback_core import Chain
from server.state import AppState, state_of

router = APIRouter()
_CREATED = int(time.time())


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. Never waits on models."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: Annotated[AppState, Depends(state_of)]) -> JSONResponse:
    """Readiness: 200 once every stage has a started backend whose breaker is not open, else
    503. Either way the body shows each stage's chain, backend by backend. Draining (after
    SIGTERM): 503 at once, so load balancers stop sending work."""
    if state.admission.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    engines = state.engines
    if engines is None:
        reason = state.startup_error or "loading"
        return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)
    stages: dict[str, Any] = {}
    ready = True
    for stage, chain in (("stt", engines.stt), ("llm", engines.llm), ("tts", engines.tts)):
        states = chain.backend_states() if isinstance(chain, Chain) else ()
        backends = [_state_json(b) for b in states]
        # a bare engine (no chain) is usable once started
        usable = not backends or any(b["started"] and b["state"] != "open" for b in backends)
        ready = ready and usable
        stages[stage] = {"chain": chain.name, "usable": usable, "backends": backends}
    status = "ready" if ready else "degraded"
    body = {"status": status, "release": _releases(state), "stages": stages}
    return JSONResponse(body, status_code=200 if ready else 503)


def _releases(state: AppState) -> dict[str, Any]:
    releases = state.releases
    return {
        "active": releases.active_name,
        "canary": None if releases.canary is None else releases.canary.name,
    }


def _state_json(backend: BackendState) -> dict[str, Any]:
    body = dataclasses.asdict(backend)
    body["state"] = backend.state.value
    return body


@router.get("/v1/models")
async def list_models(state: Annotated[AppState, Depends(state_of)]) -> dict[str, Any]:
    """The models this server serves (those of the active release), in OpenAI's list shape,
    each with the ``release`` it belongs to; ``voxline`` says which releases serve (the
    active one and the canary)."""
    active = state.releases.active
    s = state.settings if active is None else active.settings
    release = None if active is None else active.name
    ids = [
        ("voxline", "voxline"),  # the whole voice pipeline (realtime, /v1/turns)
        (s.stt.model, "stt"),
        (s.llm.model, "llm"),
        (s.tts.model if s.tts.engine != "gpt_sovits" else "gpt-sovits", "tts"),
    ]
    data = [
        {
            "id": model_id,
            "object": "model",
            "created": _CREATED,
            "owned_by": f"voxline:{stage}",
            "release": release,
        }
        for model_id, stage in ids
    ]
    return {"object": "list", "data": data, "voxline": {"release": _releases(state)}}
