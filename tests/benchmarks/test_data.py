"""The built-in spoken questions (synthesized once, cached) and ``--data`` folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.data import (
    PAD_SECONDS,
    QUESTIONS,
    SAMPLE_RATE,
    builtin_clips,
    load_dir,
    speech_end_seconds,
)
from pipeline.audio import encode_wav
from pipeline.errors import InvalidInput
from pipeline.settings import AudioLimits
from pipeline.types import AudioChunk


def test_builtin_clips_are_cached_and_identical(tmp_path: Path) -> None:
    first = builtin_clips(tmp_path, limit=2)
    assert [c.reference for c in first] == list(QUESTIONS[:2])
    assert len(list(tmp_path.glob("*.wav"))) == 2
    again = builtin_clips(tmp_path, limit=2)  # read back from the cache, not synthesized
    for a, b in zip(first, again, strict=True):
        assert a.audio.sample_rate == b.audio.sample_rate == SAMPLE_RATE
        np.testing.assert_array_equal(a.audio.samples, b.audio.samples)
        # the speech ends before the pad and Piper's own quiet tail, not at the end of the file
        assert a.speech_end_s == b.speech_end_s
        assert a.audio.duration - PAD_SECONDS - 0.35 <= a.speech_end_s
        assert a.speech_end_s <= a.audio.duration - PAD_SECONDS


def test_builtin_clips_are_deterministic(tmp_path: Path) -> None:
    # two caches, two syntheses: Piper's sampling noise is off, so the samples are the same
    a = builtin_clips(tmp_path / "a", limit=1)[0]
    b = builtin_clips(tmp_path / "b", limit=1)[0]
    np.testing.assert_array_equal(a.audio.samples, b.audio.samples)


def test_speech_end_ignores_quiet_tails() -> None:
    rate = 16_000
    tone = 0.5 * np.sin(np.arange(rate) / 3).astype(np.float32)  # 1 s loud
    hiss = np.full(rate // 2, 1e-4, np.float32)  # 0.5 s of -80 dBFS after it
    audio = AudioChunk(np.concatenate([tone, hiss]).astype(np.float32), rate)
    assert speech_end_seconds(audio) == pytest.approx(1.0, abs=0.011)
    assert speech_end_seconds(AudioChunk(np.zeros(10, np.float32), rate)) == 0.0


def test_load_dir_reads_wav_and_txt_pairs(tmp_path: Path) -> None:
    rate = 16_000
    tone = AudioChunk((0.3 * np.sin(np.arange(rate) / 4)).astype(np.float32), rate)
    for name in ("b", "a"):
        (tmp_path / f"{name}.wav").write_bytes(encode_wav(tone))
        (tmp_path / f"{name}.txt").write_text(f"  clip {name}\nsecond line ")
    (tmp_path / "lonely.wav").write_bytes(encode_wav(tone))  # no transcript: skipped
    clips = load_dir(tmp_path, AudioLimits())
    assert [c.name for c in clips] == ["a", "b"]
    assert clips[0].reference == "clip a second line"
    assert clips[0].audio.sample_rate == SAMPLE_RATE
    assert clips[0].audio.duration == pytest.approx(1.0, abs=0.01)
    assert len(load_dir(tmp_path, AudioLimits(), limit=1)) == 1


def test_load_dir_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"no name\.wav"):
        load_dir(tmp_path, AudioLimits())
    with pytest.raises(InvalidInput, match="not a directory"):
        load_dir(tmp_path / "missing", AudioLimits())
    (tmp_path / "x.wav").write_bytes(b"not audio at all")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InvalidInput, match=r"x\.wav"):
        load_dir(tmp_path, AudioLimits())
