"""Origins and hosts at the edge: cross-site WebSocket hijacking and DNS rebinding refused,
allowed origins served with CORS, preflights answered; the secure default without keys."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from models.registry import Engines
from pipeline.settings import EdgeSettings
from server.app import create_app
from tests.server.conftest import LiveServer, http_client, make_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")


def app_with(engines: Engines, **edge: Any) -> FastAPI:
    return create_app(make_settings(edge=EdgeSettings(**edge)), engines=engines)


async def test_a_foreign_origin_is_refused_at_the_handshake(engines: Engines) -> None:
    with LiveServer(app_with(engines)) as server:
        url = server.url.replace("http://", "ws://") + "/v1/realtime"
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert info.value.response.status_code == 403
        error = json.loads(info.value.response.body or b"{}")["error"]
        assert error["code"] == "origin_not_allowed"
        # the server's own origin and loopback origins open a session
        for origin in (server.url, "http://localhost:5173"):
            async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
                assert json.loads(await ws.recv())["type"] == "session.created"


async def test_dns_rebinding_is_refused_by_the_host_check(engines: Engines) -> None:
    with LiveServer(app_with(engines)) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            evil = await client.get("/v1/usage", headers={"Host": "evil.example"})
            assert evil.status_code == 400
            assert evil.json()["error"]["code"] == "invalid_host"
            ours = await client.get("/v1/usage", headers={"Host": f"localhost:{server.port}"})
            assert ours.status_code == 200
        # a WebSocket handshake as the rebinding page's browser sends it
        assert await handshake_status(server.port, "evil.example") == 400
        assert await handshake_status(server.port, f"127.0.0.1:{server.port}") == 101
    with LiveServer(app_with(engines, allowed_hosts=["*.example.com"])) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            named = await client.get("/v1/models", headers={"Host": "voice.example.com"})
            assert named.status_code == 200


async def handshake_status(port: int, host: str) -> int:
    """The status line's code of a raw WebSocket handshake with ``Host: host``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"GET /v1/realtime HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    await writer.wait_closed()
    return status


async def test_cors_for_allowed_origins_and_preflights(engines: Engines) -> None:
    app = app_with(engines, allowed_origins=["https://app.example.com"])
    async with http_client(app) as client:
        pre = await client.options(
            "/v1/chat/completions",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert pre.headers["access-control-allow-headers"] == "authorization, content-type"
        answer = await client.get("/v1/models", headers={"Origin": "https://app.example.com"})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-ratelimit-remaining-requests" in answer.headers["access-control-expose-headers"]
        for origin in ("https://evil.example", "null"):
            foreign = await client.options(
                "/v1/chat/completions",
                headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
            )
            assert foreign.status_code == 403
            assert "access-control-allow-origin" not in foreign.headers
            post = await client.post("/v1/chat/completions", json={}, headers={"Origin": origin})
            assert post.json()["error"]["code"] == "origin_not_allowed"


async def test_without_keys_only_loopback_clients_are_served(engines: Engines) -> None:
    app = app_with(engines)
    remote = httpx.ASGITransport(app=app, client=("203.0.113.9", 4321))
    async with httpx.AsyncClient(transport=remote, base_url="http://test") as client:
        refused = await client.get("/v1/models")
        assert refused.status_code == 403
        error = refused.json()["error"]
        assert error["code"] == "remote_access_disabled"
        assert "VOXLINE_EDGE__ALLOW_REMOTE_WITHOUT_KEYS" in error["message"]
        assert (await client.get("/healthz")).status_code == 200  # probes stay open
    async with http_client(app) as client:  # loopback
        assert (await client.get("/v1/models")).status_code == 200
    opened = app_with(engines, allow_remote_without_keys=True)
    remote = httpx.ASGITransport(app=opened, client=("203.0.113.9", 4321))
    async with httpx.AsyncClient(transport=remote, base_url="http://test") as client:
        assert (await client.get("/v1/models")).status_code == 200


async def test_metrics_from_loopback_needs_the_setting(engines: Engines) -> None:
    for setting, status in ((False, 401), (True, 200)):
        app = app_with(engines, metrics_from_loopback=setting)
        app.state.voxline.store.keys.create("someone", ["chat"])  # auth is on
        async with http_client(app) as client:
            assert (await client.get("/metrics")).status_code == status
        remote = httpx.ASGITransport(app=app, client=("203.0.113.9", 4321))
        async with httpx.AsyncClient(transport=remote, base_url="http://test") as client:
            assert (await client.get("/metrics")).status_code == 401
