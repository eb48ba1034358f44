"""A server's releases on the real default models: following the store's pointer, engines shared
stage by stage, a release per session or turn, canaries judged and rolled back.

The app is built with the module's engines (the server's own settings' release); the tests move
the pointer in the app's own store and call ``poll()`` (what the follow loop does every
``poll_interval_s``), so nothing here waits on time. ``tests/cli/test_release_server.py`` runs
the same against a real server process and the real ``voxline release`` commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models.registry import Engines
from pipeline.settings import ReleaseSettings, StateSettings
from pipeline.settings_env import to_tree
from server.state import AppState
from store import Store
from store.release_types import IMPLICIT
from tests.server.conftest import AppFactory, http_client, make_settings, openai_client, spoken_wav

pytestmark = pytest.mark.asyncio(loop_scope="module")

TERSE = {"VOXLINE_LLM__SYSTEM_PROMPT": "You are terse.", "VOXLINE_LLM__MAX_TOKENS": "12"}
MANUAL = Path(__file__).parents[2] / "benchmarks" / "golden" / "kb" / "corpus" / "tarvo-aero5"


def _state(app: Any) -> AppState:
    state = app.state.voxline
    assert isinstance(state, AppState)
    return state


def _create(state: AppState, name: str, env: dict[str, str]) -> None:
    state.store.releases.create(name, env, to_tree(env))


async def test_a_prompt_only_release_shares_every_engine_and_serves_with_its_settings(
    app_factory: AppFactory, engines: Engines
) -> None:
    app = app_factory()
    state = _state(app)
    held = state.releases.pool.held()
    _create(state, "terse", TERSE)
    state.store.releases.promote("terse")
    await state.releases.poll()

    active = state.releases.active
    assert active is not None and active.name == "terse"
    assert (active.engines.stt, active.engines.llm, active.engines.tts) == (
        engines.stt,
        engines.llm,
        engines.tts,
    )  # the same objects: nothing was loaded
    await state.releases.settle()
    assert state.releases.pool.held() == held  # and the implicit release let go of them
    assert active.settings.llm.system_prompt == "You are terse."
    assert state.settings.llm.system_prompt != "You are terse."  # the server's own are kept

    async with http_client(app) as http:
        models = (await http.get("/v1/models")).json()
        ready = (await http.get("/readyz")).json()
        scraped = (await http.get("/metrics")).text
        turn = await http.post(
            "/v1/turns",
            files={"file": ("q.wav", spoken_wav("What is the capital of France?"), "audio/wav")},
        )
    assert {m["release"] for m in models["data"]} == {"terse"}
    assert models["voxline"]["release"] == {"active": "terse", "canary": None}
    assert ready["release"]["active"] == "terse"
    assert 'voxline_release_active{release="terse",role="active"} 1.0' in scraped
    assert turn.status_code == 200, turn.text
    body = turn.json()
    assert body["release"] == "terse" and body["usage"]["completion_tokens"] <= 12

    # the engine is shared, so the release's sampling defaults travel with each call
    async with openai_client(app) as client:
        story = await client.chat.completions.create(
            model="voxline",
            messages=[{"role": "user", "content": "Tell me a long story about a dragon."}],
        )
    assert story.usage is not None and story.usage.completion_tokens <= 12
    assert story.choices[0].finish_reason == "length"


async def test_a_session_keeps_its_release_whose_own_engines_close_when_it_ends(
    app_factory: AppFactory, engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _state(app_factory())
    _create(state, "slow", {"VOXLINE_TTS__SPEED": "0.8"})  # a TTS of its own, the rest shared
    state.store.releases.promote("slow")
    await state.releases.poll()
    slow = state.releases.lease()  # a session that started on it
    assert slow is not None and slow.name == "slow"
    assert slow.engines.tts is not engines.tts and slow.engines.llm is engines.llm
    closed: list[str] = []
    original = slow.engines.tts.aclose

    async def spy() -> None:
        closed.append("tts")
        await original()

    monkeypatch.setattr(slow.engines.tts, "aclose", spy)
    tts_keys = {slow.keys["tts"]}

    state.store.releases.rollback(reason="too slow")
    await state.releases.poll()
    assert state.releases.active is not None and state.releases.active.name == IMPLICIT
    fresh = state.releases.lease()
    assert fresh is not None and fresh.name == IMPLICIT  # new sessions: the rolled-back-to one
    # the session on "slow" still speaks with it
    chunks = [c async for c in slow.engines.tts.synthesize("Still here.", None)]
    assert chunks and closed == []
    assert tts_keys <= set(state.releases.pool.held())

    state.releases.unlease(slow)  # the session ends: its release's own TTS is closed
    await state.releases.settle()
    assert closed == ["tts"] and not tts_keys & set(state.releases.pool.held())
    state.releases.unlease(fresh)


async def test_a_release_carries_its_llm_tiers_router_and_retrieval_policy(
    app_factory: AppFactory, engines: Engines
) -> None:
    app = app_factory()
    state = _state(app)
    held = state.releases.pool.held()
    async with openai_client(app) as client:  # a store of the manual, with the server's model
        vs = await client.vector_stores.create(name="aero")
        f = await client.files.create(
            file=("manual.md", (MANUAL / "manual.md").read_bytes()), purpose="assistants"
        )
        done = await client.vector_stores.files.create_and_poll(
            vector_store_id=vs.id, file_id=f.id, poll_interval_ms=50
        )
        assert done.status == "completed"
    question = spoken_wav("How often should I replace the main filter?")
    tools = json.dumps([{"type": "file_search", "vector_store_ids": [vs.id]}])

    async def turn(**data: str) -> Any:
        async with http_client(app) as http:
            files = {"file": ("q.wav", question, "audio/wav")}
            return await http.post("/v1/turns", files=files, data=data, timeout=120)

    assert (await turn(tier="large")).status_code == 400  # the server's own: one tier
    before = await turn(tools=tools)
    assert before.status_code == 200, before.text
    assert not before.json()["knowledge"]["dont_know"]  # the manual answers it

    env = {
        # one more tier (its own thread count: a chain of its own), and a router sending
        # every question to it
        "VOXLINE_LLM__TIERS": json.dumps({"large": {"threads": 1}}),
        "VOXLINE_ROUTER__QUESTION_TIER": "large",
        # a retrieval policy under which nothing is relevant, and its own "don't know"
        "VOXLINE_KB__RELEVANCE_THRESHOLD": "1.99",
        "VOXLINE_KB__DONT_KNOW_REPLY": "Not in my files.",
    }
    _create(state, "tiered", env)
    state.store.releases.promote("tiered")
    await state.releases.poll()
    active = state.releases.active
    assert active is not None and active.name == "tiered" and active.engines.router is not None
    large = active.engines.router.tiers["large"]
    assert active.engines.llm is engines.llm and large is not engines.llm  # only the tier loaded
    assert set(active.keys) == {"stt", "llm", "tts", "llm.large"}

    pinned = await turn(tier="large")
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["llm_tier"] == "large" and pinned.json()["release"] == "tiered"
    grounded = (await turn(tools=tools)).json()
    assert grounded["knowledge"]["dont_know"] and not grounded["knowledge"]["llm_called"]
    assert grounded["reply"] == "Not in my files."

    large_key = active.keys["llm.large"]
    state.store.releases.rollback(reason="back")
    await state.releases.poll()
    await state.releases.settle()
    assert large_key not in state.releases.pool.held()  # the tier closed with its release
    assert state.releases.pool.held() == held


async def test_a_canary_gets_its_share_and_is_rolled_back_when_it_fails_more(
    app_factory: AppFactory,
) -> None:
    app = app_factory(make_settings(release=ReleaseSettings(canary_min_turns=3)))
    state = _state(app)
    _create(state, "cand", {"VOXLINE_LLM__SYSTEM_PROMPT": "Answer in French."})
    state.store.releases.start_canary("cand", 25)
    await state.releases.poll()
    assert state.releases.canary is not None and state.releases.canary.name == "cand"

    jobs = [state.releases.lease(canary=False) for _ in range(3)]  # a job runner's polls
    assert {job.name for job in jobs if job is not None} == {IMPLICIT}
    leases = [state.releases.lease() for _ in range(8)]
    names = [lease.name for lease in leases if lease is not None]
    assert names == [IMPLICIT, IMPLICIT, IMPLICIT, "cand"] * 2  # 25%, evenly spread
    leases += jobs
    for lease in leases:
        assert lease is not None
        state.releases.unlease(lease)

    for _ in range(3):
        state.releases.observe_turn(IMPLICIT, None, outcome="completed", fallback=False)
        state.releases.observe_turn("cand", None, outcome="cancelled", fallback=False)
    await state.releases.poll()
    assert state.releases.canary is not None  # cancelled turns are not judged: no sample yet
    for _ in range(3):
        state.releases.observe_turn("cand", None, outcome="failed", fallback=False)
    await state.releases.poll()

    assert state.releases.canary is None and state.store.releases.pointer().canary is None
    cand = state.store.releases.require("cand")
    assert cand.status == "rolled_back"
    assert cand.reason is not None and cand.reason.startswith(
        "canary rolled back automatically: error rate 1.00 vs 0.00"
    )
    async with http_client(app) as http:
        scraped = (await http.get("/metrics")).text
    assert 'voxline_turns_total{fallback="false",outcome="failed",release="cand"} 3.0' in scraped
    assert 'role="canary"' not in scraped


async def test_a_surviving_canary_is_promoted_and_serves_everyone(
    app_factory: AppFactory,
) -> None:
    state = _state(app_factory())
    _create(state, "next", {"VOXLINE_LLM__TEMPERATURE": "0.1"})
    state.store.releases.start_canary("next", 50)
    await state.releases.poll()
    state.store.releases.promote("next")
    await state.releases.poll()
    assert state.releases.canary is None
    leases = [state.releases.lease() for _ in range(4)]
    assert {lease.name for lease in leases if lease is not None} == {"next"}


async def test_a_release_that_cannot_start_leaves_the_server_on_its_release(
    app_factory: AppFactory,
) -> None:
    app = app_factory()
    state = _state(app)
    held = state.releases.pool.held()
    # its TTS starts (another speed), its STT cannot: the started TTS must not stay loaded
    env = {"VOXLINE_STT__MODEL": "packaged:whisper-nonexistent", "VOXLINE_TTS__SPEED": "1.2"}
    _create(state, "broken", env)
    state.store.releases.promote("broken")
    await state.releases.poll()
    await state.releases.settle()
    assert state.releases.active is not None and state.releases.active.name == IMPLICIT
    assert state.releases.error is not None and "whisper-nonexistent" in state.releases.error
    assert state.releases.pool.held() == held
    async with http_client(app) as http:
        assert (await http.get("/readyz")).status_code == 200
    # a rollback in the store is followed as usual
    state.store.releases.rollback(reason="cannot start")
    await state.releases.poll()
    assert state.releases.error is None and state.releases.active.name == IMPLICIT


async def test_replicas_on_one_postgres_follow_one_pointer(
    app_factory: AppFactory, postgres_url: str
) -> None:
    settings = make_settings(
        state=StateSettings(url=postgres_url), release=ReleaseSettings(canary_min_turns=1)
    )
    replicas = [_state(app_factory(settings)) for _ in range(2)]
    with Store.open(url=postgres_url) as admin:  # the `voxline release` commands' store
        admin.releases.create("terse", TERSE, to_tree(TERSE))
        admin.releases.start_canary("terse", 50)
        for replica in replicas:
            await replica.releases.poll()
        assert all(r.releases.canary is not None for r in replicas)

        # one replica sees the canary fail and rolls it back; the other follows the store
        first, second = replicas
        first.releases.observe_turn(IMPLICIT, None, outcome="completed", fallback=False)
        first.releases.observe_turn("terse", None, outcome="failed", fallback=False)
        await first.releases.poll()
        await second.releases.poll()
        assert first.releases.canary is None and second.releases.canary is None
        assert admin.releases.require("terse").status == "rolled_back"

        admin.releases.promote("terse")
        for replica in replicas:
            await replica.releases.poll()
        assert {r.releases.active_name for r in replicas} == {"terse"}
