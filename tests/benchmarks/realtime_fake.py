"""A scripted realtime WebSocket server, for the benchmark client until the real route exists.

It speaks the OpenAI Realtime events the client relies on, with an energy "VAD" (a frame is
voiced when its peak passes -30 dBFS) and a scripted reply: after ``silence_ms`` of silence it
waits ``reply_delay_s`` and sends ``chunks`` audio deltas of ``chunk_s`` seconds, ``gap_s``
apart. So the voice-to-voice a client should measure is known: about silence + delay.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response


@dataclass(frozen=True)
class FakePlan:
    """How the fake server answers each turn."""

    silence_ms: int = 200
    reply_delay_s: float = 0.1
    chunks: int = 3
    chunk_s: float = 0.2
    gap_s: float = 0.0
    rate: int = 24_000
    refuse: bool = False  # close every connection at once (a server that is down)
    max_sessions: int | None = None  # more at once are refused at the handshake (503)
    api_key: str | None = None  # a handshake without ``Authorization: Bearer <it>`` gets 401


async def _respond(ws: ServerConnection, plan: FakePlan, turn: int) -> None:
    await ws.send(json.dumps({"type": "input_audio_buffer.speech_stopped"}))
    await ws.send(json.dumps({"type": "input_audio_buffer.committed"}))
    await ws.send(
        json.dumps(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "transcript": f"turn {turn}",
            }
        )
    )
    await ws.send(json.dumps({"type": "response.created"}))
    await asyncio.sleep(plan.reply_delay_s)
    pcm = (np.sin(np.arange(int(plan.chunk_s * plan.rate)) / 5) * 8000).astype("<i2").tobytes()
    for i in range(plan.chunks):
        if i:
            await asyncio.sleep(plan.gap_s)
        await ws.send(
            json.dumps({"type": "response.output_audio_transcript.delta", "delta": f"w{i} "})
        )
        await ws.send(
            json.dumps(
                {"type": "response.output_audio.delta", "delta": base64.b64encode(pcm).decode()}
            )
        )
    await ws.send(json.dumps({"type": "response.output_audio.done"}))
    timings = {
        "endpoint_ms": plan.silence_ms,
        "stt_ms": 10.0,
        "llm_ttft_ms": 20.0,
        "first_phrase_ms": 30.0,
        "tts_ttfb_ms": 40.0,
        "v2v_ms": plan.silence_ms + plan.reply_delay_s * 1000,
        "backends": {"stt": "fake", "llm": "fake", "tts": "fake"},
    }
    await ws.send(
        json.dumps(
            {
                "type": "response.done",
                "response": {"status": "completed", "usage": {}, "voxline": timings},
            }
        )
    )


async def _handler(ws: ServerConnection, plan: FakePlan) -> None:
    if plan.refuse:
        await ws.close()
        return
    await ws.send(json.dumps({"type": "session.created", "session": {"type": "realtime"}}))
    voiced, silent_ms, turns = False, 0.0, 0
    tasks: list[asyncio.Task[None]] = []
    async for message in ws:
        event: dict[str, Any] = json.loads(message)
        if event["type"] == "session.update":
            await ws.send(json.dumps({"type": "session.updated", "session": event["session"]}))
        elif event["type"] == "input_audio_buffer.append":
            samples = np.frombuffer(base64.b64decode(event["audio"]), dtype="<i2")
            frame_ms = len(samples) / plan.rate * 1000
            if samples.size and np.abs(samples).max() > 1000:
                if not voiced:
                    await ws.send(json.dumps({"type": "input_audio_buffer.speech_started"}))
                voiced, silent_ms = True, 0.0
            elif voiced:
                silent_ms += frame_ms
                if silent_ms >= plan.silence_ms:
                    voiced, turns = False, turns + 1
                    tasks.append(asyncio.create_task(_respond(ws, plan, turns)))
        else:
            await ws.send(json.dumps({"type": "error", "error": {"message": "unknown event"}}))
    for task in tasks:
        task.cancel()


@contextlib.asynccontextmanager
async def fake_realtime_server(plan: FakePlan) -> AsyncIterator[str]:
    """Serve on a free port in the running loop; yield its ``ws://`` base URL."""
    open_sessions: set[ServerConnection] = set()

    def admit(connection: ServerConnection, request: Request) -> Response | None:
        if plan.api_key and request.headers.get("Authorization") != f"Bearer {plan.api_key}":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid_api_key\n")
        if plan.max_sessions is None or len(open_sessions) < plan.max_sessions:
            open_sessions.add(connection)
            return None
        refusal = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")
        refusal.headers["Retry-After"] = "1"
        return refusal

    async def handle(ws: ServerConnection) -> None:
        try:
            await _handler(ws, plan)
        finally:
            open_sessions.discard(ws)

    async with serve(handle, "127.0.0.1", 0, process_request=admit) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


@contextlib.contextmanager
def fake_realtime_server_thread(plan: FakePlan) -> Iterator[str]:
    """The same server on its own loop in a thread (for code that calls ``asyncio.run``)."""
    loop = asyncio.new_event_loop()
    ready: list[str] = []
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with fake_realtime_server(plan) as url:
            ready.append(url)
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield ready[0]
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
