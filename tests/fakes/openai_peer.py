"""``OpenAIPeer``: a real HTTP server speaking OpenAI's wire format, scripted per test.

It stands in for a paid hosted API (OpenAI, or any OpenAI-compatible endpoint) behind the hosted
adapters; everything on our side of the socket is the real code.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PeerPlan:
    """How :class:`OpenAIPeer` answers one request (plans are consumed in order, one each).

    Attributes:
        status: Answer this HTTP status with an OpenAI-shaped error body instead of a result.
        retry_after: ``Retry-After`` header sent with an error status.
        delay_s: Sleep before answering at all (a hang, when longer than the client's timeout).
        gap_s: Sleep between streamed pieces (SSE events or pcm pieces).
        drop_after: Break the connection after sending this many pieces (0: right after the
            headers), without finishing the chunked body.
        stream: STT only: answer SSE when the client asks for ``stream=true`` (False: behave
            like whisper-1, which ignores the flag and answers JSON).
        error_after: SSE only: after this many events, send an ``{"error": ...}`` event and end
            the stream, as llama.cpp and vLLM do when generation fails midway.
        tool_call: Chat only: answer with a call of this function, ``(name, arguments)``,
            streamed as OpenAI does (id and name first, then the arguments in pieces,
            ``finish_reason: "tool_calls"``) instead of the text reply.
    """

    status: int = 200
    retry_after: str | None = None
    delay_s: float = 0.0
    gap_s: float = 0.0
    drop_after: int | None = None
    stream: bool = True
    error_after: int | None = None
    tool_call: tuple[str, str] | None = None


@dataclass
class PeerRequest:
    """What :class:`OpenAIPeer` received in one request."""

    method: str
    path: str
    headers: dict[str, str]
    json: dict[str, Any] | None = None
    form: dict[str, str] = field(default_factory=dict)
    upload: bytes | None = None
    upload_content_type: str | None = None
    started: float = field(default_factory=time.perf_counter)
    finished: threading.Event = field(default_factory=threading.Event)
    """Set once the peer has sent the whole answer (streams: after the last piece)."""


class _Dropped(Exception):
    """Raised inside a streaming body so the server aborts the connection mid-response."""


class OpenAIPeer:
    """An OpenAI-compatible server (Starlette + uvicorn) on 127.0.0.1, scripted per test.

    It follows OpenAI's wire format: ``GET /v1/models``; ``POST /v1/chat/completions`` streamed as
    SSE ``data: {chat.completion.chunk}`` events, a usage chunk when
    ``stream_options.include_usage`` is set, then ``data: [DONE]``; ``POST
    /v1/audio/transcriptions`` as multipart in, JSON ``{"text"}`` out, or SSE
    ``transcript.text.delta`` / ``transcript.text.done`` events with ``stream=true``; ``POST
    /v1/audio/speech`` answering raw pcm with chunked transfer. Errors use OpenAI's shape
    ``{"error": {"message", "type", "param", "code"}}``; missing required fields are a 400.

    Script a test by appending :class:`PeerPlan` s to ``plans`` (one is consumed per request; an
    empty queue means a plain success) and by setting the content attributes. Every request is
    recorded in ``requests``. The server runs in a daemon thread with its own event loop.

    Attributes:
        models: Ids listed by ``GET /v1/models``.
        api_key: When set, requests without ``Authorization: Bearer <api_key>`` get a 401.
        transcript: The text every transcription returns (streamed word by word).
        reply: The chat reply, as the content deltas to stream.
        pcm: The raw pcm bytes every speech request returns.
        pcm_pieces: Sizes of the pieces pcm is sent in (the rest goes in one last piece).
    """

    def __init__(self) -> None:
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.reset()

    def reset(self) -> None:
        """Forget plans and recorded requests, and restore the default content."""
        self.models: list[str] = ["peer-model"]
        self.api_key: str | None = None
        self.transcript = "hello from the peer"
        self.reply: list[str] = ["Hello", ",", " world", "."]
        self.pcm = b"\x00\x01" * 2400
        self.pcm_pieces: list[int] = [1001, 3, 1000]
        self.plans: deque[PeerPlan] = deque()
        self.requests: list[PeerRequest] = []

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        assert self._socket is not None, "start() the peer first"
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}/v1"

    def start(self) -> OpenAIPeer:
        """Start serving on a free loopback port; returns once the server accepts requests."""
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Route

        app = Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/audio/transcriptions", self._transcriptions, methods=["POST"]),
                Route("/v1/audio/speech", self._speech, methods=["POST"]),
            ]
        )
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            app, log_level="critical", lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        sockets = [self._socket]
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": sockets}, daemon=True, name="openai-peer"
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the OpenAI peer did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop the server (a handler still hanging is cancelled after 1 s) and wait for it."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()

    # -- handlers --------------------------------------------------------------------------------

    async def _begin(self, request: Any, record: PeerRequest) -> tuple[PeerPlan, Any | None]:
        """Record the request, apply the plan's delay and status; returns an error response."""
        from starlette.responses import JSONResponse

        self.requests.append(record)
        plan = self.plans.popleft() if self.plans else PeerPlan()
        await asyncio.sleep(plan.delay_s)
        if self.api_key is not None:
            if request.headers.get("authorization") != f"Bearer {self.api_key}":
                record.finished.set()
                return plan, _error(401, "Incorrect API key provided.", None, "invalid_api_key")
        if plan.status != 200:
            record.finished.set()
            response: JSONResponse = _error(plan.status, f"scripted HTTP {plan.status}", None)
            if plan.retry_after is not None:
                response.headers["retry-after"] = plan.retry_after
            return plan, response
        return plan, None

    async def _models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        record = PeerRequest("GET", request.url.path, dict(request.headers))
        _, failure = await self._begin(request, record)
        if failure is not None:
            return failure
        record.finished.set()
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "tests"} for m in self.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _chat(self, request: Any) -> Any:
        body = await request.json()
        record = PeerRequest("POST", request.url.path, dict(request.headers), json=body)
        plan, failure = await self._begin(request, record)
        if failure is not None:
            return failure
        for name in ("model", "messages"):
            if name not in body:
                return _error(400, f"Missing required parameter: '{name}'.", name)
        if body.get("stream") is not True:
            return _error(400, "this peer only streams", "stream")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": "chatcmpl-peer", "object": "chat.completion.chunk", "created": 0}
        base["model"] = body["model"]

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [choice]}

        events: list[dict[str, Any] | str] = [chunk({"role": "assistant", "content": ""}, None)]
        if plan.tool_call is not None:
            name, arguments = plan.tool_call
            head = {"index": 0, "id": "call_peer1", "type": "function"}
            events.append(
                chunk({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]}, None)
            )
            third = max(1, len(arguments) // 3)
            for at in range(0, len(arguments), third):
                piece = {"index": 0, "function": {"arguments": arguments[at : at + third]}}
                events.append(chunk({"tool_calls": [piece]}, None))
            events.append(chunk({}, "tool_calls"))
        else:
            events += [chunk({"content": piece}, None) for piece in self.reply]
            events.append(chunk({}, "stop"))
        if include_usage:
            prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": len(self.reply),
                "total_tokens": prompt + len(self.reply),
            }
            events.append({**base, "choices": [], "usage": usage})
        events.append("[DONE]")
        return self._sse(events, plan, record)

    async def _transcriptions(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        form = await request.form()
        upload = form.get("file")
        fields = {k: str(v) for k, v in form.items() if k != "file"}
        record = PeerRequest("POST", request.url.path, dict(request.headers), form=fields)
        if upload is not None and hasattr(upload, "read"):
            record.upload = await upload.read()
            record.upload_content_type = upload.content_type
        plan, failure = await self._begin(request, record)
        if failure is not None:
            return failure
        if record.upload is None:
            return _error(400, "Missing required parameter: 'file'.", "file")
        if "model" not in fields:
            return _error(400, "Missing required parameter: 'model'.", "model")
        if fields.get("stream") == "true" and plan.stream:
            words = self.transcript.split(" ")
            events: list[dict[str, Any] | str] = [
                {"type": "transcript.text.delta", "delta": (" " if i else "") + word}
                for i, word in enumerate(words)
            ]
            events.append({"type": "transcript.text.done", "text": self.transcript})
            return self._sse(events, plan, record)
        record.finished.set()
        return JSONResponse({"text": self.transcript})

    async def _speech(self, request: Any) -> Any:
        from starlette.responses import StreamingResponse

        body = await request.json()
        record = PeerRequest("POST", request.url.path, dict(request.headers), json=body)
        plan, failure = await self._begin(request, record)
        if failure is not None:
            return failure
        for name in ("model", "input", "voice"):
            if name not in body:
                return _error(400, f"Missing required parameter: '{name}'.", name)
        if body.get("response_format") != "pcm":
            return _error(400, "this peer only speaks pcm", "response_format")
        pieces: list[bytes] = []
        offset = 0
        for size in self.pcm_pieces:
            pieces.append(self.pcm[offset : offset + size])
            offset += size
        pieces.append(self.pcm[offset:])
        return StreamingResponse(
            self._paced([p for p in pieces if p], plan, record), media_type="audio/pcm"
        )

    def _sse(self, events: list[dict[str, Any] | str], plan: PeerPlan, record: PeerRequest) -> Any:
        from starlette.responses import StreamingResponse

        if plan.error_after is not None:
            failure = {"message": "scripted failure", "type": "server_error", "code": 500}
            events = [*events[: plan.error_after], {"error": failure}]
        frames = [
            f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events
        ]
        return StreamingResponse(self._paced(frames, plan, record), media_type="text/event-stream")

    async def _paced(
        self, pieces: list[bytes], plan: PeerPlan, record: PeerRequest
    ) -> AsyncIterator[bytes]:
        for i, piece in enumerate(pieces):
            if plan.drop_after is not None and i >= plan.drop_after:
                raise _Dropped("scripted connection drop")
            if i:
                await asyncio.sleep(plan.gap_s)
            yield piece
        record.finished.set()


def _error(status: int, message: str, param: str | None, code: str | None = None) -> Any:
    from starlette.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_exceeded"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)
