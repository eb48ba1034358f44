"""API keys and client secrets at the edge: every route and the realtime WebSocket, refused
without a key, with a wrong, revoked or under-scoped one, in OpenAI's error shape; served with
the right one, through the official ``openai`` SDK (HTTP and realtime)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from models.registry import Engines
from pipeline.stages import CallRecord
from server import identity
from server.app import create_app
from server.edge.policy import JOB_KIND_ROUTES, rule_for
from server.jobs.records import KINDS
from store import KeyLimits, NewKey, Store
from tests.server.conftest import LiveServer, http_client, make_settings, spoken_wav

pytestmark = pytest.mark.asyncio(loop_scope="module")

SPEECH = {"model": "tts-1", "voice": "alloy", "input": "Hello there."}
CHAT = {"model": "x", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 2}

# (method, path, scope it needs, request keywords): every HTTP route of the API
ROUTES: list[tuple[str, str, str | None, dict[str, Any]]] = [
    ("GET", "/v1/models", None, {}),
    ("GET", "/v1/audio/voices", None, {}),
    ("POST", "/v1/chat/completions", "chat", {"json": CHAT}),
    ("POST", "/v1/audio/speech", "audio", {"json": SPEECH}),
    (
        "POST",
        "/v1/audio/transcriptions",
        "audio",
        {"files": {"file": ("q.wav", spoken_wav("Hello."), "audio/wav")}, "data": {"model": "w"}},
    ),
    (
        "POST",
        "/v1/turns",
        "audio",
        {"files": {"file": ("q.wav", spoken_wav("Hello."), "audio/wav")}},
    ),
    (
        "POST",
        "/v1/audio/voices",
        "audio",
        {
            "files": {"file": ("ref.wav", spoken_wav("Hello there, this is me."), "audio/wav")},
            "data": {"transcript": "Hello there, this is me.", "language": "en"},
        },
    ),
    ("GET", "/v1/audio/voices/voice_0123456789abcdef01234567", "audio", {}),
    ("DELETE", "/v1/audio/voices/voice_0123456789abcdef01234567", "audio", {}),
    ("POST", "/v1/realtime/client_secrets", "realtime", {"json": {}}),
    ("POST", "/v1/jobs", "audio", {"data": {"kind": "speech", "input": "Hello."}}),
    ("GET", "/v1/jobs", None, {}),
    ("GET", "/v1/usage", "admin", {}),
    ("GET", "/metrics", "admin", {}),
]
OTHER_SCOPE = {"chat": "audio", "audio": "chat", "realtime": "chat", "admin": "chat"}


class Keys:
    """An app with keys in its store: one per scope, one with every scope, one revoked."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.store: Store = app.state.voxline.store
        self.all = self.store.keys.create("all", ["realtime", "audio", "chat", "admin"])
        self.by_scope = {s: self.store.keys.create(s, [s]) for s in OTHER_SCOPE}
        self.revoked = self.store.keys.create("revoked", ["realtime", "audio", "chat", "admin"])
        self.store.keys.revoke(self.revoked.key.id)


@pytest.fixture
def keys(engines: Engines) -> Keys:
    return Keys(create_app(make_settings(), engines=engines))


def bearer(key: NewKey | str) -> dict[str, str]:
    secret = key if isinstance(key, str) else key.secret
    return {"Authorization": f"Bearer {secret}"}


def assert_openai_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]


async def test_every_route_refuses_a_missing_wrong_revoked_or_underscoped_key(
    keys: Keys, engine_calls: list[CallRecord]
) -> None:
    async with http_client(keys.app) as client:
        for method, path, scope, request in ROUTES:
            answer = await client.request(method, path, **request)
            assert_openai_error(answer, 401, "missing_api_key")
            assert answer.headers["www-authenticate"] == "Bearer"
            answer = await client.request(method, path, headers=bearer("vx-wrong"), **request)
            assert_openai_error(answer, 401, "invalid_api_key")
            answer = await client.request(method, path, headers=bearer(keys.revoked), **request)
            assert_openai_error(answer, 401, "invalid_api_key")
            if scope is not None:
                other = keys.by_scope[OTHER_SCOPE[scope]]
                answer = await client.request(method, path, headers=bearer(other), **request)
                assert_openai_error(answer, 403, "insufficient_scope")
                assert scope in answer.json()["error"]["message"]
    assert engine_calls == []  # nothing refused reached an engine


def job_forms() -> dict[str, dict[str, Any]]:
    """A valid submission of each kind of job."""
    clip = spoken_wav("Hello.")
    return {
        "transcription": {
            "data": {"kind": "transcription"},
            "files": {"file": ("q.wav", clip, "audio/wav")},
        },
        "speech": {"data": {"kind": "speech", "input": "Hello."}},
        "turns": {
            "data": {"kind": "turns"},
            "files": {"file": ("t.jsonl", b'{"text": "Hi."}\n', "application/jsonl")},
        },
    }


