"""Function tools in ``/v1/chat/completions`` through the official openai SDK.

The local calls are made by the real SmolLM2-135M on llama.cpp, whose arguments are generated
under a grammar built from the tool's schema: the test checks the JSON against the schema, not
against a fixed string. Pass-through, repair and the error after a failed repair use the real
hosted engine talking to a scripted OpenAI peer (``tests.fakes``): a paid model cannot run here,
and the local one cannot produce an invalid call on demand.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jsonschema
import pytest
import pytest_asyncio
from fastapi import FastAPI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from models.llm_hosted import HostedLLM
from models.registry import Engines, start_engines
from pipeline.settings import HostedSettings, LLMSettings
from server.app import create_app
from tests.fakes import OpenAIPeer, PeerPlan
from tests.server.conftest import http_client, make_settings, openai_client

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.llama]
pytest.importorskip("llama_cpp")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines() -> AsyncIterator[Engines]:
    """The default engines with the LLM on llama.cpp (the engine that constrains calls)."""
    started = await start_engines(make_settings(llm=LLMSettings(engine="llamacpp")))
    try:
        yield started
    finally:
        await started.aclose()


WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": WEATHER_SCHEMA,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time now in a time zone.",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string"}},
                "required": ["zone"],
            },
        },
    },
]
ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather like in Paris right now?"}
]


async def test_forced_call_is_valid_json_of_the_schema(app: FastAPI) -> None:
    async with openai_client(app) as client:
        out = await client.chat.completions.create(
            model="m",
            messages=ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            temperature=0,
        )
    [choice] = out.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)
    assert out.usage is not None and out.usage.completion_tokens > 3


async def test_required_call_streams_its_name_then_checked_arguments(app: FastAPI) -> None:
    async with openai_client(app) as client:
        stream = await client.chat.completions.create(
            model="m", messages=ASK, tools=TOOLS, tool_choice="required", stream=True
        )
        chunks = [c async for c in stream]
    pieces = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    first = pieces[0]
    assert first.index == 0 and first.id and first.id.startswith("call_")
    assert first.function is not None and first.function.name in ("get_weather", "get_time")
    arguments = "".join((p.function.arguments or "") for p in pieces if p.function)
    schema = next(t for t in TOOLS if t["function"]["name"] == first.function.name)
    jsonschema.validate(json.loads(arguments), schema["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_tool_results_in_the_conversation_get_a_text_answer(app: FastAPI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees."},
    ]
    async with openai_client(app) as client:
        out = await client.chat.completions.create(
            model="m", messages=messages, tools=TOOLS, tool_choice="none", max_tokens=24
        )
    [choice] = out.choices
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.tool_calls is None
    assert choice.message.content and choice.message.content.strip()


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": {"type": "function"}}, "tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools[0].function.name",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
            "tools[0].function.parameters",
        ),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools"),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "tool", "tool_call_id": "x", "content": "1"},
                ]
            },
            "messages[1].tool_call_id",
        ),
    ],
    ids=[
        "not-a-list",
        "bad-name",
        "bad-schema",
        "unknown-choice",
        "not-a-function",
        "orphan-result",
    ],
)
async def test_bad_tools_are_a_400_naming_the_field(
    app: FastAPI, change: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"model": "m", "messages": ASK, "tools": TOOLS, **change}
    async with http_client(app) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


# -- a hosted backend ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def peer() -> Iterator[OpenAIPeer]:
    running = OpenAIPeer().start()
    yield running
    running.stop()


@pytest.fixture
def hosted_app(peer: OpenAIPeer, engines: Engines) -> FastAPI:
    peer.reset()
    llm = HostedLLM(HostedSettings(base_url=peer.base_url, max_retries=0))
    return create_app(make_settings(), engines=Engines(engines.stt, llm, engines.tts))


VALID = '{"city": "Paris", "unit": "celsius"}'


async def test_hosted_backend_gets_the_tools_and_the_conversation(
    hosted_app: FastAPI, peer: OpenAIPeer
) -> None:
    peer.plans.append(PeerPlan(tool_call=("get_weather", VALID)))
    async with openai_client(hosted_app) as client:
        out = await client.chat.completions.create(
            model="m", messages=ASK, tools=TOOLS, tool_choice="required"
        )
    [call] = out.choices[0].message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        json.loads(VALID),
    )
    [sent] = [r.json for r in peer.requests if r.path.endswith("/chat/completions")]
    assert sent is not None
    assert sent["tool_choice"] == "required"
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tools"][0]["function"]["parameters"] == WEATHER_SCHEMA


async def test_invalid_call_is_repaired_once_with_the_error(
    hosted_app: FastAPI, peer: OpenAIPeer
) -> None:
    peer.plans += [
        PeerPlan(tool_call=("get_weather", '{"city": "Paris", "unit": "kelvin"}')),
        PeerPlan(tool_call=("get_weather", VALID)),
    ]
    async with openai_client(hosted_app) as client:
        stream = await client.chat.completions.create(
            model="m", messages=ASK, tools=TOOLS, stream=True
        )
        chunks = [c async for c in stream]
    pieces = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    arguments = "".join((p.function.arguments or "") for p in pieces if p.function)
    assert json.loads(arguments) == json.loads(VALID)  # the bad attempt was never sent
    first, second = [r.json for r in peer.requests if r.path.endswith("/chat/completions")]
    assert first is not None and second is not None
    repair = second["messages"][-1]
    assert repair["role"] == "tool" and "kelvin" in repair["content"]
    assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert second["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


async def test_call_still_invalid_after_its_repair_is_a_502(
    hosted_app: FastAPI, peer: OpenAIPeer
) -> None:
    bad = PeerPlan(tool_call=("get_weather", '{"city": "Paris"}'))
    peer.plans += [bad, bad]
    async with http_client(hosted_app) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "m", "messages": ASK, "tools": TOOLS}
        )
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "llm_InvalidToolCall"
    assert "unit" in error["message"]


async def test_required_call_on_a_model_without_tools_is_a_400(
    app_factory: Any, engines: Engines
) -> None:
    from tests.fakes import ScriptedLLM

    app = create_app(
        make_settings(), engines=Engines(engines.stt, ScriptedLLM(reply=("Hi",)), engines.tts)
    )
    async with http_client(app) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": ASK, "tools": TOOLS, "tool_choice": "required"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tool_choice"


async def test_model_naming_a_tier_pins_it_and_the_route_is_in_the_result(
    engines: Engines,
) -> None:
    from pipeline.router import Router

    router = Router({"small": engines.llm, "large": engines.llm})
    app = create_app(
        make_settings(), engines=Engines(engines.stt, engines.llm, engines.tts, router)
    )
    async with http_client(app) as client:
        routed = await client.post(
            "/v1/chat/completions", json={"model": "gpt-4o", "messages": ASK, "max_tokens": 4}
        )
        pinned = await client.post(
            "/v1/chat/completions", json={"model": "small", "messages": ASK, "max_tokens": 4}
        )
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "m", "messages": ASK, "tools": TOOLS, "max_tokens": 4, "stream": True},
        ) as streamed:
            lines = [line async for line in streamed.aiter_lines() if line.startswith("data: {")]
    assert routed.json()["voxline"] == {"llm_tier": "large", "route_reason": "question"}
    assert pinned.json()["voxline"] == {"llm_tier": "small", "route_reason": "pinned"}
    finish = [json.loads(line[6:]) for line in lines if '"finish_reason":"' in line]
    assert finish[-1]["voxline"] == {"llm_tier": "large", "route_reason": "tools"}
