"""LlamaCppLLM on the packaged SmolLM2-135M-Instruct GGUF (needs the `llama` extra)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

pytest.importorskip("llama_cpp")

from models import llm_llamacpp  # after the skip: it needs llama_cpp
from models.llm_llamacpp import THREAD_NAME, LlamaCppLLM
from pipeline.errors import EngineUnavailable, InvalidInput, ModelLoadError
from pipeline.settings import LLMSettings
from pipeline.types import (
    ForcedTool,
    FunctionTool,
    GenerationParams,
    Message,
    TextDelta,
    ToolCall,
)

pytestmark = pytest.mark.llama

QUESTION = [
    Message("system", "Answer in one short sentence."),
    Message("user", "What is the capital of France?"),
]
STORY = [Message("user", "Tell me a long story about a dragon who learns to fly.")]


def _settings(**overrides: object) -> LLMSettings:
    return LLMSettings(engine="llamacpp", threads=1, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppLLM]:
    engine = LlamaCppLLM(_settings())
    engine.load()
    engine.warmup()  # llama.cpp's first decode in a process takes seconds
    yield engine
    asyncio.run(engine.aclose())


async def _collect(
    engine: LlamaCppLLM, messages: list[Message], **params: object
) -> list[TextDelta]:
    return [d async for d in engine.stream(messages, GenerationParams(**params))]  # type: ignore[arg-type]


async def _thread_gone(name: str, within: float = 60.0) -> bool:
    """Whether the thread ``name`` ended; ``within`` only guards against a hang (that the worker
    stopped early is shown by the tokens it decoded, not by how fast)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(t.name == name and t.is_alive() for t in threading.enumerate()):
            return True
        await asyncio.sleep(0.02)
    return False


def test_name_and_capabilities(engine: LlamaCppLLM) -> None:
    assert engine.name == "llamacpp:cpu"
    assert engine.capabilities.context_tokens == 2048
    assert engine.load_seconds is not None and engine.load_seconds < 10


async def test_streams_text_then_usage(engine: LlamaCppLLM) -> None:
    deltas = await _collect(engine, QUESTION, max_tokens=24, temperature=0.0)
    assert len([d for d in deltas[:-1] if d.text]) > 1
    assert "Paris" in "".join(d.text for d in deltas)
    assert all(d.usage is None for d in deltas[:-1])
    last = deltas[-1]
    assert last.usage is not None and last.finish_reason == "stop"
    assert last.usage.prompt_tokens == engine.count_tokens(QUESTION)
    assert 0 < last.usage.completion_tokens <= 24


async def test_usage_matches_llama_cpp_python(engine: LlamaCppLLM) -> None:
    """Our streamed usage against the library's own non-streamed chat completion."""
    for max_tokens in (24, 4):  # one reply that ends itself, one cut at the limit
        deltas = await _collect(engine, QUESTION, max_tokens=max_tokens, temperature=0.0)
        reference = engine._model.get().llama.create_chat_completion(
            [{"role": m.role, "content": m.content} for m in QUESTION],
            max_tokens=max_tokens,
            temperature=0.0,
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
        )
        usage = deltas[-1].usage
        assert usage is not None
        assert usage.prompt_tokens == reference["usage"]["prompt_tokens"]
        assert usage.completion_tokens == reference["usage"]["completion_tokens"]
        assert "".join(d.text for d in deltas) == reference["choices"][0]["message"]["content"]
        assert deltas[-1].finish_reason == reference["choices"][0]["finish_reason"]


async def test_greedy_is_deterministic(engine: LlamaCppLLM) -> None:
    first = await _collect(engine, STORY, max_tokens=32, temperature=0.0)
    second = await _collect(engine, STORY, max_tokens=32, temperature=0.0)
    assert "".join(d.text for d in first) == "".join(d.text for d in second)
    assert first[-1].usage == second[-1].usage


async def test_seeded_sampling_repeats(engine: LlamaCppLLM) -> None:
    params = {"max_tokens": 24, "temperature": 1.0, "top_p": 0.95, "seed": 7}
    first = await _collect(engine, STORY, **params)
    second = await _collect(engine, STORY, **params)
    assert "".join(d.text for d in first) == "".join(d.text for d in second)


async def test_max_tokens_ends_with_length(engine: LlamaCppLLM) -> None:
    deltas = await _collect(engine, STORY, max_tokens=3, temperature=0.0)
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 3


async def test_stop_string_ends_the_reply_before_it(engine: LlamaCppLLM) -> None:
    full = "".join(d.text for d in await _collect(engine, QUESTION, max_tokens=24, temperature=0))
    assert "France" in full
    deltas = await _collect(engine, QUESTION, max_tokens=24, temperature=0.0, stop=("France",))
    assert "".join(d.text for d in deltas) == full[: full.index("France")]
    assert deltas[-1].finish_reason == "stop"


