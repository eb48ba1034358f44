"""GptSovitsTTS driving a REAL upstream GPT-SoVITS checkout (opt-in: ``pytest -m gpt_sovits``).

The stub tests (``test_tts_gpt_sovits.py``) cover the pipe protocol and the pool; only the real
upstream shows whether the worker survives upstream's imports, loaders, version detection, text
front end, streaming and stop behaviour. Weights are random (written by
``tests/gpt_sovits_random_weights.py``): the speech is noise, but every code path runs. Cantonese
(``yue``) is the language whose front end needs nothing from the network. docs/gpt_sovits.md says
how to set up the checkout, its venv and the weights.

Needs ``GPT_SOVITS_HOME`` (the checkout) and ``GPT_SOVITS_PYTHON`` (its venv's interpreter); the
folder ``tests/gpt_sovits_shim`` (a CPU torchaudio stand-in) goes first on the workers'
``PYTHONPATH`` unless ``GPT_SOVITS_NO_SHIM=1`` (a venv with a real torchaudio).
``GPT_SOVITS_MAX_SEC`` (default 1) is the ``--max-sec`` the random weights were written with: a
random GPT never ends a segment early, so each segment is ``2 * max_sec`` seconds of audio.

The workers get an empty ``NUMBA_CACHE_DIR``: the venv is cold for them (librosa's numba
functions compile again), as on a fresh install, and the streaming checks must pass anyway,
because a worker warms up before it counts as ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf

from models.gpt_sovits_process import WORKER_SCRIPT
from models.tts_gpt_sovits import SAMPLE_RATES, GptSovitsTTS
from pipeline.settings import GptSovitsSettings, GptSovitsVoice
from pipeline.types import AudioChunk
from tests.conftest import speak

HOME = os.environ.get("GPT_SOVITS_HOME")
PYTHON = os.environ.get("GPT_SOVITS_PYTHON")
MAX_SEC = float(os.environ.get("GPT_SOVITS_MAX_SEC", "1"))
SHIM = Path(__file__).resolve().parents[1] / "gpt_sovits_shim"
WEIGHTS = "tests/gpt_sovits_random_weights.py"

pytestmark = [
    pytest.mark.gpt_sovits,
    pytest.mark.skipif(
        not (HOME and PYTHON),
        reason="needs a GPT-SoVITS checkout: set GPT_SOVITS_HOME and GPT_SOVITS_PYTHON "
        "(docs/gpt_sovits.md)",
    ),
    pytest.mark.timeout(900),
    # The worker's pipes belong to the event loop that started it: one loop for the module.
    pytest.mark.asyncio(loop_scope="module"),
]

# Where upstream loads each version's weights from when none are configured.
_PRETRAINED = "GPT_SoVITS/pretrained_models"
_DEFAULT_WEIGHTS = {
    "v2": (
        f"{_PRETRAINED}/gsv-v2final-pretrained/s1bert25hz-5kh-longer-epoch=12-step=369668.ckpt",
        f"{_PRETRAINED}/gsv-v2final-pretrained/s2G2333k.pth",
    ),
    "v2Pro": (
        f"{_PRETRAINED}/s1v3.ckpt",
        f"{_PRETRAINED}/v2Pro/s2Gv2Pro.pth",
        f"{_PRETRAINED}/sv/pretrained_eres2netv2w24s4ep4.ckpt",
    ),
}
_SHARED_WEIGHTS = (
    f"{_PRETRAINED}/chinese-hubert-base/model.safetensors",
    f"{_PRETRAINED}/chinese-roberta-wwm-ext-large/model.safetensors",
)
# Cantonese in Chinese characters only: a Latin letter would send that part through upstream's
# English front end, which needs NLTK data that no package ships. Full-width commas on purpose:
# they are what Chinese text uses, and upstream's cut5 splits segments on them.
PROMPT_TEXT = "你好，今日天氣好好。"  # noqa: RUF001
ONE_SEGMENT = "我哋今日去飲茶。"
FOUR_SEGMENTS = "我哋今日去飲茶，跟住去行街。之後返屋企食飯，再睇下電視。"  # noqa: RUF001
# A random model never ends a segment early: each one is 2 * max_sec seconds of audio (max_sec is
# the weights script's --max-sec), so every segment costs about the same to speak.
TWELVE_SEGMENTS = FOUR_SEGMENTS * 3


def _missing_weights(home: Path, version: str) -> list[str]:
    return [p for p in (*_SHARED_WEIGHTS, *_DEFAULT_WEIGHTS[version]) if not (home / p).is_file()]


def _worker_pids() -> set[int]:
    """Our child processes running the worker script (from /proc: no private adapter state)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().decode("utf-8", "replace")
            if ppid == os.getpid() and str(WORKER_SCRIPT) in cmdline:
                pids.add(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def reference_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 5 s of real speech at 22.05 kHz: inside upstream's 3-10 s rule, and off its 32 kHz
    model rate, so the reference goes through the resampler (the torchaudio stand-in) too."""
    audio = speak("The quick brown fox jumps over the lazy dog, and then it runs far away.", 22_050)
    path = tmp_path_factory.mktemp("gpt_sovits") / "reference.wav"
    sf.write(path, audio.samples, audio.sample_rate)
    return path


@pytest_asyncio.fixture(
    scope="module",
    loop_scope="module",
    # Upstream's streaming modes: 2 cuts chunks where a token sounds like a pause (with random
    # weights a chunk may be a whole segment); 3 cuts every 16 tokens.
    params=[("v2", 2), ("v2Pro", 3)],
    ids=["v2-mode2", "v2Pro-mode3"],
)
async def tts(
    request: pytest.FixtureRequest,
    reference_clip: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[GptSovitsTTS]:
    """One started worker of each version in turn (each holds ~3.5 GiB, so never both)."""
    version, mode = request.param
    assert HOME and PYTHON
    home = Path(HOME)
    if missing := _missing_weights(home, version):
        pytest.skip(
            f"{version} weights missing in {home} ({', '.join(missing)}); write random ones with "
            f"$GPT_SOVITS_PYTHON {WEIGHTS} $GPT_SOVITS_HOME --max-sec 1"
        )
    settings = GptSovitsSettings(
        home=home,
        python=Path(PYTHON),
        version=version,
        device="cpu",
        pool_size=1,
        streaming_mode=mode,
        threads=int(os.environ.get("GPT_SOVITS_THREADS", "1")),  # the test machine has 2 cores
        voices={
            "yue": GptSovitsVoice(
                ref_audio=reference_clip,
                prompt_text=PROMPT_TEXT,
                prompt_lang="yue",
                text_lang="yue",
            )
        },
        start_timeout_s=600.0,
        request_timeout_s=120.0,
        # upstream's own fragment_interval: were the padding after a request's last segment
        # sent, two phrases would have 300 ms of silence between them
        segment_pause_s=0.3,
    )
    use_shim = os.environ.get("GPT_SOVITS_NO_SHIM") != "1"
    cold_cache = tmp_path_factory.mktemp(f"numba-{version}")  # a fresh venv's numba cache
    engine = GptSovitsTTS(
        settings,
        env={"NUMBA_CACHE_DIR": str(cold_cache)},
        extra_pythonpath=[SHIM] if use_shim else [],
        run_options={"seed": 1, "top_k": 15},
    )
    started = time.perf_counter()
    await engine.start()
    print(
        f"\n[{version} mode {mode}] start (import, load, warm-up on a cold numba cache): "
        f"{time.perf_counter() - started:.1f} s"
    )
    try:
        yield engine
    finally:
        await engine.aclose()


async def _collect(stream: AsyncIterator[AudioChunk]) -> tuple[list[AudioChunk], float, float]:
    """The chunks, the seconds to the first one and the seconds in all."""
    started = time.perf_counter()
    first = None
    chunks = []
    async for chunk in stream:
        if first is None:
            first = time.perf_counter() - started
        chunks.append(chunk)
    assert first is not None, "no audio at all"
    return chunks, first, time.perf_counter() - started


async def test_streamed_cantonese_arrives_in_chunks_at_the_version_rate(
    tts: GptSovitsTTS,
) -> None:
    version, mode = tts.settings.version, tts.settings.streaming_mode
    chunks, first_s, total_s = await _collect(tts.synthesize(FOUR_SEGMENTS, "yue"))

    assert tts.capabilities.sample_rate == SAMPLE_RATES[version] == 32_000
    assert {c.sample_rate for c in chunks} == {32_000}
    assert len(chunks) >= 4, "four text segments, streamed: expected several chunks"
    samples = np.concatenate([c.samples for c in chunks])
    assert samples.dtype == np.float32
    assert np.isfinite(samples).all()
    assert np.abs(samples).max() <= 1.0
    # Random weights make noise, not silence: a zero codebook or a dropped reference would not.
    assert np.sqrt(np.mean(samples**2)) > 1e-3
    seconds = samples.size / 32_000
    assert first_s < total_s / 2, "the first chunk must come long before the end"
    # Each segment is 2 * max_sec seconds (a random GPT never stops early), the pauses between
    # them segment_pause_s, and nothing trails the last one.
    expected = 4 * 2 * MAX_SEC + 3 * tts.settings.segment_pause_s
    assert expected * 0.75 <= seconds <= expected * 1.25, (seconds, expected)
    assert tts.reported_version == version  # what the worker's upstream says it loaded
    print(
        f"\n[{version} mode {mode}] {len(chunks)} chunks, {seconds:.1f} s of audio; first chunk "
        f"{first_s:.2f} s, total {total_s:.1f} s, RTF {total_s / seconds:.2f}"
    )


async def test_cancel_mid_stream_leaves_the_same_worker_usable(tts: GptSovitsTTS) -> None:
    version, mode = tts.settings.version, tts.settings.streaming_mode
    before = _worker_pids()
    assert len(before) == 1

    stream = tts.synthesize(TWELVE_SEGMENTS, "yue")
    started = time.perf_counter()
    first = await anext(stream)
    first_latency = time.perf_counter() - started
    assert first.samples.size > 0
    await stream.aclose()  # the consumer goes away after the first of many chunks

    # The next request waits until the worker confirms the cancel, then gets the same worker.
    chunks, next_first_s, total_s = await _collect(tts.synthesize(ONE_SEGMENT, "yue"))
    assert chunks and {c.sample_rate for c in chunks} == {32_000}
    assert _worker_pids() == before, "cancel must not kill or replace the worker"
    # The worker stops at upstream's next yield: within one chunk, at most one segment (mode 2
    # with random weights may put a whole segment in one chunk). Had it gone on speaking the
    # other eleven segments, the wait would be about eleven times one segment's time.
    waited = next_first_s - first_latency  # its own first chunk costs about what the first did
    segment_s = total_s - waited
    assert waited < 3 * segment_s
    print(
        f"\n[{version} mode {mode}] first chunk {first_latency:.2f} s, then cancelled; next "
        f"request's first chunk {next_first_s:.2f} s (~{waited:.1f} s of it waiting for the "
        f"cancel), one segment in {segment_s:.1f} s"
    )


def _edge_silence_ms(samples: np.ndarray, *, leading: bool, floor: float = 1e-3) -> float:
    """Milliseconds of near-silence at one end of ``samples`` (at 32 kHz)."""
    loud = np.flatnonzero(np.abs(samples) > floor)
    if loud.size == 0:
        return samples.size / 32
    return float(loud[0] if leading else samples.size - 1 - loud[-1]) / 32


async def test_phrases_spoken_one_after_another_join_without_a_hole(tts: GptSovitsTTS) -> None:
    version, mode = tts.settings.version, tts.settings.streaming_mode
    first, _, _ = await _collect(tts.synthesize(ONE_SEGMENT, "yue"))
    second, _, _ = await _collect(tts.synthesize(ONE_SEGMENT, "yue"))
    end = _edge_silence_ms(np.concatenate([c.samples for c in first]), leading=False)
    start = _edge_silence_ms(np.concatenate([c.samples for c in second]), leading=True)
    print(f"\n[{version} mode {mode}] silence between two phrases: {end + start:.0f} ms")
    assert end + start <= 150


async def test_a_voice_uploaded_as_bytes_speaks_with_a_per_request_language_and_is_removed(
    tts: GptSovitsTTS, reference_clip: Path
) -> None:
    clip = await asyncio.to_thread(reference_clip.read_bytes)
    voice = tts.add_voice_clip("uploaded", clip, transcript=PROMPT_TEXT, language="yue")
    try:
        # auto_yue: upstream detects the language of each part and reads Chinese as Cantonese
        chunks, _, _ = await _collect(tts.synthesize(ONE_SEGMENT, "uploaded", language="auto_yue"))
        assert chunks and {c.sample_rate for c in chunks} == {32_000}
        seconds = sum(c.samples.size for c in chunks) / 32_000
        assert 2 * MAX_SEC * 0.75 <= seconds <= 2 * MAX_SEC * 1.25
    finally:
        assert tts.remove_voice("uploaded")
    assert not voice.ref_audio.exists()
    assert "uploaded" not in tts.capabilities.voices
