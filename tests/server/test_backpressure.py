"""A client that never reads costs the server a bounded amount of memory.

A real ``voxline serve`` process, and a real WebSocket client that asks for one long spoken
answer after another for 60 s and never reads a byte after the handshake (a raw socket with a
small receive buffer: a WebSocket library would keep reading frames into its own memory). One
answer (400 tokens, about two minutes of speech) is more than the kernel's socket buffers hold,
so the server's own queues fill. Every queue from the engines to the socket is bounded:
synthesis pauses, each stalled response is stopped after the stall timeout (the server logs
it), and the server's resident set, read from ``/proc``, grows by far less than 50 MB.

llama.cpp's KV cache is memory the kernel gives the server page by page as a conversation grows
toward the context window (measured: about 50 MB from an empty to a full 2048-token context of
SmolLM2-135M), a bounded cost per context, not a queue. The never-reading session's
conversation grows with every question, so the server runs with a 512-token context: that cost
(about 13 MB) cannot pass for, or hide, a queue's growth.

(Measured in process with a client that reads everything, the server grew by ~5 MB an answer
on its own, with its malloc arenas capped as ``voxline serve`` caps them: ``server.serving``.
Piper's ONNX session once grew by 70-85 MB at a new phrase length, in about one run in three
on a starved machine: ``models.tts_piper._piper_voice`` says why it no longer does.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import time

import pytest
from websockets.asyncio.client import connect

from tests.server.server_process import ServerProcess

pytestmark = pytest.mark.asyncio

NEVER_READ_S = 60.0
MAX_GROWTH = 50 * 1024 * 1024
CHATTY = "You are a chatty assistant. Answer in at least eight full sentences."
SESSION = {"instructions": CHATTY, "max_output_tokens": 400}
QUESTION = "Tell me about the history of Paris, in detail."


def ask(text: str) -> list[dict[str, object]]:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return [{"type": "conversation.item.create", "item": item}, {"type": "response.create"}]


def frame(event: dict[str, object]) -> bytes:
    """One masked WebSocket text frame (RFC 6455), as a client must send it."""
    payload = json.dumps(event).encode()
    mask = os.urandom(4)
    size = len(payload)
    head = bytes([0x81])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def never_reading_client(port: int) -> asyncio.StreamWriter:
    """A WebSocket connection whose client reads the handshake's answer and nothing more."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /v1/realtime?model=voxline HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return writer  # the reader is never read again: its buffer fills, then TCP's


async def test_a_client_that_never_reads_for_60_s_grows_the_server_by_less_than_50_mb() -> None:
    # the production engine choice (llama.cpp when installed), not the suite's transformers
    env = {
        "VOXLINE_LIMITS__CLIENT_STALL_TIMEOUT_S": "5",
        "VOXLINE_LLM__ENGINE": "auto",
        "VOXLINE_LLM__CONTEXT_TOKENS": "512",
    }
    with ServerProcess(env) as server:
        # one whole answer, read, so the server's one-off allocations are behind us
        async with connect(server.ws_url, max_size=None) as ws:
            for event in [{"type": "session.update", "session": SESSION}, *ask(QUESTION)]:
                await ws.send(json.dumps(event))
            while json.loads(await ws.recv())["type"] != "response.done":
                pass
        before = peak = server.rss_bytes()
        writer = await never_reading_client(server.port)
        writer.write(frame({"type": "session.update", "session": SESSION}))
        deadline = time.monotonic() + NEVER_READ_S
        while time.monotonic() < deadline:
            for event in ask(QUESTION):
                writer.write(frame(event))
            # a server that no longer reads (TCP full) holds the client's sends back; one that
            # closed the connection (its keepalive: pings unanswered) takes no more
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(writer.drain(), 0.5)
            await asyncio.sleep(0.5)
            peak = max(peak, server.rss_bytes())
        log = server.log()  # before this client goes: what the server did on its own
        writer.close()
        growth = peak - before
        # its responses were stopped when it stalled, not buffered; on a starved machine the
        # server's keepalive (pings unanswered) may close the session first, which lets go of
        # it too (the first session's close is the other "closed" line)
        stalled = "its client read none of it for 5 s" in log
        closed = re.findall(r"realtime session sess_\w+ closed", log)
        assert stalled or len(closed) >= 2, log[-3000:]
        print(f"server RSS growth over {NEVER_READ_S:g} s: {growth / 2**20:.1f} MiB")
        assert growth < MAX_GROWTH, f"RSS grew by {growth / 2**20:.1f} MiB"
