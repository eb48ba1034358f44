"""Function tools and LLM tiers over ``/v1/realtime``, driven by the official openai SDK.

A real uvicorn server with the real packaged models; the LLM is SmolLM2-135M on llama.cpp in two
tiers (``small`` and ``large``: the same weights loaded twice, a second copy being all a
registry package ships; see docs/tools.md), so the router's decision is visible in each
``response.done`` while every call is really generated under the schema's grammar.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import openai
import pytest
import pytest_asyncio

from models.registry import Engines, start_engines
from pipeline.settings import LLMSettings, LLMTierSettings, Settings
from pipeline.types import Message
from server.app import create_app
from tests.server.conftest import LiveServer, make_settings

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.llama]
pytest.importorskip("llama_cpp")

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 1},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}


def tiered_settings() -> Settings:
    return make_settings(
        llm=LLMSettings(
            engine="llamacpp", tiers={"large": LLMTierSettings(max_tokens=48)}, max_tokens=24
        )
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines() -> AsyncIterator[Engines]:
    started = await start_engines(tiered_settings())
    try:
        yield started
    finally:
        await started.aclose()


async def until_done(conn: Any, seen: list[Any]) -> Any:
    async with asyncio.timeout(90):
        async for event in conn:
            seen.append(event)
            if event.type == "response.done":
                return event
    raise AssertionError("no response.done")


async def test_call_streams_then_its_output_gets_a_spoken_answer(engines: Engines) -> None:
    app = create_app(tiered_settings(), engines=engines)
    with LiveServer(app) as server:
        client = openai.AsyncOpenAI(api_key="unused", base_url=f"{server.url}/v1", max_retries=0)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(
                session={"type": "realtime", "tools": [WEATHER], "tool_choice": "required"}  # type: ignore[list-item,typeddict-item]
            )
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "What is the weather in Paris?"}],
                }
            )
            await conn.response.create()
            first: list[Any] = []
            done = await until_done(conn, first)

            kinds = [e.type for e in first]
            assert "session.updated" in kinds
            updated = next(e for e in first if e.type == "session.updated")
            assert [t.name for t in updated.session.tools] == ["get_weather"]
            added = next(
                e
                for e in first
                if e.type == "response.output_item.added" and e.item.type == "function_call"
            )
            assert added.output_index == 1 and added.item.name == "get_weather"
            deltas = [e for e in first if e.type == "response.function_call_arguments.delta"]
            [args_done] = [e for e in first if e.type == "response.function_call_arguments.done"]
            assert deltas and all(d.call_id == args_done.call_id for d in deltas)
            assert "".join(d.delta for d in deltas) == args_done.arguments
            jsonschema.validate(json.loads(args_done.arguments), WEATHER["parameters"])
            [call] = [o for o in done.response.output if o.type == "function_call"]
            assert (call.call_id, call.arguments) == (args_done.call_id, args_done.arguments)
            voxline = (done.response.model_extra or {})["voxline"]
            assert (voxline["llm_tier"], voxline["route_reason"]) == ("large", "tools")

            # the client runs the function and hands its result back
            await conn.session.update(session={"type": "realtime", "tool_choice": "none"})
            await conn.conversation.item.create(
                item={
                    "type": "function_call_output",
                    "call_id": args_done.call_id,
                    "output": '{"sky": "sunny", "celsius": 24}',
                }
            )
            await conn.response.create()
            second: list[Any] = []
            answer = await until_done(conn, second)
    output_added = [
        e
        for e in second
        if e.type == "conversation.item.added" and e.item.type == "function_call_output"
    ]
    assert output_added and output_added[0].item.call_id == args_done.call_id
    assert answer.response.status in ("completed", "incomplete")
    assert not [o for o in answer.response.output if o.type == "function_call"]
    [message] = answer.response.output
    assert message.content[0].transcript.strip()
    # the call and its result are in the conversation the model read: its prompt is longer
    # than the question alone by at least the arguments and the output
    large = engines.router.tiers["large"].backends[0]  # type: ignore[union-attr,attr-defined]
    alone = [
        Message("system", tiered_settings().llm.system_prompt),
        Message("user", "What is the weather in Paris?"),
    ]
    assert answer.response.usage.input_tokens > large.count_tokens(alone) + 20
    assert answer.response.model_extra["voxline"]["route_reason"] == "tools"  # a result to read


async def test_small_talk_stays_small_and_a_tier_can_be_pinned(engines: Engines) -> None:
    app = create_app(tiered_settings(), engines=engines)
    with LiveServer(app) as server:
        client = openai.AsyncOpenAI(api_key="unused", base_url=f"{server.url}/v1", max_retries=0)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            routes = []
            for text, model in (("Hello there!", None), ("Hello there!", "large")):
                if model is not None:
                    await conn.session.update(session={"type": "realtime", "model": model})
                await conn.conversation.item.create(
                    item={
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": text}],
                    }
                )
                await conn.response.create()
                done = await until_done(conn, [])
                extra = done.response.model_extra["voxline"]
                routes.append((extra["llm_tier"], extra["route_reason"]))
    assert routes == [("small", "small_talk"), ("large", "pinned")]


async def test_output_for_an_unknown_call_is_an_error_event(engines: Engines) -> None:
    app = create_app(tiered_settings(), engines=engines)
    with LiveServer(app) as server:
        client = openai.AsyncOpenAI(api_key="unused", base_url=f"{server.url}/v1", max_retries=0)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.conversation.item.create(
                item={"type": "function_call_output", "call_id": "call_nope", "output": "1"},
                event_id="ev1",
            )
            async with asyncio.timeout(30):
                async for event in conn:
                    if event.type == "error":
                        break
    assert event.error.param == "item.call_id"
    assert event.error.event_id == "ev1"
