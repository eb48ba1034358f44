"""The demo behind the same keys and origins as the API: its page, its uploads and its
realtime sessions need a key once keys exist (a login form trades one for a same-site cookie),
and the demo's own sessions are the key's."""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr
import httpx
import pytest
from starlette.requests import Request

from models.registry import Engines
from server.app import create_app
from server.demo import _credential
from server.demo_client import RealtimeDemoClient, TabSessions
from server.edge.auth import DEMO_COOKIE
from store import NewKey, Store
from tests.server.conftest import LiveServer, make_settings, spoken_wav

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Demo:
    def __init__(self, server: LiveServer, store: Store) -> None:
        self.server, self.store = server, store
        self.voice: NewKey = store.keys.create("browser", ["realtime"])
        self.chat: NewKey = store.keys.create("chat only", ["chat"])


@pytest.fixture(scope="module")
def demo(engines: Engines) -> Iterator[Demo]:
    app = create_app(make_settings(demo_enabled=True), engines=engines)
    with LiveServer(app) as server:
        yield Demo(server, app.state.voxline.store)


def upload(client: httpx.AsyncClient, **kwargs: object) -> object:
    files = {"files": ("q.wav", spoken_wav("Hello."), "audio/wav")}
    return client.post("/demo/gradio_api/upload", files=files, **kwargs)  # type: ignore[arg-type]


async def test_the_demo_asks_for_a_key_and_refuses_anonymous_uploads(demo: Demo) -> None:
    async with httpx.AsyncClient(base_url=demo.server.url) as client:
        page = await client.get("/demo/", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"] == "/demo/login"
        refused = await upload(client)
        assert refused.status_code == 401  # type: ignore[attr-defined]
        assert refused.json()["error"]["code"] == "missing_api_key"  # type: ignore[attr-defined]
        form = await client.get("/demo/login")
        assert form.status_code == 200 and 'name="key"' in form.text


async def test_a_login_gives_a_same_site_cookie_that_opens_the_demo(demo: Demo) -> None:
    async with httpx.AsyncClient(base_url=demo.server.url) as client:
        for key in ("vx-wrong", demo.chat.secret):  # unknown, or without the realtime scope
            denied = await client.post("/demo/login", data={"key": key})
            assert denied.status_code == 401 and DEMO_COOKIE not in denied.cookies
        login = await client.post("/demo/login", data={"key": demo.voice.secret})
        assert login.status_code == 303 and login.headers["location"] == "/demo/"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/demo" in cookie
        assert demo.voice.secret not in cookie  # a client secret, never the key
        page = await client.get("/demo/", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "gradio" in page.text.lower()
        uploaded = await upload(client)
        assert uploaded.status_code == 200  # type: ignore[attr-defined]
        foreign = await upload(client, headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403  # type: ignore[attr-defined]
        # the cookie is the demo's only: the API wants a bearer key
        assert (await client.get("/v1/models")).status_code == 401


async def test_the_demo_talks_to_the_realtime_api_as_the_logged_in_key(demo: Demo) -> None:
    async with httpx.AsyncClient(base_url=demo.server.url) as client:
        login = await client.post("/demo/login", data={"key": demo.voice.secret})
        secret = login.cookies[DEMO_COOKIE]
    # what a Gradio handler sees of the browser's request: its cookie is the credential
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/demo/gradio_api/queue/join",
        "headers": [(b"cookie", f"{DEMO_COOKIE}={secret}".encode())],
    }
    assert _credential(gr.Request(request=Request(scope)), None) == secret
    assert _credential(gr.Request(request=Request({**scope, "headers": []})), "vx-x") == "vx-x"
    async with RealtimeDemoClient(demo.server.url, api_key=secret) as session:
        assert session.rt.created is not None
    with pytest.raises(Exception, match="401"):
        async with RealtimeDemoClient(demo.server.url):
            pass


async def test_a_tab_key_reaches_only_the_session_opened_with_the_same_credential(
    demo: Demo,
) -> None:
    """Gradio's session hash is the browser's to choose: one naming another tab's hash with
    another key gets a session of its own, not the tab's (nor bills the tab's key)."""
    other = demo.store.keys.create("another browser", ["realtime"])
    tabs = TabSessions()
    try:
        async with tabs.lock("tab-1"):
            mine = await tabs.client(
                "tab-1", demo.server.url, None, None, api_key=demo.voice.secret
            )
            again = await tabs.client(
                "tab-1", demo.server.url, None, None, api_key=demo.voice.secret
            )
            theirs = await tabs.client("tab-1", demo.server.url, None, None, api_key=other.secret)
        assert again is mine and theirs is not mine
        assert mine.rt.created is not None and theirs.rt.created is not None
        assert mine.rt.created["session"]["id"] != theirs.rt.created["session"]["id"]
    finally:
        await tabs.close("tab-1")
    assert mine.closed and theirs.closed
