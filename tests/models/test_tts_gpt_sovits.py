"""GptSovitsTTS against a stub checkout: the real worker script, pipe protocol and pool.

Upstream GPT-SoVITS cannot run here in seconds (its own venv, gigabytes of weights), so the model
is the stand-in checkout from ``tests/fakes/gpt_sovits_checkout.py``; everything else is the real
thing: worker processes started with an interpreter inside a checkout, frames over their
stdin/stdout, cancel, crash and hang handling, and the pool. The opt-in ``gpt_sovits`` tests
run the real upstream.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from models.gpt_sovits_pool import size_by_memory
from models.gpt_sovits_process import WORKER_SCRIPT
from models.tts_gpt_sovits import SAMPLE_RATES, GptSovitsTTS, streaming_inputs
from pipeline.errors import (
    EngineTimeout,
    EngineUnavailable,
    InvalidInput,
    ModelLoadError,
    StageError,
)
from pipeline.fallback import FallbackTTS
from pipeline.settings import GptSovitsSettings, GptSovitsVoice
from pipeline.types import AudioChunk
from tests.fakes.gpt_sovits_checkout import make_stub_checkout, read_log

CHUNK = 3200  # samples in one stub chunk: 100 ms at 32 kHz


def _write_clip(path: Path, seconds: float, rate: int = 16_000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)
    return path


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_stub_checkout(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {
        name: _write_clip(root / f"{name}.wav", seconds)
        for name, seconds in {"ok": 4.0, "other": 6.0, "short": 2.0, "long": 12.0}.items()
    }


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "stub.jsonl"


def voice(clip: Path, **fields: Any) -> GptSovitsVoice:
    values: dict[str, Any] = {"ref_audio": clip, "prompt_text": "This is my reference voice."}
    return GptSovitsVoice(**(values | fields))


def make_settings(checkout: Path, clips: dict[str, Path], **overrides: Any) -> GptSovitsSettings:
    fields: dict[str, Any] = {
        "home": checkout,
        "python": Path(sys.executable),  # the stub needs only numpy; real use needs upstream's venv
        "version": "v2Pro",
        "device": "cpu",
        "voices": {"alice": voice(clips["ok"]), "bob": voice(clips["other"], text_lang="ko")},
        "start_timeout_s": 30.0,
        "request_timeout_s": 10.0,
        "pool_size": 1,  # sizing by memory has its own tests
    }
    return GptSovitsSettings(**{**fields, **overrides})


@contextlib.asynccontextmanager
async def running(
    checkout: Path,
    clips: dict[str, Path],
    log_path: Path,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> AsyncIterator[GptSovitsTTS]:
    tts = GptSovitsTTS(
        make_settings(checkout, clips, **overrides), env={"STUB_LOG": str(log_path), **(env or {})}
    )
    await tts.start()
    try:
        yield tts
    finally:
        await tts.aclose()


async def collect(stream: AsyncIterator[AudioChunk]) -> list[AudioChunk]:
    return [chunk async for chunk in stream]


def events(log_path: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_log(log_path) if e["event"] == kind]


def requests(log_path: Path) -> list[dict[str, Any]]:
    """The runs after each worker's first, which is its warm-up."""
    seen: set[int] = set()
    runs = []
    for run in events(log_path, "run"):
        if run["pid"] in seen:
            runs.append(run)
        seen.add(run["pid"])
    return runs


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- streaming ---------------------------------------------------------------------------------