async def test_submitting_a_job_needs_what_the_route_of_its_kind_needs() -> None:
    job = rule_for("/v1/jobs", "POST")
    assert set(JOB_KIND_ROUTES) == set(KINDS)
    for kind, route in JOB_KIND_ROUTES.items():
        needs = rule_for(route, "POST")
        assert (job.scope, job.spends) == (needs.scope, needs.spends), kind
    owners = [("GET", "/v1/jobs"), ("GET", "/v1/jobs/job_1"), ("POST", "/v1/jobs/job_1/cancel")]
    for method, path in owners:
        assert rule_for(path, method).scope is None  # a job's owner reads and cancels it


async def test_a_chat_key_submits_no_job_and_reads_only_its_own(
    keys: Keys, engine_calls: list[CallRecord]
) -> None:
    chat, audio = bearer(keys.by_scope["chat"]), bearer(keys.by_scope["audio"])
    forms = job_forms()
    async with http_client(keys.app) as client:
        for kind, form in forms.items():
            refused = await client.post("/v1/jobs", headers=chat, **form)
            assert_openai_error(refused, 403, "insufficient_scope")
            assert "'audio'" in refused.json()["error"]["message"], kind
        assert keys.store.documents("job").list() == []  # nothing was queued
        accepted = await client.post("/v1/jobs", headers=audio, **forms["speech"])
        assert accepted.status_code == 200, accepted.text
        job_id = accepted.json()["id"]
        assert (await client.get(f"/v1/jobs/{job_id}", headers=audio)).status_code == 200
        # another key may list its own jobs (none) but not see, read or cancel this one
        listed = await client.get("/v1/jobs", headers=chat)
        assert listed.status_code == 200 and listed.json()["data"] == []
        assert (await client.get(f"/v1/jobs/{job_id}", headers=chat)).status_code == 404
        cancel = await client.post(f"/v1/jobs/{job_id}/cancel", headers=chat)
        assert cancel.status_code == 404
        cancelled = await client.post(f"/v1/jobs/{job_id}/cancel", headers=audio)
        assert cancelled.json()["status"] == "cancelled"
    assert engine_calls == []  # no worker runs here: nothing reached an engine


async def test_the_right_key_is_served_and_probes_stay_open(keys: Keys) -> None:
    async with http_client(keys.app) as client:
        for path in ("/healthz", "/readyz"):
            assert (await client.get(path)).status_code == 200
        assert (await client.get("/v1/models", headers=bearer(keys.by_scope["chat"]))).is_success
        usage = await client.get("/v1/usage", headers=bearer(keys.by_scope["admin"]))
        assert usage.status_code == 200 and usage.json()["object"] == "usage"
        metrics = await client.get("/metrics", headers=bearer(keys.all))
        assert metrics.status_code == 200 and 'voxline_key_requests_total{key="' in metrics.text


async def test_the_openai_sdk_sends_its_key(keys: Keys) -> None:
    def sdk(key: str) -> openai.AsyncOpenAI:
        transport: Any = http_client(keys.app)
        return openai.AsyncOpenAI(
            base_url="http://test/v1", api_key=key, max_retries=0, http_client=transport
        )

    async with sdk(keys.by_scope["chat"].secret) as client:
        answer = await client.chat.completions.create(**CHAT)
        assert answer.choices[0].message.content is not None
        with pytest.raises(openai.PermissionDeniedError):
            await client.audio.speech.create(**SPEECH)
    async with sdk("vx-not-a-key") as client:
        with pytest.raises(openai.AuthenticationError) as info:
            await client.models.list()
        assert info.value.code == "invalid_api_key"


async def test_charges_and_usage_carry_the_key(keys: Keys) -> None:
    chat = keys.by_scope["chat"]
    async with http_client(keys.app) as client:
        answer = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(chat))
        assert answer.status_code == 200
        usage = (await client.get("/v1/usage", headers=bearer(keys.all))).json()
    tokens = answer.json()["usage"]["total_tokens"]
    [entry] = [e for e in usage["by_key"] if e["key_id"] == chat.key.id]
    assert entry["name"] == "chat"
    assert entry["total"]["tokens_in"] + entry["total"]["tokens_out"] == tokens
    assert entry["today"]["tokens"] == tokens and entry["today"]["requests"] == 1
    assert keys.store.usage.day(chat.key.id).tokens == tokens  # what its quotas read


async def test_the_identity_is_bound_for_the_route(keys: Keys) -> None:
    seen: list[identity.Identity | None] = []

    @keys.app.get("/v1/whoami")
    async def whoami() -> dict[str, str]:
        seen.append(identity.current())
        return {}

    async with http_client(keys.app) as client:
        await client.get("/v1/whoami", headers=bearer(keys.by_scope["audio"]))
    [who] = seen
    assert who is not None and who.key_id == keys.by_scope["audio"].key.id
    assert who.scopes == ("audio",) and who.via == "api_key"
    assert identity.current() is None  # only inside the request


