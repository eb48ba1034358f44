"""WhisperSTT on the real packaged whisper tiny.en (CTranslate2 int8), on real speech.

Speech comes from the packaged Piper voice (``tests.conftest.speak``) and from one clip of a real
human voice (CMU ARCTIC, see tests/data/README.md). One model is loaded for the module; tests that
need a fresh engine (load errors, closing) build their own.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import re
import threading
import weakref
from pathlib import Path

import jiwer
import numpy as np
import pytest

from models.stt_whisper import THREAD_NAME, WhisperSTT
from pipeline.audio import decode_audio
from pipeline.errors import (
    EngineOverloaded,
    EngineUnavailable,
    InvalidInput,
    ModelLoadError,
)
from pipeline.settings import AudioLimits, STTSettings
from pipeline.types import AudioChunk, Transcript
from tests.conftest import speak

DATA = Path(__file__).parent.parent / "data"

# Plain sentences with no digits, compounds or tongue twisters: "seven thirty" -> "7.30" and
# "sea shells" -> "seashells" are normalization differences, not recognition errors.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please turn off the kitchen lights before you leave the house.",
    "What is the weather going to be like in Paris tomorrow?",
    "Remind me to call my sister when I get home from work.",
    "The meeting has been moved to Thursday afternoon.",
)


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after lowercasing and stripping punctuation."""
    return float(jiwer.wer(_words(reference), _words(hypothesis)))


def _settings(**overrides: object) -> STTSettings:
    # Two CTranslate2 threads: the machine has two cores, shared with other test runs.
    return STTSettings(cpu_threads=2, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stt() -> WhisperSTT:
    engine = WhisperSTT(_settings())
    engine.load()
    return engine


async def collect(stt: WhisperSTT, audio: AudioChunk, **kwargs: object) -> list[Transcript]:
    return [t async for t in stt.transcribe(audio, **kwargs)]  # type: ignore[arg-type]


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def test_construction_is_cheap_and_named() -> None:
    engine = WhisperSTT(_settings(device="cpu"))
    assert engine.name == "whisper:cpu"
    assert engine.device == "cpu"
    assert engine.compute_type == "int8"
    assert not engine.loaded


async def test_wer_on_synthesized_sentences(stt: WhisperSTT) -> None:
    # Measured: every sentence exact (WER 0) at 16, 8 and 44.1 kHz. Piper samples noise, so
    # each run speaks a little differently; 10% over ~50 words allows a few slips, while a real
    # regression (wrong rate, broken options, truncated audio) lands far above it.
    refs, hyps = [], []
    for sentence in SENTENCES:
        final = (await collect(stt, speak(sentence)))[-1]
        refs.append(sentence)
        hyps.append(final.text)
    corpus_wer = float(jiwer.wer([_words(r) for r in refs], [_words(h) for h in hyps]))
    assert corpus_wer <= 0.10, list(zip(refs, hyps, strict=True))
    for ref, hyp in zip(refs, hyps, strict=True):
        assert wer(ref, hyp) <= 0.25, (ref, hyp)  # no sentence lost wholesale


async def test_real_human_speech(stt: WhisperSTT) -> None:
    audio = decode_audio(
        (DATA / "arctic_a0007.wav").read_bytes(), sample_rate=16_000, limits=AudioLimits()
    )
    final = (await collect(stt, audio))[-1]
    # Measured: exact. Greedy decoding of fixed audio is deterministic; one word in ten of slack.
    assert wer("And you always want to see it in the superlative degree.", final.text) <= 0.1
    assert final.language == "en"
    assert final.audio_seconds == pytest.approx(4.0, abs=0.01)


def _sentences_audio() -> AudioChunk:
    """The five sentences back to back (~17 s): several segments in one 30 s window."""
    clips = [speak(sentence) for sentence in SENTENCES]  # cached: spoken once per session
    return AudioChunk(np.concatenate([c.samples for c in clips]), 16_000)


def _long_clip() -> AudioChunk:
    """Speech, then fifteen minutes of hiss (see test_cancel_stops_the_worker_thread)."""
    # -40 dBFS: loud enough to pass the silence gate, so every 30 s window is encoded and decoded
    hiss = np.random.default_rng(0).normal(0.0, 0.01, 900 * 16_000).astype(np.float32)
    return AudioChunk(np.concatenate([_sentences_audio().samples, hiss]), 16_000)


async def test_partials_then_one_final(stt: WhisperSTT) -> None:
    audio = _sentences_audio()
    out = await collect(stt, audio)
    *partials, final = out
    assert final.final and not any(t.final for t in partials)
    assert len(partials) == len(final.segments) >= 2  # one partial per segment
    for earlier, later in itertools.pairwise(partials):
        assert later.text.startswith(earlier.text)
    assert final.text == " ".join(s.text for s in final.segments) == partials[-1].text
    assert [s.start for s in final.segments] == sorted(s.start for s in final.segments)
    assert all(0.0 <= s.start < s.end <= audio.duration + 0.5 for s in final.segments)
    assert final.language == "en"
    assert final.audio_seconds == pytest.approx(audio.duration)
    assert wer(" ".join(SENTENCES), final.text) <= 0.10


@pytest.mark.parametrize("rate", [8_000, 44_100])
async def test_other_sample_rates_are_resampled(stt: WhisperSTT, rate: int) -> None:
    sentence = "Please turn off the kitchen lights before you leave the house."
    audio = speak(sentence, sample_rate=rate)
    final = (await collect(stt, audio))[-1]
    # Measured: exact at both rates. Without resampling the speech would play at the wrong
    # speed and come out as nonsense; 2 errors in 11 words of slack for Piper's variation.
    assert wer(sentence, final.text) <= 0.2, final.text
    assert final.audio_seconds == pytest.approx(audio.duration, abs=0.01)  # of the 16 kHz copy


async def test_cancel_stops_the_worker_thread(
    stt: WhisperSTT, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Speech, then fifteen minutes of hiss: each 30 s window of it costs a decode, so finishing
    # the clip takes many seconds after the first partial. (Tiled speech would not do: a window
    # whose text repeats looks like a loop and is re-decoded at up to five more temperatures,
    # erratically slow.) Hiss also proves the stop is checked per window: Whisper hears no
    # speech in it, so no segment (and no check between segments) comes from those windows.
    long = _long_clip()
    windows: list[int] = []  # 30 s windows encoded: a spy on the real model, not a fake
    encode = stt._model.encode
    monkeypatch.setattr(stt._model, "encode", lambda *a, **k: windows.append(1) or encode(*a, **k))
    assert not _workers()
    async for transcript in stt.transcribe(long):
        assert not transcript.final
        workers = _workers()
        break
    assert len(workers) == 1
    # The thread finishes the window it is decoding, then sees the stop event. Joined off the
    # loop (the loop must run to finalize the abandoned generators); 60 s only guards a hang.
    await asyncio.to_thread(workers[0].join, 60.0)
    assert not _workers(), "worker thread still decoding after the consumer went away"
    assert 1 <= len(windows) < 10, windows  # of the clip's 31 windows: it stopped, not finished


async def test_empty_audio_is_rejected_before_any_work() -> None:
    engine = WhisperSTT(_settings())
    with pytest.raises(InvalidInput):
        await collect(engine, AudioChunk(np.zeros(0, dtype=np.float32), 16_000))
    assert not engine.loaded
    assert not _workers()


async def test_unknown_language_code_is_invalid_input(stt: WhisperSTT) -> None:
    with pytest.raises(InvalidInput) as info:
        await collect(stt, speak("Hello there."), language="xx")
    assert info.value.param == "language"


async def test_english_only_model_leaves_other_languages_to_another_backend(
    stt: WhisperSTT,
) -> None:
    assert stt.capabilities.languages == ("en",)
    with pytest.raises(EngineUnavailable) as info:
        await collect(stt, speak("Hello there."), language="fr")
    assert info.value.retryable


def test_missing_local_path_is_a_model_load_error() -> None:
    engine = WhisperSTT(_settings(model="/nonexistent/whisper-model"))
    with pytest.raises(ModelLoadError) as info:
        engine.load()
    assert "/nonexistent/whisper-model" in str(info.value)
    assert info.value.backend == "whisper:cpu" and info.value.retryable  # another backend may load


def test_directory_without_weights_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.bin"):
        WhisperSTT(_settings(model=str(tmp_path))).load()


def test_corrupt_weights_are_a_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"\x07" * 4096)  # not a CTranslate2 model
    with pytest.raises(ModelLoadError) as info:
        WhisperSTT(_settings(model=str(tmp_path))).load()
    assert str(tmp_path) in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)  # CTranslate2's error, translated