async def test_streams_upstream_chunks_as_float32_at_the_version_rate(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    # The stub prints to stdout and writes to fd 1 while loading and speaking: these chunks
    # arriving intact shows the worker keeps upstream's output off the protocol pipe.
    async with running(checkout, clips, log_path, env={"STUB_CHUNKS": "4"}) as tts:
        chunks = await collect(tts.synthesize("Hello there.", speed=1.25))
        assert tts.name == "gpt_sovits:cpu"
    assert tts.capabilities.voices == ("alice", "bob")
    assert tts.capabilities.sample_rate == 32_000
    assert [len(c.samples) for c in chunks] == [CHUNK] * 4
    assert all(c.sample_rate == 32_000 and c.samples.dtype == np.float32 for c in chunks)
    audio = np.concatenate([c.samples for c in chunks])
    t = np.arange(len(audio)) / 32_000
    expected = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16) / 32768
    np.testing.assert_allclose(audio, expected, atol=1e-6)  # in order, nothing lost or doubled

    (run,) = requests(log_path)
    assert run["inputs"] | {"text": "Hello there."} == run["inputs"]
    assert run["inputs"]["ref_audio_path"] == str(clips["ok"].resolve())
    assert run["inputs"]["prompt_text"] == "This is my reference voice."
    assert (run["inputs"]["text_lang"], run["inputs"]["prompt_lang"]) == ("en", "en")
    assert run["inputs"]["speed_factor"] == 1.25
    assert run["inputs"]["text_split_method"] == "cut5"
    assert run["inputs"]["fragment_interval"] == 0.1  # segment_pause_s, not upstream's 0.3
    assert run["inputs"]["streaming_mode"] is True and run["inputs"]["return_fragment"] is False
    (load,) = events(log_path, "load")
    assert load["config"] == {"device": "cpu", "is_half": True, "version": "v2Pro"}
    # Each worker writes upstream's config yaml to its own file in the engine's scratch folder
    # (removed by aclose), not into the checkout that every worker shares.
    configs_path = Path(load["configs_path"])
    assert configs_path.name == f"tts_infer-{load['pid']}.yaml"
    assert configs_path.parent.name.startswith("voxline-gpt-sovits-")
    assert not configs_path.parent.exists()
    assert not (checkout / "GPT_SoVITS" / "configs" / "tts_infer.yaml").exists()


