"""``POST /v1/chat/completions`` through the official openai SDK, on the real SmolLM2-135M.

Greedy decoding (``temperature=0``) makes replies repeatable, so a streamed and a non-streamed
answer to the same question can be compared token for token. Engine failures mid-stream are
produced by the real hosted LLM engine talking to a scripted OpenAI peer (``tests.fakes``): the
local models do not fail on demand.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai.types.chat import ChatCompletionMessageParam

from models.llm_hosted import HostedLLM
from models.llm_transformers import THREAD_NAME as LLM_THREAD
from models.registry import Engines
from pipeline.settings import HostedSettings
from pipeline.stages import CallRecord
from server.app import create_app
from tests.fakes import OpenAIPeer, PeerPlan
from tests.server.conftest import (
    LiveServer,
    hang_up_once,
    http_client,
    live_threads,
    make_settings,
    openai_client,
    wait_for_calls,
    wait_threads_gone,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello to the world."}]


async def test_completion_has_content_usage_and_echoes_the_model(app: FastAPI) -> None:
    async with openai_client(app) as client:
        out = await client.chat.completions.create(
            model="any-name-at-all", messages=HELLO, max_tokens=24, temperature=0
        )
    assert out.object == "chat.completion"
    assert out.id.startswith("chatcmpl-")
    assert out.model == "any-name-at-all"
    [choice] = out.choices
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = out.usage
    assert usage is not None
    assert usage.prompt_tokens > 5  # the chat template and the question
    assert 1 <= usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_tiny_max_tokens_stops_for_length(app: FastAPI) -> None:
    async with openai_client(app) as client:
        out = await client.chat.completions.create(
            model="m", messages=HELLO, max_tokens=2, temperature=0
        )
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 2


async def test_max_completion_tokens_wins_over_max_tokens(app: FastAPI) -> None:
    async with openai_client(app) as client:
        out = await client.chat.completions.create(
            model="m", messages=HELLO, max_tokens=40, max_completion_tokens=3, temperature=0
        )
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 3


async def test_content_parts_and_developer_role_are_understood(app: FastAPI) -> None:
    parts: Any = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Say hello "}, {"type": "text", "text": "world."}],
        },
    ]
    async with openai_client(app) as client:
        out = await client.chat.completions.create(
            model="m", messages=parts, max_tokens=8, temperature=0
        )
    assert out.choices[0].message.content


async def test_stream_matches_the_completion_and_ends_with_usage(app: FastAPI) -> None:
    async with openai_client(app) as client:
        whole = await client.chat.completions.create(
            model="m", messages=HELLO, max_completion_tokens=20, temperature=0
        )
        stream = await client.chat.completions.create(
            model="m",
            messages=HELLO,
            max_completion_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.model for c in chunks} == {"m"} and len({c.id for c in chunks}) == 1
    content = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for piece in content if piece) >= 2  # deltas, not one blob
    assert "".join(content) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[:-1] == [None] * (len(finishes) - 1)
    assert finishes[-1] == whole.choices[0].finish_reason
    *body, last = chunks
    assert last.choices == [] and last.usage == whole.usage
    assert all(c.usage is None for c in body)


async def test_stream_wire_format_ends_with_done(app: FastAPI) -> None:
    request = {"model": "m", "messages": HELLO, "max_tokens": 6, "stream": True}
    async with http_client(app) as http:
        response = await http.post("/v1/chat/completions", json=request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" not in c for c in chunks)  # not asked for: no usage key, no usage chunk
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"][0]["delta"] == {}


async def test_stop_sequence_ends_the_reply_before_it(app: FastAPI) -> None:
    async with openai_client(app) as client:
        whole = await client.chat.completions.create(
            model="m", messages=HELLO, max_tokens=24, temperature=0
        )
        text = whole.choices[0].message.content or ""
        words = text.split()
        assert len(words) >= 3, text
        stop = words[2]
        cut = await client.chat.completions.create(
            model="m", messages=HELLO, max_tokens=24, temperature=0, stop=[stop, "zzzz"]
        )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]


BAD_REQUESTS: list[tuple[str, dict[str, Any], str | None]] = [
    ("no messages", {"messages": []}, "messages"),
    ("unknown role", {"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ("null content", {"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ("image part", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, None),
    ("max_tokens 0", {"max_tokens": 0}, "max_tokens"),
    ("max_completion_tokens 0", {"max_completion_tokens": 0}, "max_completion_tokens"),
    ("negative max_tokens", {"max_tokens": -5}, "max_tokens"),
    ("temperature 3", {"temperature": 3.0}, "temperature"),
    ("temperature text", {"temperature": "hot"}, "temperature"),
    ("top_p 0", {"top_p": 0}, "top_p"),
    ("top_p 1.5", {"top_p": 1.5}, "top_p"),
    ("n 2", {"n": 2}, "n"),
    ("five stops", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("stop number", {"stop": 7}, None),
    ("seed text", {"seed": "abc"}, "seed"),
    ("stream text", {"stream": "maybe"}, "stream"),
]


@pytest.mark.parametrize(
    ("case", "fields", "param"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_bad_input_is_a_400_before_any_engine_work(
    app: FastAPI,
    engine_calls: list[CallRecord],
    case: str,
    fields: dict[str, Any],
    param: str | None,
    stream: bool,
) -> None:
    request: dict[str, Any] = {"model": "m", "messages": HELLO, "max_tokens": 4, **fields}
    async with openai_client(app) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(**{"stream": stream, **request})
    assert caught.value.status_code == 400
    error = caught.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param
    assert engine_calls == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_conversation_longer_than_the_context_is_a_400(app: FastAPI, stream: bool) -> None:
    # Found by the engine (it needs the tokenizer), before it generates: still a plain 400 when
    # streaming, since a streamed answer sends its headers only with the first token.
    long: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello " * 3000}]
    async with openai_client(app) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="m", messages=long, max_tokens=4, stream=stream
            )
    assert caught.value.code == "context_length_exceeded"


async def test_malformed_json_is_a_400(app: FastAPI, engine_calls: list[CallRecord]) -> None:
    async with http_client(app) as http:
        response = await http.post(
            "/v1/chat/completions",
            content=b'{"model": "m", "messages": [',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert engine_calls == []


# -- engine failures, from the real hosted engine and a scripted peer -------------------------


@pytest.fixture(scope="module")
def peer() -> Iterator[OpenAIPeer]:
    running = OpenAIPeer().start()
    yield running
    running.stop()


@pytest.fixture
def hosted_app(peer: OpenAIPeer, engines: Engines) -> FastAPI:
    peer.reset()
    peer.reply = ["Hello", ",", " world", ",", " again", "."]
    llm = HostedLLM(HostedSettings(base_url=peer.base_url, max_retries=0))
    return create_app(make_settings(), engines=Engines(engines.stt, llm, engines.tts))


async def test_engine_error_mid_stream_is_an_error_event(
    hosted_app: FastAPI, peer: OpenAIPeer
) -> None:
    peer.plans.append(PeerPlan(error_after=3))  # role chunk, two content chunks, then an error
    async with openai_client(hosted_app) as client:
        stream = await client.chat.completions.create(model="m", messages=HELLO, stream=True)
        received: list[str] = []
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hello,"
    assert caught.value.body is not None
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "server_error"
    assert caught.value.body["code"].startswith("llm_")
    async with http_client(hosted_app) as http:  # and on the wire: an error event, no [DONE]
        peer.plans.append(PeerPlan(error_after=3))
        request = {"model": "m", "messages": HELLO, "stream": True}
        text = (await http.post("/v1/chat/completions", json=request)).text
    last = [e for e in text.split("\n\n") if e][-1]
    assert last.startswith("event: error\ndata: ")
    assert set(json.loads(last.split("data: ", 1)[1])["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    assert "[DONE]" not in text


async def test_engine_error_before_output_is_an_http_error(
    hosted_app: FastAPI, peer: OpenAIPeer
) -> None:
    peer.plans.append(PeerPlan(status=503))
    async with openai_client(hosted_app) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="m", messages=HELLO, stream=True)
    assert caught.value.status_code == 503
    assert caught.value.response.json()["error"]["type"] == "server_error"


# -- client disconnects -----------------------------------------------------------------------

COUNTING = {  # a long answer: 600 tokens would take half a minute here
    "model": "m",
    "messages": [{"role": "user", "content": "Count from one to three hundred in words."}],
    "max_tokens": 600,
    "temperature": 0,
}


async def test_client_disconnect_stops_the_llm(
    app: FastAPI, engine_calls: list[CallRecord]
) -> None:
    request = {**COUNTING, "stream": True}
    with LiveServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            async with http.stream("POST", "/v1/chat/completions", json=request) as response:
                assert response.status_code == 200
                contents = 0
                async for line in response.aiter_lines():
                    if '"content":"' in line and '"content":""' not in line:
                        contents += 1
                    if contents >= 3:
                        break
                assert live_threads(LLM_THREAD), "the LLM should still be generating"
            # leaving the block closes the response mid-stream: the client is gone
        assert await wait_threads_gone(LLM_THREAD) == []
        [llm_call] = await wait_for_calls(engine_calls, "llm")
    assert 3 <= llm_call.outputs < 100  # stopped long before its 600 tokens


async def test_client_gone_before_a_plain_completion_stops_the_llm(
    app: FastAPI, engine_calls: list[CallRecord]
) -> None:
    with LiveServer(app) as server:
        request = httpx.Request("POST", f"{server.url}/v1/chat/completions", json=COUNTING)
        await hang_up_once(server, request, thread_prefix=LLM_THREAD)
        assert await wait_threads_gone(LLM_THREAD) == []
        [llm_call] = await wait_for_calls(engine_calls, "llm")
    assert llm_call.outputs < 100  # of 600 tokens


async def test_completions_are_priced_in_the_ledger_and_counted(app: FastAPI) -> None:
    async with openai_client(app) as client:
        plain = await client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "Hi."}], max_tokens=4
        )
        stream = await client.chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": "Hi."}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        streamed = [c async for c in stream][-1].usage
    async with http_client(app) as http:
        billed = (await http.get("/v1/usage")).json()
        metrics = (await http.get("/metrics")).text
    assert plain.usage is not None and streamed is not None
    total = billed["total"]
    assert total["charges"] == 2
    assert total["tokens_out"] == plain.usage.completion_tokens + streamed.completion_tokens
    assert total["tokens_in"] == plain.usage.prompt_tokens + streamed.prompt_tokens
    assert total["cost_usd"] > 0
    assert 'voxline_llm_tokens_total{backend="' in metrics