async def test_unknown_hub_id_offline_is_a_model_load_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import; it is imported by now.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    engine = WhisperSTT(_settings(model="nobody/no-such-whisper"))
    with pytest.raises(ModelLoadError) as info:  # lazily, through transcribe's worker thread
        await collect(engine, speak("Hello there."))
    assert "nobody/no-such-whisper" in str(info.value)
    assert info.value.retryable


def test_cuda_without_a_gpu_is_unavailable() -> None:
    import ctranslate2

    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("a CUDA device is present")
    engine = WhisperSTT(_settings(device="cuda"))
    assert engine.name == "whisper:cuda" and engine.compute_type == "float16"
    with pytest.raises(EngineUnavailable) as info:
        engine.load()
    assert info.value.retryable


def test_ctranslate2_errors_map_to_the_error_tree() -> None:
    # CTranslate2 raises these from C++ mid-decode; they cannot be provoked on demand here.
    cpu = WhisperSTT(_settings(device="cpu"))
    assert isinstance(cpu._translate(RuntimeError("x")), EngineUnavailable)
    assert isinstance(cpu._translate(MemoryError()), EngineOverloaded)
    gpu = WhisperSTT(_settings(device="cuda"))
    oom = gpu._translate(RuntimeError("x"))
    assert isinstance(oom, EngineOverloaded) and oom.retryable


async def test_warmup_loads_and_aclose_stops_work_and_frees_the_model() -> None:
    engine = WhisperSTT(_settings())
    engine.warmup()
    assert engine.loaded
    model = weakref.ref(engine._model)
    transcripts = engine.transcribe(_long_clip())
    first = await anext(transcripts)
    assert not first.final
    await engine.aclose()  # returns once the worker has stopped (or after its timeout)
    assert not _workers()
    # The consumer in flight learns that the engine went away; no truncated "final" reaches it.
    with pytest.raises(EngineUnavailable):
        async for _ in transcripts:
            pass
    gc.collect()
    assert model() is None
    with pytest.raises(EngineUnavailable):
        await collect(engine, speak("Hello there."))
