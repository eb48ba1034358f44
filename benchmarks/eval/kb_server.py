"""The product's knowledge base for the ``rag`` suite, reached over HTTP and WebSocket
(``voxline eval --rag-backend benchmarks.eval.kb_server:build``).

Benchmarks never import the server: ``build`` starts ``voxline serve`` with the eval's settings
and a state store of its own (a temporary folder), uploads the corpus with the official
``openai`` SDK (``files.create``, ``vector_stores.create``,
``vector_stores.files.create_and_poll``), and each golden question is then a real voice turn:
its recording is streamed at real-time pace into a realtime session whose ``session.tools``
names the store (``RealtimeSession.play``), server VAD ends the turn, and the answer comes back
as audio with its transcript. What is scored is what a caller hears and gets:

- the reply's transcript and ``response.done``'s ``voxline.citations`` (file name, chunk text,
  score) and ``voxline.knowledge.dont_know``;
- ``v2v_ms``: voice to voice on the client's clock (last voiced frame sent -> first reply audio
  received), retrieval included;
- ``cost_usd``: what the server billed for the turn (``response.done``'s ``usage.cost_usd``).

``answer(question)`` (text) asks in a fresh realtime session with a text message, for callers
without audio.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
from pydantic import BaseModel, SecretStr

from benchmarks.configs import ConfigSpec
from benchmarks.eval.suites.rag import Citation, GroundedAnswer
from benchmarks.realtime_measure import RealtimeSession
from benchmarks.server_proc import local_server
from client.realtime import RealtimeClient
from pipeline.errors import EngineUnavailable
from pipeline.settings import Settings
from pipeline.types import AudioChunk

READ = (".md", ".txt", ".html", ".htm", ".pdf")
_TURN_TIMEOUT_S = 120.0


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {k: _plain(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def settings_environ(settings: Settings) -> dict[str, str]:
    """``VOXLINE_<SECTION>`` variables (one JSON object per section) that make a server process
    build exactly ``settings``."""
    out: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = _plain(getattr(settings, name))
        if value is None:
            continue
        out[f"VOXLINE_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return out


class ServerKnowledgeBase:
    """A voxline server with the corpus in one vector store (see the module docstring)."""

    def __init__(self, url: str, store_id: str, stack: contextlib.AsyncExitStack) -> None:
        self.url = url
        self.store_id = store_id
        self._stack = stack
        self.tools = [{"type": "file_search", "vector_store_ids": [store_id]}]

    async def answer_spoken(self, audio: AudioChunk, speech_end_s: float) -> GroundedAnswer:
        """A real voice turn: the recording streamed into a realtime session."""
        async with RealtimeSession(self.url, session={"tools": self.tools}) as session:
            m = await session.play(audio, speech_end_s, timeout_s=_TURN_TIMEOUT_S)
        if m.response is None:
            raise EngineUnavailable(
                f"no response.done for a spoken question: {m.errors}",
                stage="pipeline",
                backend="voxline-server",
            )
        return _answer(m.reply, m.response, m.v2v_ms)

    async def answer(self, question: str) -> GroundedAnswer:
        """A text question in a fresh realtime session (no audio in; audio still out)."""
        async with RealtimeClient(self.url) as rt:
            await rt.update_session(server_vad=False, tools=self.tools)
            await rt.send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": question}],
                    },
                }
            )
            await rt.send({"type": "response.create"})
            waited = 0.0
            while waited < _TURN_TIMEOUT_S:
                for received in await rt.receive_for(0.5):
                    if received.type == "response.done":
                        response = received.event.get("response") or {}
                        transcript = _transcript(response)
                        return _answer(transcript, response, None)
                waited += 0.5
        raise EngineUnavailable(
            "no response.done for a text question", stage="pipeline", backend="voxline-server"
        )

    async def aclose(self) -> None:
        """Stop the server (its temporary state goes with it)."""
        await self._stack.aclose()


def _transcript(response: dict[str, Any]) -> str:
    for item in response.get("output") or []:
        for part in item.get("content") or []:
            if part.get("transcript"):
                return str(part["transcript"])
    return ""


def _answer(text: str, response: dict[str, Any], v2v_ms: float | None) -> GroundedAnswer:
    voxline = response.get("voxline") or {}
    knowledge = voxline.get("knowledge") or {}
    citations = tuple(
        Citation(str(c["filename"]), str(c["text"]), float(c["score"]))
        for c in voxline.get("citations") or []
    )
    usage = response.get("usage") or {}
    cost = usage.get("cost_usd")
    dont_know = knowledge.get("dont_know")
    support = (knowledge.get("support") or {}).get("score")
    return GroundedAnswer(
        text,
        citations,
        # retrieval found nothing: the reply is the fixed "don't know" (else judged by text)
        dont_know=True if dont_know and not knowledge.get("llm_called") else None,
        v2v_ms=v2v_ms,
        cost_usd=float(cost) if cost is not None else None,
        support=float(support) if support is not None else None,
    )


@contextlib.asynccontextmanager
async def _server(settings: Settings, state_dir: Path, log: Path) -> AsyncIterator[str]:
    env = settings_environ(settings)
    state = {**json.loads(env["VOXLINE_STATE"]), "url": None, "data_dir": str(state_dir)}
    env["VOXLINE_STATE"] = json.dumps(state)
    env["VOXLINE_STATE__DATA_DIR"] = str(state_dir)
    env["VOXLINE_DEMO_ENABLED"] = "false"
    async with local_server(ConfigSpec("rag"), log, extra_env=env) as server:
        yield server.url


async def build(settings: Settings, corpus: Path) -> ServerKnowledgeBase:
    """Start a server, upload and index ``corpus`` (the ``KnowledgeBaseFactory`` of
    ``--rag-backend``).

    Raises:
        EngineUnavailable: the server did not start, or a file did not index.
    """
    stack = contextlib.AsyncExitStack()
    try:
        state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vx-rag-")))
        url = await stack.enter_async_context(
            _server(settings, state_dir, state_dir / "server.log")
        )
        # a few small files, read once before any turn: not worth a thread
        documents = sorted(p for p in corpus.rglob("*") if p.suffix.lower() in READ)  # noqa: ASYNC240
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="eval") as client:
            store = await client.vector_stores.create(name="golden-kb")
            for path in documents:
                name = path.relative_to(corpus).as_posix()
                data = path.read_bytes()
                f = await client.files.create(file=(name, data), purpose="assistants")
                done = await client.vector_stores.files.create_and_poll(
                    vector_store_id=store.id, file_id=f.id, poll_interval_ms=200
                )
                if done.status != "completed":
                    raise EngineUnavailable(
                        f"{name} was not indexed: {done.last_error}",
                        stage="pipeline",
                        backend="voxline-server",
                        retryable=False,
                    )
    except BaseException:
        await stack.aclose()
        raise
    return ServerKnowledgeBase(url, store.id, stack)
