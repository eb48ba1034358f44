"""TransformersLLM on the packaged SmolLM2-135M-Instruct GGUF, on the CPU.

The module starts the engine twice on one temporary cache directory: the first start dequantizes
the GGUF file (tens of seconds on two cores, the cost of this module), the second reads the
cache. Every generation test then uses the second engine.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.llm_transformers import THREAD_NAME, TransformersLLM
from pipeline.errors import EngineUnavailable, InvalidInput, ModelLoadError
from pipeline.settings import LLMSettings
from pipeline.stops import StopFilter
from pipeline.types import GenerationParams, Message, TextDelta

QUESTION = [
    Message("system", "Answer in one short sentence."),
    Message("user", "What is the capital of France?"),
]
STORY = [Message("user", "Tell me a long story about a dragon who learns to fly.")]


def _settings(**overrides: object) -> LLMSettings:
    # One torch thread: the tests share two cores, and torch's spinning pool slows down badly
    # when it is oversubscribed.
    return LLMSettings(threads=1, **overrides)  # type: ignore[arg-type]


@dataclass
class Starts:
    cache_dir: Path
    first_seconds: float
    first_from_cache: bool | None
    engine: TransformersLLM


@pytest.fixture(scope="module")
def starts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Starts]:
    cache_dir = tmp_path_factory.mktemp("voxline-cache")
    first = TransformersLLM(_settings(), cache_dir=cache_dir)
    first.load()
    assert first.load_seconds is not None
    record = (first.load_seconds, first.loaded_from_cache)
    asyncio.run(first.aclose())
    second = TransformersLLM(_settings(), cache_dir=cache_dir)
    second.load()
    second.warmup()
    yield Starts(cache_dir, record[0], record[1], second)
    asyncio.run(second.aclose())


@pytest.fixture(scope="module")
def engine(starts: Starts) -> TransformersLLM:
    return starts.engine


async def _collect(
    engine: TransformersLLM, messages: list[Message], **params: object
) -> list[TextDelta]:
    return [d async for d in engine.stream(messages, GenerationParams(**params))]  # type: ignore[arg-type]


async def _thread_gone(name: str, within: float = 60.0) -> bool:
    """Whether the thread ``name`` ended; ``within`` only guards against a hang (that the worker
    stopped early is shown by the forward passes it made, not by how fast)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(t.name == name and t.is_alive() for t in threading.enumerate()):
            return True
        await asyncio.sleep(0.02)
    return False


def test_second_start_reads_the_dequantized_cache(starts: Starts) -> None:
    assert starts.first_from_cache is False
    assert starts.engine.loaded_from_cache is True
    entries = list((starts.cache_dir / "gguf").iterdir())
    assert [e.name.startswith("SmolLM2-135M-Instruct") for e in entries] == [True]  # no temp dirs
    assert (entries[0] / "model.safetensors").is_file()
    assert (entries[0] / "tokenizer.json").is_file()
    assert starts.engine.load_seconds is not None
    assert starts.engine.load_seconds < starts.first_seconds / 2


def test_name_and_capabilities(engine: TransformersLLM) -> None:
    assert engine.name == "transformers:cpu"
    assert engine.capabilities.context_tokens == 2048


async def test_streams_text_then_usage(engine: TransformersLLM) -> None:
    deltas = await _collect(engine, QUESTION, max_tokens=24, temperature=0.0)
    texts = [d for d in deltas[:-1] if d.text]
    assert len(texts) > 1
    assert "Paris" in "".join(d.text for d in deltas)
    assert all(d.usage is None and d.finish_reason is None for d in deltas[:-1])
    last = deltas[-1]
    assert last.text == "" and last.usage is not None
    assert last.usage.prompt_tokens == engine.count_tokens(QUESTION)
    assert 0 < last.usage.completion_tokens <= 24
    assert last.finish_reason == "stop"  # SmolLM2 ends its one-sentence answer itself


async def test_greedy_is_deterministic(engine: TransformersLLM) -> None:
    first = await _collect(engine, STORY, max_tokens=16, temperature=0.0)
    second = await _collect(engine, STORY, max_tokens=16, temperature=0.0)
    assert "".join(d.text for d in first) == "".join(d.text for d in second)
    assert first[-1].usage == second[-1].usage


async def test_seeded_sampling_repeats(engine: TransformersLLM) -> None:
    params = {"max_tokens": 12, "temperature": 1.0, "top_p": 0.95, "seed": 7}
    first = await _collect(engine, STORY, **params)
    second = await _collect(engine, STORY, **params)
    assert "".join(d.text for d in first) == "".join(d.text for d in second)


async def test_max_tokens_ends_with_length(engine: TransformersLLM) -> None:
    deltas = await _collect(engine, STORY, max_tokens=3, temperature=0.0)
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 3