async def test_cancel_stops_the_worker(engine: LlamaCppLLM) -> None:
    llama = engine._model.get().llama
    prompt_tokens = engine.count_tokens(STORY)
    stream = engine.stream(STORY, GenerationParams(max_tokens=200, temperature=0.0))
    async for delta in stream:
        assert delta.text
        break
    await stream.aclose()
    assert await _thread_gone(THREAD_NAME)
    decoded = llama.n_tokens - prompt_tokens  # tokens fed back into the context
    assert 0 <= decoded < 20  # of 200 allowed
    await asyncio.sleep(0.2)
    assert llama.n_tokens - prompt_tokens == decoded


async def test_cancelling_the_consumer_task_stops_the_worker(engine: LlamaCppLLM) -> None:
    llama = engine._model.get().llama
    prompt_tokens = engine.count_tokens(STORY)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.stream(STORY, GenerationParams(max_tokens=200, temperature=0.0)):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), timeout=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _thread_gone(THREAD_NAME)
    assert 0 <= llama.n_tokens - prompt_tokens < 20  # of 200 allowed


@pytest.mark.parametrize(
    ("messages", "params"),
    [([], GenerationParams()), (QUESTION, GenerationParams(max_tokens=0))],
)
async def test_invalid_requests_fail_before_any_work(
    tmp_path: Path, messages: list[Message], params: GenerationParams
) -> None:
    engine = LlamaCppLLM(_settings(model=str(tmp_path / "absent.gguf")))
    with pytest.raises(InvalidInput):
        async for _ in engine.stream(messages, params):
            pass
    assert not engine.loaded


async def test_a_conversation_longer_than_the_context_is_invalid(engine: LlamaCppLLM) -> None:
    with pytest.raises(InvalidInput) as info:
        await _collect(engine, [Message("user", "word " * 2100)])
    assert info.value.code == "context_length_exceeded"


def test_a_missing_local_path_names_the_reference(tmp_path: Path) -> None:
    ref = str(tmp_path / "missing" / "model.gguf")
    with pytest.raises(ModelLoadError) as info:
        LlamaCppLLM(_settings(model=ref)).load()
    assert ref in str(info.value)


def test_a_hub_id_is_refused_with_the_reason() -> None:
    with pytest.raises(ModelLoadError) as info:
        LlamaCppLLM(_settings(model="Qwen/Qwen2.5-7B-Instruct")).load()
    assert "Qwen/Qwen2.5-7B-Instruct" in str(info.value) and ".gguf" in str(info.value)


def test_a_corrupt_file_is_a_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError) as info:
        LlamaCppLLM(_settings(model=str(bad))).load()
    assert str(bad) in str(info.value)


def test_without_llama_cpp_python_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The one fake here: the package is installed, so we hide it from the engine.
    monkeypatch.setattr(llm_llamacpp, "_import_llama_cpp", lambda: None)
    engine = LlamaCppLLM(_settings(device="auto"))
    assert engine.name == "llamacpp:cpu"
    with pytest.raises(EngineUnavailable) as info:
        engine.load()
    assert llm_llamacpp.INSTALL_HINT in str(info.value)


# -- function tools -----------------------------------------------------------------------

ORDER = FunctionTool(
    "order_pizza",
    "Order a pizza.",
    {
        "type": "object",
        "properties": {
            "size": {"type": "string", "enum": ["small", "medium", "large"]},
            "toppings": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "count": {"type": "integer"},
        },
        "required": ["size", "toppings", "count"],
        "additionalProperties": False,
    },
)
LOOKUP = FunctionTool(
    "lookup", "Look a word up.", {"type": "object", "properties": {"word": {"type": "string"}}}
)
PIZZA = [Message("user", "Order two large pizzas with mushrooms.")]


@pytest.mark.parametrize("choice", ["required", ForcedTool("order_pizza")])
async def test_a_call_is_valid_json_of_its_schema_under_the_grammar(
    engine: LlamaCppLLM, choice: object
) -> None:
    deltas = await _collect(engine, PIZZA, tools=(ORDER, LOOKUP), tool_choice=choice)
    last = deltas[-1]
    assert last.finish_reason == "tool_calls"
    [call] = last.tool_calls
    assert call.name in ("order_pizza", "lookup")
    tool = ORDER if call.name == "order_pizza" else LOOKUP
    jsonschema.validate(json.loads(call.arguments), dict(tool.parameters))
    pieces = [d.tool_call for d in deltas if d.tool_call is not None]
    assert len(pieces) > 3  # streamed in pieces, not all at once
    assert "".join(p.arguments for p in pieces) == call.arguments
    assert not "".join(d.text for d in deltas)
    assert last.usage is not None and last.usage.completion_tokens >= len(pieces) - 1