# --------------------------------------------------------------------------- the WebSocket


@pytest.fixture
def live(keys: Keys) -> Iterator[tuple[Keys, str]]:
    with LiveServer(keys.app) as server:
        yield keys, server.url.replace("http://", "ws://") + "/v1/realtime?model=voxline"


async def refused(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kwargs):
            pass
    response = info.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def test_the_websocket_refuses_at_the_handshake(live: tuple[Keys, str]) -> None:
    keys, url = live
    status, body = await refused(url)
    assert (status, body["error"]["code"]) == (401, "missing_api_key")
    status, body = await refused(url, additional_headers=bearer("vx-nope"))
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    status, body = await refused(url, additional_headers=bearer(keys.revoked))
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    status, body = await refused(url, additional_headers=bearer(keys.by_scope["chat"]))
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")


async def test_the_openai_sdk_opens_a_realtime_session_with_its_key(
    live: tuple[Keys, str],
) -> None:
    keys, url = live
    base = url.replace("ws://", "http://").split("/v1/")[0] + "/v1"
    client = openai.AsyncOpenAI(
        api_key=keys.by_scope["realtime"].secret, base_url=base, max_retries=0
    )
    async with client.realtime.connect(model="gpt-realtime") as conn:
        event = await conn.recv()
        assert event.type == "session.created"
    wrong = openai.AsyncOpenAI(api_key="vx-nope", base_url=base, max_retries=0)
    with pytest.raises(InvalidStatus):
        async with wrong.realtime.connect(model="gpt-realtime") as conn:
            await conn.recv()


async def test_a_client_secret_opens_a_session_from_a_browser_until_it_expires(
    live: tuple[Keys, str],
) -> None:
    keys, url = live
    base = url.replace("ws://", "http://").split("/v1/")[0] + "/v1"
    key = keys.by_scope["realtime"]
    async with openai.AsyncOpenAI(api_key=key.secret, base_url=base, max_retries=0) as client:
        minted = await client.realtime.client_secrets.create(
            expires_after={"anchor": "created_at", "seconds": 60},
            session={"type": "realtime", "instructions": "Be brief.", "model": "gpt-realtime"},
        )
    assert minted.value.startswith("ek_") and minted.session.type == "realtime"
    assert minted.session.instructions == "Be brief."
    # a browser: no headers, the secret as a subprotocol next to "realtime"
    protocols: Any = ["realtime", f"openai-insecure-api-key.{minted.value}"]
    async with connect(url, subprotocols=protocols) as ws:
        assert ws.subprotocol == "realtime"  # never the secret
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"
        assert created["session"]["instructions"] == "Be brief."  # the minted session
    # a secret cannot mint secrets, nor use routes beyond its scope
    async with httpx.AsyncClient(base_url=base, headers=bearer(minted.value)) as http:
        again = await http.post("/realtime/client_secrets", json={})
        assert_openai_error(again, 403, "insufficient_scope")
        assert_openai_error(await http.post("/chat/completions", json=CHAT), 403,
                            "insufficient_scope")  # fmt: skip
        # nor the key's own resources that "any key" may read: it is in a browser's hands
        for path in ("/files", "/vector_stores", "/jobs", "/models"):
            assert_openai_error(await http.get(path), 403, "insufficient_scope")
        # but it may read the voice choices (the demo's voice box, set up by the browser)
        assert (await http.get("/audio/voices")).status_code == 200
    # expiry, on the store's clock
    state = keys.app.state.voxline
    later = Store.open(state.settings.state, clock=lambda: minted.expires_at + 1.0)
    state.store, before = later, state.store
    try:
        status, body = await refused(url, subprotocols=protocols)
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    finally:
        state.store = before
        later.close()
    # revoking the key revokes its secrets
    keys.store.keys.revoke(key.key.id)
    status, _ = await refused(url, subprotocols=protocols)
    assert status == 401


async def test_a_client_secret_refuses_a_session_this_server_cannot_serve(keys: Keys) -> None:
    async with http_client(keys.app) as client:
        answer = await client.post(
            "/v1/realtime/client_secrets",
            json={"session": {"type": "realtime", "audio": {"output": {"speed": 99}}}},
            headers=bearer(keys.all),
        )
        assert answer.status_code == 400 and answer.json()["error"]["param"]
        answer = await client.post(
            "/v1/realtime/client_secrets",
            json={"expires_after": {"seconds": 5}},
            headers=bearer(keys.all),
        )
        assert answer.status_code == 400
    assert keys.store.client_secrets.purge_expired() == 0  # and nothing was stored


async def test_limits_of_a_key_survive_as_the_identity() -> None:
    from store.keys import ApiKey

    key = ApiKey("key_1", "n", "vx-abc", ("chat",), KeyLimits(rpm=3), 0.0)
    who = identity.Identity.of_key(key)
    assert who.limits.rpm == 3 and who.allows("chat") and not who.allows("admin")
    assert who.allows(None)