async def test_stop_string_ends_the_reply_before_it(engine: TransformersLLM) -> None:
    full = "".join(d.text for d in await _collect(engine, QUESTION, max_tokens=24, temperature=0))
    assert "France" in full
    deltas = await _collect(engine, QUESTION, max_tokens=24, temperature=0.0, stop=("France",))
    text = "".join(d.text for d in deltas)
    assert text == full[: full.index("France")]
    assert deltas[-1].finish_reason == "stop"


async def test_cancel_stops_the_worker(engine: TransformersLLM) -> None:
    forward_calls: list[int] = []
    model = engine._model.get().model
    hook = model.register_forward_hook(lambda *_: forward_calls.append(1))
    try:
        stream = engine.stream(STORY, GenerationParams(max_tokens=200, temperature=0.0))
        async for delta in stream:
            assert delta.text
            break
        await stream.aclose()
        assert await _thread_gone(THREAD_NAME)
        calls = len(forward_calls)
        assert calls < 20  # of 200 allowed
        await asyncio.sleep(0.2)
        assert len(forward_calls) == calls  # nothing decodes after the worker is gone
    finally:
        hook.remove()


async def test_cancelling_the_consumer_task_stops_the_worker(engine: TransformersLLM) -> None:
    forward_calls: list[int] = []
    hook = engine._model.get().model.register_forward_hook(lambda *_: forward_calls.append(1))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.stream(STORY, GenerationParams(max_tokens=200, temperature=0.0)):
            first.set()

    try:
        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), timeout=30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await _thread_gone(THREAD_NAME)
        assert len(forward_calls) < 20  # of 200 allowed
    finally:
        hook.remove()


@pytest.mark.parametrize(
    ("messages", "params"),
    [([], GenerationParams()), (QUESTION, GenerationParams(max_tokens=0))],
)
async def test_invalid_requests_fail_before_any_work(
    tmp_path: Path, messages: list[Message], params: GenerationParams
) -> None:
    # A model that cannot load: InvalidInput (not ModelLoadError) proves nothing was attempted.
    engine = TransformersLLM(_settings(model=str(tmp_path / "absent.gguf")), cache_dir=tmp_path)
    with pytest.raises(InvalidInput):
        async for _ in engine.stream(messages, params):
            pass
    assert not engine.loaded


async def test_a_conversation_longer_than_the_context_is_invalid(engine: TransformersLLM) -> None:
    long = [Message("user", "word " * 2100)]
    with pytest.raises(InvalidInput) as info:
        await _collect(engine, long)
    assert info.value.code == "context_length_exceeded"


async def test_a_local_model_directory_loads(starts: Starts) -> None:
    entry = next((starts.cache_dir / "gguf").iterdir())  # a plain save_pretrained directory
    engine = TransformersLLM(_settings(model=str(entry)), cache_dir=starts.cache_dir)
    try:
        deltas = await _collect(engine, QUESTION, max_tokens=4, temperature=0.0)
        assert engine.loaded_from_cache is None  # not a GGUF file: no cache involved
        assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens > 0
    finally:
        await engine.aclose()


def test_a_missing_local_path_names_the_reference(tmp_path: Path) -> None:
    ref = str(tmp_path / "missing" / "model.gguf")
    engine = TransformersLLM(_settings(model=ref), cache_dir=tmp_path)
    with pytest.raises(ModelLoadError) as info:
        engine.load()
    assert ref in str(info.value)
    assert (
        info.value.backend == "transformers:cpu" and info.value.retryable
    )  # another backend may load


def test_an_unknown_hub_id_offline_names_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = TransformersLLM(
        _settings(model="voxline-tests/no-such-model"), cache_dir=tmp_path, offline=True
    )
    with pytest.raises(ModelLoadError) as info:
        engine.load()
    assert "voxline-tests/no-such-model" in str(info.value)


async def test_a_closed_engine_refuses_to_load(tmp_path: Path) -> None:
    engine = TransformersLLM(_settings(), cache_dir=tmp_path)
    await engine.aclose()
    with pytest.raises(EngineUnavailable):
        engine.load()


def test_stop_filter_holds_back_a_possible_stop_string() -> None:
    stops = StopFilter(["END"])
    assert stops.push("Hello E") == "Hello "  # "E" may start "END"
    assert stops.push("Hello EN") == ""
    assert stops.push("Hello ENx") == "ENx"  # it did not
    assert stops.push("Hello ENx and END and more") == " and "
    assert stops.stopped
    assert StopFilter([]).push("anything") == "anything"


async def test_two_engines_started_at_once_both_load(starts: Starts) -> None:
    """LLM tiers start concurrently (``models.registry.start_engines``): each comes out whole
    (transformers' loading is not thread-safe: the engine reads one model at a time)."""
    engines = [TransformersLLM(_settings(), cache_dir=starts.cache_dir) for _ in range(2)]
    try:
        await asyncio.gather(*(e.start() for e in engines))
        for engine in engines:
            deltas = await _collect(engine, QUESTION, max_tokens=4, temperature=0.0)
            usage = deltas[-1].usage
            assert usage is not None and usage.completion_tokens > 0
    finally:
        await asyncio.gather(*(e.aclose() for e in engines))