async def test_a_named_voice_uses_its_own_clip_and_language(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    async with running(checkout, clips, log_path) as tts:
        await collect(tts.synthesize("안녕하세요.", voice="bob"))
    (run,) = requests(log_path)
    assert run["inputs"]["ref_audio_path"] == str(clips["other"].resolve())
    assert run["inputs"]["text_lang"] == "ko"


@pytest.mark.parametrize("version", ["v1", "v3", "v4"])
async def test_output_rate_follows_the_model_version(
    checkout: Path, clips: dict[str, Path], log_path: Path, version: str
) -> None:
    alice = {"alice": voice(clips["ok"])}  # v1 does not know Korean
    async with running(checkout, clips, log_path, version=version, voices=alice) as tts:
        chunks = await collect(tts.synthesize("Hello."))
    assert tts.capabilities.sample_rate == SAMPLE_RATES[version]
    assert {c.sample_rate for c in chunks} == {SAMPLE_RATES[version]}
    assert len(chunks[0].samples) == SAMPLE_RATES[version] // 10


async def test_non_streaming_mode_yields_the_whole_utterance_at_once(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    async with running(checkout, clips, log_path, streaming_mode=0) as tts:
        chunks = await collect(tts.synthesize("Hello."))
    assert tts.capabilities.streaming is False
    # upstream appended 0.3 s of zeros to the utterance: not sent
    assert [len(c.samples) for c in chunks] == [5 * CHUNK]
    assert requests(log_path)[0]["inputs"]["streaming_mode"] is False


def test_streaming_modes_map_to_upstream_flags_as_api_v2_does() -> None:
    flags = ("streaming_mode", "return_fragment", "fixed_length_chunk")
    table = {m: tuple(streaming_inputs(m)[f] for f in flags) for m in range(4)}
    assert table == {
        0: (False, False, False),
        1: (False, True, False),
        2: (True, False, False),
        3: (True, False, True),
    }


# --- cancel, crash, hang -----------------------------------------------------------------------


SLOW = {"STUB_CHUNK_DELAY": "0.02"}  # a LONG text then takes 10 s if nobody stops it


async def test_closing_the_stream_cancels_upstream_and_frees_the_worker(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    async with running(checkout, clips, log_path, env=SLOW, pool_size=1) as tts:
        async with contextlib.aclosing(tts.synthesize("A LONG answer.")) as stream:
            async for _ in stream:
                break
        async with contextlib.aclosing(tts.synthesize("Next one.")) as stream:
            first = await anext(stream)
    assert first.sample_rate == 32_000
    order = [e["event"] for e in read_log(log_path) if e["event"] != "set_ref"]
    # after the warm-up: stop(), then the generator closed (it did not run on to its end: that
    # logs no "closed"), then the next request on the same worker
    assert order[:6] == ["load", "run", "run", "stop", "closed", "run"]
    assert len({e["pid"] for e in read_log(log_path)}) == 1  # the same worker: no restart


async def test_a_cancelled_consumer_task_cancels_the_request(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    async with running(checkout, clips, log_path, env=SLOW, pool_size=1) as tts:
        speaking = asyncio.Event()

        async def consume() -> None:
            async for _ in tts.synthesize("Barge in on this LONG one."):
                speaking.set()

        task = asyncio.create_task(consume())
        await speaking.wait()
        task.cancel()  # the user barged in
        with pytest.raises(asyncio.CancelledError):
            await task
        chunks = await collect(tts.synthesize("Short."))
    assert len(chunks) == 5
    order = [e["event"] for e in read_log(log_path) if e["event"] != "set_ref"]
    # after the warm-up: upstream's generator was closed, not run to its end, before the next
    # request ran
    assert order[:6] == ["load", "run", "run", "stop", "closed", "run"]
    assert len({e["pid"] for e in events(log_path, "run")}) == 1


async def test_a_crash_fails_the_request_retryably_and_the_worker_restarts(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    async with running(checkout, clips, log_path) as tts:
        received: list[AudioChunk] = []
        with pytest.raises(EngineUnavailable) as info:
            async for chunk in tts.synthesize("Please CRASH now."):
                received.append(chunk)
        chunks = await collect(tts.synthesize("After the crash."))
    assert info.value.retryable
    assert info.value.backend == "gpt_sovits:cpu"
    assert len(received) == 1  # it died after its first chunk
    assert len(chunks) == 5
    first, second = (e["pid"] for e in events(log_path, "load"))
    assert first != second and not is_running(first)


async def test_a_hung_worker_times_out_and_is_replaced(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    async with running(checkout, clips, log_path, request_timeout_s=0.5) as tts:
        # the stub hangs forever: only the deadline can end the request
        with pytest.raises(EngineTimeout) as info:
            await collect(tts.synthesize("HANG here."))
        chunks = await collect(tts.synthesize("And now?"))
    assert info.value.retryable
    assert len(chunks) == 5
    first, _ = (e["pid"] for e in events(log_path, "load"))
    assert not is_running(first)


async def test_an_upstream_error_fails_the_request_but_keeps_the_worker(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    async with running(checkout, clips, log_path) as tts:
        received: list[AudioChunk] = []
        with pytest.raises(StageError) as info:
            async for chunk in tts.synthesize("This will FAIL."):
                received.append(chunk)
        chunks = await collect(tts.synthesize("Fine again."))
    assert "stub: inference failed" in str(info.value)
    # upstream's 16 kHz second of silence before the error is not passed on as audio
    assert [c.sample_rate for c in received] == [32_000]
    assert len(chunks) == 5
    assert len(events(log_path, "load")) == 1


async def test_a_worker_killed_while_idle_is_replaced_on_the_next_request(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    async with running(checkout, clips, log_path) as tts:
        (load,) = events(log_path, "load")
        os.kill(load["pid"], signal.SIGKILL)
        await asyncio.sleep(0.5)  # let asyncio's child watcher see the exit
        chunks = await collect(tts.synthesize("Still there?"))
    assert len(chunks) == 5
    assert len(events(log_path, "load")) == 2


async def test_off_rate_chunks_are_resampled_to_the_declared_rate(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    # v3 with upstream's super-sampling yields 48 kHz from a 24 kHz model: the declared rate holds.
    alice = {"alice": voice(clips["ok"])}
    env = {"STUB_RATE": "48000"}
    async with running(checkout, clips, log_path, env=env, version="v3", voices=alice) as tts:
        chunks = await collect(tts.synthesize("Hello."))
    assert {c.sample_rate for c in chunks} == {24_000}
    assert sum(len(c.samples) for c in chunks) == pytest.approx(5 * 2400, abs=50)


async def test_requests_fail_fast_while_no_worker_can_restart_then_recover(
    checkout: Path, clips: dict[str, Path], log_path: Path, tmp_path: Path
) -> None:
    fail = tmp_path / "fail"
    async with running(checkout, clips, log_path, env={"STUB_LOAD_FAIL": str(fail)}) as tts:
        fail.touch()  # from now on, upstream cannot load
        with pytest.raises(EngineUnavailable):
            await collect(tts.synthesize("CRASH it."))
        # failed with upstream's load error, rather than waiting for a worker (an EngineTimeout)
        with pytest.raises(EngineUnavailable, match="pretrained weights are missing") as info:
            await collect(tts.synthesize("Anyone there?"))
        assert info.value.retryable  # another backend may serve it
        fail.unlink()  # the pool keeps retrying in the background
        for _ in range(600):  # a hang guard, not a budget
            try:
                chunks = await collect(tts.synthesize("Back again?"))
                break
            except EngineUnavailable:
                await asyncio.sleep(0.1)
    assert len(chunks) == 5


# --- the pool ----------------------------------------------------------------------------------


async def _timed_request(tts: GptSovitsTTS, text: str) -> tuple[float, float]:
    first: float | None = None
    async for _ in tts.synthesize(text):
        first = first or time.perf_counter()
    assert first is not None
    return first, time.perf_counter()


async def test_a_pool_of_two_serves_two_requests_at_once(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    env = {"STUB_CHUNK_DELAY": "0.1"}  # 5 chunks: about 0.5 s a request
    async with running(checkout, clips, log_path, env=env, pool_size=2) as tts:
        (first_a, end_a), (first_b, end_b) = await asyncio.gather(
            _timed_request(tts, "One."), _timed_request(tts, "Two.")
        )
    assert max(first_a, first_b) < min(end_a, end_b)  # they overlapped in time
    assert len({e["pid"] for e in events(log_path, "run")}) == 2


async def test_a_pool_of_one_serializes_requests(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    env = {"STUB_CHUNK_DELAY": "0.05"}
    async with running(checkout, clips, log_path, env=env, pool_size=1) as tts:
        (first_a, end_a), (first_b, end_b) = await asyncio.gather(
            _timed_request(tts, "One."), _timed_request(tts, "Two.")
        )
    assert max(first_a, first_b) > min(end_a, end_b)  # the second waited for the worker


async def test_every_worker_speaks_a_warm_up_phrase_before_it_counts_as_ready(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    async with running(checkout, clips, log_path, pool_size=2) as tts:
        runs = events(log_path, "run")  # start() has returned: the pool is ready
        await tts.warm()  # nothing left to do
        assert events(log_path, "run") == runs
    assert len(runs) == 2 and len({e["pid"] for e in runs}) == 2
    assert {e["inputs"]["text"] for e in runs} == {"Hello."}
    assert {e["inputs"]["ref_audio_path"] for e in runs} == {str(clips["ok"].resolve())}


async def test_a_restarted_worker_warms_up_before_it_serves(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    async with running(checkout, clips, log_path) as tts:
        with pytest.raises(EngineUnavailable):
            await collect(tts.synthesize("Please CRASH now."))
        await collect(tts.synthesize("After the crash."))
    _, second = (e["pid"] for e in events(log_path, "load"))
    texts = [e["inputs"]["text"] for e in events(log_path, "run") if e["pid"] == second]
    assert texts == ["Hello.", "After the crash."]


async def test_aclose_ends_the_workers(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    async with running(checkout, clips, log_path, pool_size=2) as tts:
        pids = [e["pid"] for e in events(log_path, "load")]
        assert all(is_running(pid) for pid in pids)
    assert not any(is_running(pid) for pid in pids)
    with pytest.raises(EngineUnavailable):
        await collect(tts.synthesize("Hello?"))


# --- start-up ----------------------------------------------------------------------------------


async def test_a_load_failure_is_a_model_load_error_with_upstreams_reason(
    checkout: Path, clips: dict[str, Path], tmp_path: Path
) -> None:
    (fail := tmp_path / "fail").touch()
    tts = GptSovitsTTS(make_settings(checkout, clips), env={"STUB_LOAD_FAIL": str(fail)})
    with pytest.raises(ModelLoadError, match="pretrained weights are missing"):
        await tts.start()
    await tts.aclose()


async def test_a_slow_start_times_out(checkout: Path, clips: dict[str, Path]) -> None:
    settings = make_settings(checkout, clips, start_timeout_s=0.5)
    tts = GptSovitsTTS(settings, env={"STUB_LOAD_DELAY": "30"})
    with pytest.raises(EngineTimeout):  # 0.5 s of the stub's 30 s load: only the deadline ends it
        await tts.start()
    await tts.aclose()


# --- configuration and voices (no worker started) ----------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"voices": {"a": "missing.wav"}}, "does not exist"),
        ({"voices": {"a": "short"}}, "2.0 s; it must be 3-10 s"),
        ({"voices": {"a": "long"}}, "12.0 s; it must be 3-10 s"),
        ({"voices": {"a": ("ok", {"prompt_lang": "fr"})}}, "prompt_lang 'fr'"),
        ({"version": "v1", "voices": {"a": ("ok", {"text_lang": "ko"})}}, "text_lang 'ko'"),
        ({"version": "v4", "voices": {"a": ("ok", {"prompt_text": ""})}}, "prompt_text"),
        ({"default_voice": "carol"}, "default_voice 'carol'"),
        ({"home": None}, "GPT_SOVITS_HOME"),
        ({"home": "."}, "not a GPT-SoVITS checkout"),
        ({"python": None}, "GPT_SOVITS_PYTHON"),
        ({"t2s_weights": "nowhere.ckpt"}, "t2s_weights 'nowhere.ckpt' not found"),
    ],
)
async def test_configuration_problems_are_model_load_errors_at_start(
    checkout: Path, clips: dict[str, Path], tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    overrides = dict(change)
    if "voices" in overrides:
        resolved = {}
        for voice_id, spec in overrides["voices"].items():
            clip, fields = spec if isinstance(spec, tuple) else (spec, {})
            resolved[voice_id] = voice(clips.get(clip, tmp_path / clip), **fields)
        overrides["voices"] = resolved
    if overrides.get("home") == ".":
        overrides["home"] = tmp_path
    # Constructing checks nothing (a chain builds every backend before it knows which can
    # start); start() reports the problem.
    tts = GptSovitsTTS(make_settings(checkout, clips, **overrides), environ={})
    with pytest.raises(ModelLoadError, match=message):
        await tts.start()
    await tts.aclose()


def _resolved(path: Path, *, absolute_only: bool = False) -> Path:
    return path.absolute() if absolute_only else path.resolve()


async def test_home_and_python_fall_back_to_the_environment(
    checkout: Path, clips: dict[str, Path]
) -> None:
    settings = make_settings(checkout, clips, home=None, python=None)
    environ = {"GPT_SOVITS_HOME": str(checkout), "GPT_SOVITS_PYTHON": sys.executable}
    tts = GptSovitsTTS(settings, environ=environ)
    assert tts.home is None  # nothing is looked up before start()
    home, python = _resolved(checkout), _resolved(Path(sys.executable), absolute_only=True)
    await tts.start()
    try:
        assert (tts.home, tts.python) == (home, python)
    finally:
        await tts.aclose()


async def test_a_start_without_any_voice_is_a_model_load_error(
    checkout: Path, clips: dict[str, Path]
) -> None:
    tts = GptSovitsTTS(make_settings(checkout, clips, voices={}))
    with pytest.raises(ModelLoadError, match="no voice is registered"):
        await tts.start()
    await tts.aclose()


async def test_voices_are_validated_when_registered_and_requested(
    checkout: Path, clips: dict[str, Path]
) -> None:
    tts = GptSovitsTTS(make_settings(checkout, clips))
    with pytest.raises(InvalidInput, match="3-10 s"):
        tts.register_voice("carol", voice(clips["short"]))
    tts.register_voice("carol", voice(clips["other"]))
    assert tts.capabilities.voices == ("carol",)  # the settings' voices are added by start()
    with pytest.raises(InvalidInput, match="unknown voice"):
        await collect(tts.synthesize("Hi.", voice="/etc/passwd"))
    with pytest.raises(EngineUnavailable, match="not started"):
        await collect(tts.synthesize("Hi."))


def test_run_options_cannot_override_what_comes_per_request(
    checkout: Path, clips: dict[str, Path]
) -> None:
    with pytest.raises(ValueError, match="ref_audio_path"):
        GptSovitsTTS(make_settings(checkout, clips), run_options={"ref_audio_path": "/tmp/x.wav"})


def test_the_worker_imports_only_the_standard_library_numpy_and_upstream() -> None:
    tree = ast.parse(WORKER_SCRIPT.read_text())
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    foreign = modules - set(sys.stdlib_module_names) - {"__future__", "numpy"}
    assert foreign == {"TTS_infer_pack"}


# --- per-request language, silence between phrases, fragments-only versions --------------------


async def test_a_request_may_name_its_text_language(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    async with running(checkout, clips, log_path) as tts:
        assert "yue" in tts.capabilities.languages and "auto" in tts.capabilities.languages
        await collect(tts.synthesize("我哋去飲茶。", voice="alice", language="yue"))
        await collect(tts.synthesize("Hello, 你好。", voice="alice", language="auto"))
        await collect(tts.synthesize("Hello again."))
        with pytest.raises(InvalidInput) as info:
            await collect(tts.synthesize("Bonjour.", language="fr"))
    assert info.value.param == "language"
    runs = requests(log_path)
    assert [r["inputs"]["text_lang"] for r in runs] == ["yue", "auto", "en"]
    # the reference clip keeps its own language
    assert {r["inputs"]["prompt_lang"] for r in runs} == {"en"}


def _silent_runs(samples: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of every run of exact zeros longer than half a millisecond (a tone
    crosses zero on single samples)."""
    zero = np.concatenate([[False], samples == 0.0, [False]])
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    runs = [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    return [(start, length) for start, length in runs if length > 16]


@pytest.mark.parametrize("interval", [None, 0.3])
async def test_phrases_spoken_one_after_another_join_without_a_hole(
    checkout: Path, clips: dict[str, Path], log_path: Path, interval: float | None
) -> None:
    # Upstream pads every segment with fragment_interval seconds of zeros (0.3 s unless told);
    # a reply is spoken phrase by phrase, one request each, so padding after a phrase's last
    # segment would be a hole in the reply. Measured here the way a listener hears it: the
    # audio of consecutive phrases, concatenated.
    options = {} if interval is None else {"fragment_interval": interval}
    tts = GptSovitsTTS(
        make_settings(checkout, clips, run_options=options), env={"STUB_LOG": str(log_path)}
    )
    await tts.start()
    try:
        phrases = ["The first phrase.", "The second. And a third."]
        audio = [
            np.concatenate([c.samples for c in await collect(tts.synthesize(p))]) for p in phrases
        ]
    finally:
        await tts.aclose()
    junction = len(audio[0])
    runs = _silent_runs(np.concatenate(audio))
    pause = round((interval or tts.settings.segment_pause_s) * 32_000)
    # inside the second phrase, between its two segments: the configured pause, kept (the
    # tone of the next segment starts on a zero sample: one more)
    assert runs == [(junction + 5 * CHUNK, pause + 1)]
    assert audio[0][-1] != 0.0 and audio[1][-1] != 0.0  # nothing trails either phrase
    gap_ms = max((n for start, n in runs if start == junction), default=0) / 32
    print(
        f"\nsilence between phrases: {gap_ms:.0f} ms (pause between segments {pause / 32:.0f} ms)"
    )
    assert gap_ms <= 150


@pytest.mark.parametrize("version", ["v3", "v4"])
async def test_v3_and_v4_do_not_claim_to_stream_and_ask_for_fragments(
    checkout: Path, clips: dict[str, Path], log_path: Path, version: str
) -> None:
    alice = {"alice": voice(clips["ok"])}
    async with running(checkout, clips, log_path, version=version, voices=alice) as tts:
        assert tts.capabilities.streaming is False
        await collect(tts.synthesize("Hello."))
    inputs = requests(log_path)[0]["inputs"]
    assert (inputs["streaming_mode"], inputs["return_fragment"]) == (False, True)
    v2 = GptSovitsTTS(make_settings(checkout, clips, version="v2"))
    assert v2.capabilities.streaming is True


# --- voices at run time, affinity, pool size ---------------------------------------------------


def _wav_bytes(seconds: float, rate: int = 22_050) -> bytes:
    from pipeline.audio import encode_wav

    t = np.arange(int(seconds * rate)) / rate
    return encode_wav(AudioChunk((0.2 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), rate))


async def test_a_voice_uploaded_as_bytes_is_spoken_and_removed(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    async with running(checkout, clips, log_path) as tts:
        added = tts.add_voice_clip(
            "dora",
            _wav_bytes(4.5),
            transcript="你好。今日天氣好好。",
            language="yue",
        )
        assert "dora" in tts.capabilities.voices
        assert sf.info(str(added.ref_audio)).duration == pytest.approx(4.5, abs=0.01)
        await collect(tts.synthesize("我哋去飲茶。", voice="dora"))
        (run,) = requests(log_path)
        assert run["inputs"]["ref_audio_path"] == str(added.ref_audio)
        assert (run["inputs"]["prompt_lang"], run["inputs"]["text_lang"]) == ("yue", "yue")
        assert tts.remove_voice("dora") is True
        assert not added.ref_audio.exists()
        assert tts.remove_voice("dora") is False
        with pytest.raises(InvalidInput, match="unknown voice"):
            await collect(tts.synthesize("Hi.", voice="dora"))
        with pytest.raises(InvalidInput, match="3-10 s"):
            tts.add_voice_clip("eve", _wav_bytes(2.0), transcript="Hi.", language="en")
        with pytest.raises(InvalidInput):
            tts.add_voice_clip("eve", b"not audio at all", transcript="Hi.", language="en")
        with pytest.raises(InvalidInput, match="prompt_lang 'xx'"):
            tts.add_voice_clip("eve", _wav_bytes(4.0), transcript="Hi.", language="xx")
        assert "eve" not in tts.capabilities.voices


async def test_an_uploaded_voice_is_spoken_only_when_named(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    # Registered before start() (a server restores its stored uploads first), the upload is the
    # book's first voice; a request naming no voice still gets the settings' voice, never it.
    tts = GptSovitsTTS(
        make_settings(checkout, clips, voices={"alice": voice(clips["ok"])}),
        env={"STUB_LOG": str(log_path)},
    )
    upload = tts.add_voice_clip("dora", _wav_bytes(4.0), transcript="Hi.", language="en")
    await tts.start()
    try:
        await collect(tts.synthesize("Hello."))
        (run,) = requests(log_path)
        assert run["inputs"]["ref_audio_path"] == str(clips["ok"].resolve())
        assert tts.remove_voice("alice")
        with pytest.raises(EngineUnavailable, match="name a voice"):  # a chain's next backend
            await collect(tts.synthesize("Hello."))
        await collect(tts.synthesize("Hello.", voice="dora"))
        assert requests(log_path)[-1]["inputs"]["ref_audio_path"] == str(upload.ref_audio)
        await tts.probe()  # nobody hears a probe: the upload serves for it
    finally:
        await tts.aclose()


async def test_a_voice_goes_back_to_the_worker_that_encoded_its_reference(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    # Upstream caches one reference per worker; a worker given another voice encodes it again.
    voices = {
        "alice": voice(clips["ok"]),  # the warm-up voice of both workers
        "bob": voice(clips["other"]),
        "carol": voice(clips["ok"], prompt_text="Another transcript."),
    }
    voices["carol"] = voices["carol"].model_copy(
        update={"ref_audio": clips["long"].parent / "c.wav"}
    )
    _write_clip(voices["carol"].ref_audio, 5.0)
    async with running(checkout, clips, log_path, pool_size=2, voices=voices) as tts:
        for name in ["bob", "bob", "carol", "carol", "bob", "carol"]:
            await collect(tts.synthesize("Hello.", voice=name))
    runs = requests(log_path)
    by_voice: dict[str, set[int]] = {}
    for run in runs:
        by_voice.setdefault(run["inputs"]["ref_audio_path"], set()).add(run["pid"])
    assert all(len(pids) == 1 for pids in by_voice.values())
    assert len(set().union(*by_voice.values())) == 2  # each voice kept its own worker
    warmups = 2
    assert len(events(log_path, "set_ref")) == warmups + 2  # each voice encoded once


def test_pool_size_by_memory_fits_the_free_memory_less_the_reserve() -> None:
    gib = 2**30
    gpu = {"device": "cuda:0", "worker_bytes": 5 * gib, "free_bytes": 70 * gib}
    assert size_by_memory(gpu, max_size=16, reserve_bytes=20 * gib, cpu_count=2) == 11
    assert size_by_memory(gpu, max_size=4, reserve_bytes=20 * gib, cpu_count=2) == 4
    assert size_by_memory(gpu, max_size=16, reserve_bytes=70 * gib, cpu_count=2) == 1
    cpu = {"device": "cpu", "worker_bytes": 4 * gib, "free_bytes": 20 * gib}
    assert size_by_memory(cpu, max_size=16, reserve_bytes=4 * gib, cpu_count=2) == 1
    assert size_by_memory(cpu, max_size=16, reserve_bytes=4 * gib, cpu_count=16) == 5
    assert size_by_memory(cpu, max_size=16, reserve_bytes=0, cpu_count=64) == 6


@pytest.mark.parametrize(("reserve_gib", "expected"), [(0.0, 3), (100_000.0, 1)])
async def test_a_pool_sized_by_memory_starts_as_many_workers_as_fit(
    checkout: Path,
    clips: dict[str, Path],
    log_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reserve_gib: float,
    expected: int,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)  # room for 4 by cores; at most 3 by setting
    overrides = {"pool_size": 0, "pool_max_size": 3, "memory_reserve_gib": reserve_gib}
    async with running(checkout, clips, log_path, **overrides) as tts:
        assert tts.pool_size == expected
        chunks = await collect(tts.synthesize("Hello."))
    assert len(chunks) == 5
    assert len({e["pid"] for e in events(log_path, "load")}) == expected


def test_constructing_checks_nothing(tmp_path: Path) -> None:
    settings = GptSovitsSettings(
        home=tmp_path / "no-checkout",
        python=tmp_path / "no-python",
        t2s_weights=tmp_path / "none.ckpt",
        voices={"x": GptSovitsVoice(ref_audio=tmp_path / "none.wav", prompt_text="x")},
    )
    tts = GptSovitsTTS(settings, environ={})
    assert tts.capabilities.sample_rate == 32_000 and tts.pool_size == 0


async def test_a_chain_serves_a_voice_added_at_run_time_once_refreshed(
    checkout: Path, clips: dict[str, Path], log_path: Path
) -> None:
    tts = GptSovitsTTS(make_settings(checkout, clips), env={"STUB_LOG": str(log_path)})
    chain = FallbackTTS([tts])
    await chain.start()
    try:
        tts.add_voice("erin", voice(clips["other"]))
        with pytest.raises(InvalidInput, match="unknown voice"):
            await collect(chain.synthesize("Hi.", "erin"))  # the chain's list is stale
        chain.refresh_capabilities()
        chunks = await collect(chain.synthesize("Hi.", "erin"))
    finally:
        await chain.aclose()
    assert chunks and requests(log_path)[-1]["inputs"]["ref_audio_path"] == str(
        clips["other"].resolve()
    )
