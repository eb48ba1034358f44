"""LlamaCppLLM serving several replies at once (``capacity`` contexts) on the packaged
SmolLM2-135M-Instruct GGUF (needs the `llama` extra).

Concurrency is observed in the order the streams deliver their pieces, never by timing: with
two contexts a second reply starts streaming while the first is still decoding; with one it
waits for the first to end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import jsonschema
import pytest

pytest.importorskip("llama_cpp")

import llama_cpp

from models.llm_llamacpp import LlamaCppLLM
from pipeline.settings import LLMSettings
from pipeline.types import ForcedTool, FunctionTool, GenerationParams, Message, TextDelta

pytestmark = pytest.mark.llama

SYSTEM = Message("system", "You are a storyteller. Tell long, detailed stories.")
DRAGON = [SYSTEM, Message("user", "Tell me a long story about a dragon who learns to fly.")]
SAILOR = [SYSTEM, Message("user", "Tell me a long story about a sailor lost at sea.")]
LONG = GenerationParams(max_tokens=160, temperature=0.0)


def _engine(capacity: int) -> Iterator[LlamaCppLLM]:
    engine = LlamaCppLLM(LLMSettings(engine="llamacpp", threads=1, capacity=capacity))
    engine.load()
    engine.warmup()
    yield engine
    asyncio.run(engine.aclose())


@pytest.fixture(scope="module")
def pair() -> Iterator[LlamaCppLLM]:
    yield from _engine(2)


@pytest.fixture(scope="module")
def single() -> Iterator[LlamaCppLLM]:
    yield from _engine(1)


def _prompt(engine: LlamaCppLLM, messages: Sequence[Message]) -> list[int]:
    return engine._prompt(engine._model.get(), messages)[0]


def _holding(engine: LlamaCppLLM, prompt: list[int]) -> Any:
    """The one context whose cache starts with ``prompt``."""
    [llama] = [
        llama
        for llama in engine._model.get().pool.llamas
        if llama._input_ids.tolist()[: len(prompt)] == prompt
    ]
    return llama


async def _record(
    stream: AsyncIterator[TextDelta], tag: str, log: list[tuple[str, str]], first: asyncio.Event
) -> list[TextDelta]:
    """Drain ``stream``, logging ``(tag, "text" | "end")`` as each piece arrives."""
    deltas = []
    async for delta in stream:
        deltas.append(delta)
        if delta.text:
            log.append((tag, "text"))
            first.set()
        if delta.usage is not None:
            log.append((tag, "end"))
    return deltas


async def _two_at_once(engine: LlamaCppLLM) -> tuple[list[tuple[str, str]], list[TextDelta]]:
    """Start a long reply, and a second one once the first streams; the arrival log and the
    second reply."""
    log: list[tuple[str, str]] = []
    started = [asyncio.Event(), asyncio.Event()]
    first = asyncio.create_task(_record(engine.stream(DRAGON, LONG), "a", log, started[0]))
    await asyncio.wait_for(started[0].wait(), timeout=60)
    second = await _record(engine.stream(SAILOR, LONG), "b", log, started[1])
    await first
    return log, second


async def test_two_replies_decode_at_once_with_capacity_two(pair: LlamaCppLLM) -> None:
    assert len(pair._model.get().pool.llamas) == 2
    log, second = await _two_at_once(pair)
    a_end = log.index(("a", "end"))
    b_first = log.index(("b", "text"))
    assert b_first < a_end  # the second reply streamed while the first was still decoding
    assert ("a", "text") in log[b_first:a_end]  # and the first kept going meanwhile
    assert second[-1].usage is not None and second[-1].usage.completion_tokens > 0
    # each in its own context, each context holding its own conversation
    assert _holding(pair, _prompt(pair, DRAGON)) is not _holding(pair, _prompt(pair, SAILOR))


async def test_capacity_one_decodes_one_reply_at_a_time(single: LlamaCppLLM) -> None:
    assert len(single._model.get().pool.llamas) == 1
    log, second = await _two_at_once(single)
    assert log.index(("a", "end")) < log.index(("b", "text"))
    assert second[-1].usage is not None and second[-1].usage.completion_tokens > 0


async def test_cancelling_one_reply_leaves_the_other_decoding(pair: LlamaCppLLM) -> None:
    log: list[tuple[str, str]] = []
    cut = pair.stream(DRAGON, LONG)
    async for delta in cut:
        assert delta.text
        break
    dragon = _holding(pair, _prompt(pair, DRAGON))
    streaming = asyncio.Event()
    kept = asyncio.create_task(_record(pair.stream(SAILOR, LONG), "b", log, streaming))
    await asyncio.wait_for(streaming.wait(), timeout=60)  # both decoding now
    await cut.aclose()
    deltas = await kept
    usage = deltas[-1].usage
    assert usage is not None and deltas[-1].finish_reason in ("stop", "length")
    assert usage.completion_tokens > 20 or deltas[-1].finish_reason == "stop"
    # the cancelled reply stopped at its next token: its context decoded a few of 160 tokens
    assert 0 <= dragon.n_tokens - len(_prompt(pair, DRAGON)) < 20


async def test_a_conversation_returns_to_its_warm_context(pair: LlamaCppLLM) -> None:
    greedy = GenerationParams(max_tokens=16, temperature=0.0)
    question = [
        Message("system", "Answer in one short sentence."),
        Message("user", "What is the capital of France?"),
    ]
    other = [*question[:1], Message("user", "Name a large animal that lives in the ocean.")]
    answer = "".join([d.text async for d in pair.stream(question, greedy)])
    [d async for d in pair.stream(other, greedy)]  # the other context, used least recently
    follow_up = [*question, Message("assistant", answer), Message("user", "And of Italy?")]
    warm, cold = _holding(pair, _prompt(pair, question)), _holding(pair, _prompt(pair, other))
    assert warm is not cold
    evaluated = llama_cpp.llama_perf_context(warm.ctx).n_p_eval
    [d async for d in pair.stream(follow_up, greedy)]
    prompt = _prompt(pair, follow_up)
    assert _holding(pair, prompt) is warm  # the follow-up went where its prefix was
    assert _holding(pair, _prompt(pair, other)) is cold  # and the other conversation stayed
    # only what the warm context did not hold was evaluated
    added = llama_cpp.llama_perf_context(warm.ctx).n_p_eval - evaluated
    assert 0 < added <= len(prompt) - len(_prompt(pair, question))


async def test_more_replies_than_contexts_wait_for_one(pair: LlamaCppLLM) -> None:
    params = GenerationParams(max_tokens=24, temperature=0.0)
    prompts = [[*DRAGON[:1], Message("user", f"Count from {n} to {n + 9}.")] for n in (1, 20, 40)]

    async def reply(messages: list[Message]) -> list[TextDelta]:
        return [d async for d in pair.stream(messages, params)]

    replies = await asyncio.gather(*(reply(p) for p in prompts))
    for deltas, messages in zip(replies, prompts, strict=True):
        usage = deltas[-1].usage
        assert usage is not None and usage.prompt_tokens == pair.count_tokens(messages)
        assert usage.completion_tokens > 0 and "".join(d.text for d in deltas).strip()


ORDER = FunctionTool(
    "order_pizza",
    "Order a pizza.",
    {
        "type": "object",
        "properties": {
            "size": {"type": "string", "enum": ["small", "medium", "large"]},
            "count": {"type": "integer"},
        },
        "required": ["size", "count"],
        "additionalProperties": False,
    },
)


async def test_grammar_constrained_calls_in_two_contexts_at_once(pair: LlamaCppLLM) -> None:
    params = GenerationParams(tools=(ORDER,), tool_choice=ForcedTool("order_pizza"))
    asks = ["Order two large pizzas.", "Order one small pizza."]

    async def call(ask: str) -> list[TextDelta]:
        return [d async for d in pair.stream([Message("user", ask)], params)]

    for deltas in await asyncio.gather(*(call(a) for a in asks)):
        assert deltas[-1].finish_reason == "tool_calls"
        [made] = deltas[-1].tool_calls
        jsonschema.validate(json.loads(made.arguments), dict(ORDER.parameters))


async def test_closing_frees_every_context_the_busy_one_when_its_reply_stops() -> None:
    engine = LlamaCppLLM(LLMSettings(engine="llamacpp", threads=1, capacity=2))
    await asyncio.to_thread(engine.load)
    llamas = engine._model.get().pool.llamas
    stream = engine.stream(DRAGON, LONG)
    async for _ in stream:  # one context decoding while the engine closes
        break
    await engine.aclose()
    assert sum(llama.ctx is None for llama in llamas) == 1  # the idle one, at once
    await stream.aclose()
    for _ in range(3000):  # a hang guard, not a budget: freed when its decode has stopped
        if all(llama.ctx is None for llama in llamas):
            break
        await asyncio.sleep(0.02)
    assert all(llama.ctx is None for llama in llamas)


async def test_prefill_reads_a_conversation_into_its_own_context(pair: LlamaCppLLM) -> None:
    greedy = GenerationParams(max_tokens=12, temperature=0.0)
    ask = [Message("system", "Be brief."), Message("user", "What is the capital of Spain?")]
    other = [*ask[:1], Message("user", "What colour is grass?")]
    answer = "".join([d.text async for d in pair.stream(ask, greedy)])
    [d async for d in pair.stream(other, greedy)]
    own, others = _holding(pair, _prompt(pair, ask)), _holding(pair, _prompt(pair, other))
    so_far = [*ask, Message("assistant", answer)]
    assert await pair.prefill(so_far)
    assert _holding(pair, _prompt(pair, so_far)) is own  # where its next turn will go
    assert _holding(pair, _prompt(pair, other)) is others
    # the next turn continues the prefilled messages: it goes there too
    [d async for d in pair.stream([*so_far, Message("user", "And of Portugal?")], greedy)]
    assert _holding(pair, _prompt(pair, [*so_far, Message("user", "And of Portugal?")])) is own


async def test_prefill_is_skipped_while_every_context_decodes(pair: LlamaCppLLM) -> None:
    first, second = pair.stream(DRAGON, LONG), pair.stream(SAILOR, LONG)
    await anext(first)
    await anext(second)  # both contexts hold a reply
    assert not await pair.prefill([Message("user", "Hi")])
    await first.aclose()
    await second.aclose()
