"""Function tools in the pipeline: parsing the client's tools, checking and repairing calls.

The calls come from ``ScriptedLLM`` (a model cannot be made to break a schema on demand); the
real grammar-constrained calls of llama.cpp are tested in ``tests/models`` and the servers'.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.errors import EngineUnavailable, InvalidInput, InvalidToolCall
from pipeline.fallback import FallbackLLM
from pipeline.reply import Reply
from pipeline.tool_calls import call_error, parse_tool_choice, parse_tools
from pipeline.types import (
    ForcedTool,
    FunctionTool,
    GenerationParams,
    Message,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)
from tests.fakes import ScriptedLLM, ScriptedTTS

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = FunctionTool("get_weather", "Weather forecast.", SCHEMA)
ASK = [Message("user", "Weather in Oslo?")]
VALID = '{"city": "Oslo", "days": 2}'


def params(choice: Any = "auto") -> GenerationParams:
    return GenerationParams(tools=(WEATHER,), tool_choice=choice)


async def collect(llm: Any, messages: list[Message], p: GenerationParams) -> list[TextDelta]:
    return [d async for d in llm.stream(messages, p)]


def test_both_shapes_parse_to_the_same_tools() -> None:
    chat = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather forecast.",
                "parameters": SCHEMA,
            },
        }
    ]
    flat = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather forecast.",
            "parameters": SCHEMA,
        }
    ]
    assert parse_tools(chat, param="tools", nested=True) == (WEATHER,)
    assert parse_tools(flat, param="session.tools", nested=False) == (WEATHER,)
    # another parser's tool type is left alone
    mixed = [*flat, {"type": "file_search", "vector_store_ids": ["vs_1"]}]
    assert parse_tools(mixed, param="t", nested=False) == (WEATHER,)


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ([{"type": "function", "name": "x" * 65}], "t[0].name"),
        ([{"type": "function", "name": "f", "parameters": {"type": "array"}}], "t[0].parameters"),
        (
            [{"type": "function", "name": "f", "parameters": {"type": "object", "required": 3}}],
            "t[0].parameters",
        ),
        ([{"type": "function", "name": "f"}, {"type": "function", "name": "f"}], "t"),
        (["f"], "t[0]"),
    ],
    ids=["long-name", "not-an-object", "invalid-schema", "duplicate", "not-an-object-entry"],
)
def test_bad_tools_name_the_field(tools: Any, param: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_tools(tools, param="t", nested=False)
    assert info.value.param == param


def test_tool_choice_forms() -> None:
    assert parse_tool_choice(None, (WEATHER,), param="c", nested=False) == "auto"
    assert parse_tool_choice("required", (WEATHER,), param="c", nested=False) == "required"
    forced = {"type": "function", "function": {"name": "get_weather"}}
    assert parse_tool_choice(forced, (WEATHER,), param="c", nested=True) == ForcedTool(
        "get_weather"
    )
    with pytest.raises(InvalidInput):
        parse_tool_choice(
            {"type": "function", "name": "other"}, (WEATHER,), param="c", nested=False
        )
    with pytest.raises(InvalidInput):
        parse_tool_choice("required", (), param="c", nested=False)
    # a realtime update that sets only tool_choice: the session checks the name later
    assert parse_tool_choice(
        {"type": "function", "name": "x"}, None, param="c", nested=False
    ) == ForcedTool("x")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (ToolCall("c", "get_weather", VALID), None),
        (ToolCall("c", "nope", VALID), "there is no function"),
        (ToolCall("c", "get_weather", '{"city": "Oslo"'), "not valid JSON"),
        (ToolCall("c", "get_weather", "[1]"), "must be a JSON object"),
        (ToolCall("c", "get_weather", '{"city": "Oslo", "days": 0}'), "days"),
        (ToolCall("c", "get_weather", '{"days": 2}'), "city"),
    ],
)
def test_call_errors_say_what_is_wrong(call: ToolCall, error: str | None) -> None:
    found = call_error(call, (WEATHER,))
    assert (found is None) if error is None else (found is not None and error in found)


async def test_a_valid_call_streams_and_ends_complete() -> None:
    llm = ScriptedLLM(tool_calls=[("get_weather", VALID)])
    deltas = await collect(llm, ASK, params())
    pieces = [d.tool_call for d in deltas if d.tool_call is not None]
    assert pieces[0] == ToolCallDelta(0, pieces[0].call_id, "get_weather", "")
    assert "".join(p.arguments for p in pieces) == VALID
    last = deltas[-1]
    assert last.finish_reason == "tool_calls"
    assert last.tool_calls == (ToolCall(pieces[0].call_id, "get_weather", VALID),)
    assert len(llm.calls) == 1


async def test_an_invalid_call_is_repaired_once_keeping_its_id() -> None:
    llm = ScriptedLLM(
        tool_calls=[("get_weather", '{"city": "Oslo", "days": 0}'), ("get_weather", VALID)]
    )
    deltas = await collect(llm, ASK, params())
    first_id = next(d.tool_call.call_id for d in deltas if d.tool_call is not None)
    assert deltas[-1].tool_calls == (ToolCall(first_id, "get_weather", VALID),)
    repair = llm.calls[1]
    assert repair.params is not None and repair.params.tool_choice == ForcedTool("get_weather")
    said, result = repair.input[-2:]
    assert said.tool_calls[0].arguments == '{"city": "Oslo", "days": 0}'
    assert result.role == "tool" and result.tool_call_id == said.tool_calls[0].call_id
    assert "days" in result.content
    usage = deltas[-1].usage
    assert usage is not None and usage.prompt_tokens > llm.count_tokens(ASK)  # both attempts


async def test_a_call_still_invalid_after_its_repair_fails_the_reply() -> None:
    bad = ("get_weather", '{"days": 3}')
    llm = ScriptedLLM(tool_calls=[bad, bad])
    with pytest.raises(InvalidToolCall) as info:
        await collect(llm, ASK, params())
    assert info.value.name == "get_weather" and not info.value.retryable
    assert len(llm.calls) == 2


async def test_a_required_call_that_was_not_made_gets_the_repair_attempt() -> None:
    llm = ScriptedLLM(tool_calls=[])  # answers in text, reminded or not
    with pytest.raises(InvalidToolCall):
        await collect(llm, ASK, params("required"))
    assert [m.content for m in llm.calls[1].input][-1].startswith("You must call")


async def test_an_engine_without_tools_answers_auto_in_text_and_refuses_required() -> None:
    llm = ScriptedLLM(reply=("Sunny", "."))
    deltas = await collect(llm, ASK, params())
    assert "".join(d.text for d in deltas) == "Sunny."
    assert llm.calls[0].params is not None and llm.calls[0].params.tools == ()
    with pytest.raises(EngineUnavailable):
        await collect(llm, ASK, params("required"))


async def test_a_chain_moves_a_required_call_to_a_backend_that_can() -> None:
    textual = ScriptedLLM("text-only", reply=("No", "."))
    caller = ScriptedLLM("caller", tool_calls=[("get_weather", VALID)])
    chain = FallbackLLM([textual, caller])
    assert chain.capabilities.tools
    deltas = await collect(chain, ASK, params("required"))
    assert json.loads(deltas[-1].tool_calls[0].arguments) == json.loads(VALID)
    assert caller.calls and not textual.calls  # refused before any work


async def test_the_reply_hands_calls_out_after_the_audio_said_before_them() -> None:
    llm = ScriptedLLM(tool_calls=[("get_weather", VALID)])
    reply = Reply(llm, ScriptedTTS(sample_rate=16_000), ASK, params=params())
    try:
        items = [i async for i in reply.items()]
    finally:
        await reply.aclose()
    pieces = [i for i in items if isinstance(i, ToolCallDelta)]
    assert "".join(p.arguments for p in pieces) == VALID
    assert reply.finish_reason == "tool_calls"
    assert reply.tool_calls[0].name == "get_weather"
    assert reply.text == ""


async def test_a_chain_keeps_the_repair_its_backend_made() -> None:
    backend = ScriptedLLM(
        "caller",
        tool_calls=[("get_weather", '{"city": "Oslo", "days": 0}'), ("get_weather", VALID)],
    )
    chain = FallbackLLM([backend])
    deltas = await collect(chain, ASK, params())
    assert json.loads(deltas[-1].tool_calls[0].arguments) == json.loads(VALID)
    assert len(backend.calls) == 2  # the backend's one repair, none more at the chain's level


async def test_a_consumer_that_stops_mid_call_closes_the_engines_stream_at_once() -> None:
    """Barge-in during a function call: the engine's own stream is closed as the consumer
    stops (its worker thread stops now), not whenever the garbage collector gets to it."""
    llm = ScriptedLLM(tool_calls=[("get_weather", VALID)])
    deltas = llm.stream(ASK, params())
    first = await anext(deltas)
    assert first.tool_call is not None and first.tool_call.name == "get_weather"
    await deltas.aclose()
    assert llm.calls[-1].closed