async def test_a_schema_the_grammar_converter_cannot_take_is_the_requests_fault(
    engine: LlamaCppLLM,
) -> None:
    """Valid JSON Schema that llama.cpp's converter asserts on (a pattern not anchored with
    ^...$): an InvalidInput on ``tools`` (a 4xx), raised before any call is announced."""
    coded = FunctionTool(
        "coded",
        "Take a code.",
        {"type": "object", "properties": {"code": {"type": "string", "pattern": "[A-Z]{3}"}}},
    )
    seen: list[TextDelta] = []
    with pytest.raises(InvalidInput) as info:
        async for delta in engine.stream(
            PIZZA, GenerationParams(tools=(coded,), tool_choice="required")
        ):
            seen.append(delta)
    assert info.value.param == "tools" and info.value.code == "unsupported_schema"
    assert not [d for d in seen if d.tool_call is not None]


async def test_auto_streams_text_when_the_model_does_not_call(engine: LlamaCppLLM) -> None:
    deltas = await _collect(
        engine, QUESTION, tools=(LOOKUP,), tool_choice="auto", max_tokens=16, temperature=0.0
    )
    text = "".join(d.text for d in deltas)
    assert "<tool_call>" not in text
    if deltas[-1].finish_reason == "tool_calls":  # the model may call: then it is valid
        jsonschema.validate(json.loads(deltas[-1].tool_calls[0].arguments), dict(LOOKUP.parameters))
    else:
        assert text.strip()


async def test_a_call_in_the_history_and_its_result_are_in_the_prompt(engine: LlamaCppLLM) -> None:
    call = ToolCall("call_7", "lookup", '{"word": "zyzzyva"}')
    history = [
        *QUESTION,
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "a tropical weevil", tool_call_id="call_7"),
    ]
    with_result = await asyncio.to_thread(engine.count_tokens, history)
    without = await asyncio.to_thread(engine.count_tokens, QUESTION)
    assert with_result > without + 10
    deltas = await _collect(engine, history, max_tokens=8, temperature=0.0)
    assert deltas[-1].usage is not None and deltas[-1].usage.prompt_tokens == with_result


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


async def test_prefill_leaves_the_next_turns_prompt_prefix_in_the_cache(
    engine: LlamaCppLLM,
) -> None:
    so_far = [
        Message("system", "Be brief."),
        Message("user", "What is the capital of France?"),
        Message("assistant", "Paris is the capital of France."),
    ]
    loaded = engine._model.get()
    before, _ = engine._prompt(loaded, so_far)
    after, _ = engine._prompt(loaded, [*so_far, Message("user", "And of Spain?")])
    shared = _common_prefix(before, after)
    # the conversation so far renders as the next prompt's start, but for its assistant cue
    assert len(before) - shared <= 4 < shared
    await _collect(engine, STORY, max_tokens=3)  # the cache now holds another prompt
    assert await engine.prefill(so_far)
    llama = loaded.llama
    cached = [int(t) for t in llama.input_ids[: llama.n_tokens]]
    assert _common_prefix(cached, after) == shared


async def test_prefill_is_skipped_while_a_reply_decodes(engine: LlamaCppLLM) -> None:
    replies = engine.stream(STORY, GenerationParams(max_tokens=200))
    await anext(replies)  # the reply holds the engine
    assert not await engine.prefill([Message("user", "Hi")])
    await replies.aclose()


async def test_a_prefill_cancelled_while_queued_for_a_thread_gives_the_slot_back(
    engine: LlamaCppLLM,
) -> None:
    """A prefill waits in the loop's executor when its threads are busy (every session's VAD
    runs there too); cancelled there (the user spoke again), its job never runs, and the
    engine's slot it was taken for must not stay taken."""
    import concurrent.futures

    from pipeline.fallback import FallbackLLM
    from tests.fakes import scheduled

    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    busy = threading.Event()
    blocker = loop.run_in_executor(None, busy.wait)  # the executor's one thread is taken
    before = engine.scheduler
    served = scheduled(engine)
    try:
        chain = FallbackLLM([served])
        prefill = asyncio.create_task(chain.prefill(QUESTION))
        for _ in range(3000):  # a hang guard, not a budget
            if served.scheduler is not None and served.scheduler.in_use:
                break
            await asyncio.sleep(0.01)
        assert served.scheduler is not None and served.scheduler.in_use == 1  # queued, holding
        prefill.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prefill  # cancelled while the executor's thread is still taken
        assert served.scheduler.in_use == 0
        busy.set()
        await blocker
        await asyncio.sleep(0.05)  # the queued job was cancelled: it never takes the slot
        assert served.scheduler.in_use == 0
    finally:
        busy.set()
        engine.scheduler = before
