"""Graceful drain and connection bounds, against a real ``voxline serve`` process.

SIGTERM while a long speech stream and a realtime response are in flight: ``/readyz`` says 503
at once, new requests and sessions are refused with 503 and ``Retry-After``, the speech stream
completes (every byte its ``done`` event accounts for), the realtime response completes, its
socket then closes with 1001, and the process exits 0. A connection that never finishes its
request head is closed by the server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.server.server_process import ServerProcess

pytestmark = pytest.mark.asyncio

SPEECH = " ".join(
    f"This is sentence number {i} of a long answer that takes a while to speak." for i in range(25)
)
CHATTY = "You are a chatty assistant. Answer in at least eight full sentences."


def sse_events(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: ")]


async def test_sigterm_drains_in_flight_work_then_exits_0() -> None:
    env = {"VOXLINE_LIMITS__DRAIN_TIMEOUT_S": "120", "VOXLINE_LLM__MAX_TOKENS": "160"}
    with ServerProcess(env) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            # a realtime response in flight...
            ws = await connect(server.ws_url, max_size=None)
            events: list[dict[str, Any]] = []

            async def read() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for message in ws:
                        events.append(json.loads(message))

            reader = asyncio.create_task(read())
            update = {"type": "session.update", "session": {"instructions": CHATTY}}
            await ws.send(json.dumps(update))
            item = {"type": "message", "role": "user", "content": [{"type": "input_text"}]}
            item["content"][0]["text"] = "Tell me about the history of Paris."
            await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
            await ws.send(json.dumps({"type": "response.create"}))
            # ...an idle session...
            idle = await connect(server.ws_url, max_size=None)
            # ...and a long speech stream, SIGTERM once its first audio is here
            body = {
                "model": "tts-1",
                "input": SPEECH,
                "voice": "alloy",
                "response_format": "pcm",
                "stream_format": "sse",
            }
            lines: list[str] = []
            async with http.stream("POST", "/v1/audio/speech", json=body) as speech:
                assert speech.status_code == 200
                stream = speech.aiter_lines()
                while not any(e["type"] == "speech.audio.delta" for e in sse_events(lines)):
                    lines.append(await anext(stream))
                # the reader fills ``events`` (no event to wait on)
                while not any(e["type"] == "response.output_audio.delta" for e in events):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                server.terminate()
                # draining: not ready, and new work is refused with a time to come back
                for _ in range(1200):  # a hang guard, not a budget
                    if (await http.get("/readyz")).status_code == 503:
                        break
                    await asyncio.sleep(0.05)
                ready = await http.get("/readyz")
                assert (ready.status_code, ready.json()["status"]) == (503, "draining")
                refused = await http.post(
                    "/v1/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
                )
                assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
                assert refused.json()["error"]["code"] == "server_shutting_down"
                with pytest.raises(InvalidStatus) as denied:
                    await connect(server.ws_url)
                assert denied.value.response.status_code == 503
                assert denied.value.response.headers["Retry-After"] == "1"
                # the stream in flight runs to its end
                lines += [line async for line in stream]
            sse = sse_events(lines)
            assert sse[-1]["type"] == "speech.audio.done"
            pcm = b"".join(base64.b64decode(e["audio"]) for e in sse[:-1])
            seconds = sse[-1]["voxline"]["audio_seconds"]
            assert seconds > 20  # a long answer, most of it spoken after SIGTERM
            assert abs(len(pcm) - round(seconds * 24_000) * 2) <= 48  # every byte of it
            # the realtime response finished too, and only then did its socket close (1001)
            await asyncio.wait_for(reader, 120)
            done = next(e for e in events if e["type"] == "response.done")
            # ran to its end (its token limit, here), not cut off by the shutdown
            assert done["response"]["status"] in ("completed", "incomplete")
            assert done["response"]["output"][0]["content"][0]["transcript"]
            assert ws.close_code == 1001
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(idle.recv(), 60)
            assert idle.close_code == 1001
        assert server.wait() == 0, server.log()[-3000:]


async def test_a_connection_that_never_finishes_its_request_head_is_closed() -> None:
    with ServerProcess({"VOXLINE_LIMITS__HEADER_TIMEOUT_S": "1"}) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and no more
        await writer.drain()
        # the server hangs up; the guard only keeps a regression from hanging the suite
        assert await asyncio.wait_for(reader.read(), 60) == b""
        writer.close()
        # a client that sends its head in time is served, on the same kind of connection
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = sock.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 200")
        server.terminate()
        assert server.wait() == 0
