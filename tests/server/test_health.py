"""Liveness, readiness (per-backend chain state) and the model list, without loading models:
the chains are made of the scripted fakes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from models.registry import Engines
from pipeline.fallback import FallbackLLM, FallbackPolicy, FallbackSTT, FallbackTTS
from pipeline.settings import Settings
from server.app import create_app
from tests.fakes import ScriptedLLM, ScriptedSTT, ScriptedTTS

POLICY = FallbackPolicy(failure_threshold=1, probe_interval_s=30.0, trial_interval_s=30.0)


def _engines() -> Engines:
    return Engines(
        FallbackSTT([ScriptedSTT(name="stt-a"), ScriptedSTT(name="stt-b")], POLICY),
        FallbackLLM([ScriptedLLM(name="llm-a")], POLICY),
        FallbackTTS([ScriptedTTS(name="tts-a")], POLICY),
    )


async def _get(app: object, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path)


async def test_healthz_answers_while_the_engines_are_still_loading() -> None:
    app = create_app(Settings(_env_file=None))  # type: ignore[call-arg]  # lifespan not run
    assert (await _get(app, "/healthz")).json() == {"status": "ok"}
    ready = await _get(app, "/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready"
    # a model route answers 503 in the OpenAI error shape meanwhile, with Retry-After
    models = await _get(app, "/v1/models")
    assert models.status_code == 200  # listing the configured models needs no engine
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert chat.status_code == 503
    assert chat.headers["retry-after"] == "1"
    assert set(chat.json()["error"]) == {"message", "type", "param", "code"}


async def test_readyz_lists_every_backend_of_every_chain() -> None:
    engines = _engines()
    await asyncio.gather(engines.stt.start(), engines.llm.start(), engines.tts.start())
    app = create_app(Settings(_env_file=None), engines=engines)  # type: ignore[call-arg]
    body = (await _get(app, "/readyz")).json()
    assert body["status"] == "ready"
    stt = body["stages"]["stt"]
    assert [b["name"] for b in stt["backends"]] == ["stt-a", "stt-b"]
    assert all(b["state"] == "closed" and b["started"] for b in stt["backends"])
    await engines.aclose()


async def test_readyz_is_503_when_a_stage_has_no_usable_backend() -> None:
    engines = Engines(
        FallbackSTT([ScriptedSTT(name="stt-a")], POLICY),
        FallbackLLM([ScriptedLLM(name="llm-a", fail_times=5)], POLICY),
        FallbackTTS([ScriptedTTS(name="tts-a")], POLICY),
    )
    await asyncio.gather(engines.stt.start(), engines.llm.start(), engines.tts.start())
    from pipeline.types import Message

    with pytest.raises(Exception):  # noqa: B017  # the one LLM backend fails: its breaker opens
        async for _ in engines.llm.stream([Message("user", "hi")]):
            pass
    app = create_app(Settings(_env_file=None), engines=engines)  # type: ignore[call-arg]
    ready = await _get(app, "/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "degraded"
    assert body["stages"]["llm"]["usable"] is False
    assert body["stages"]["llm"]["backends"][0]["state"] == "open"
    assert body["stages"]["llm"]["backends"][0]["last_error"]
    assert body["stages"]["stt"]["usable"] is True
    await engines.aclose()
