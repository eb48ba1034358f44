"""TTS clip checks: a real Piper clip passes; clipped, silent, cut and gappy clips are caught."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.eval.audio_checks import ClipLimits, check_clip
from benchmarks.eval.golden import Golden
from pipeline.types import AudioChunk
from tests.conftest import speak

TEXT = "Please hold the power button for ten seconds until the light flashes."


@pytest.fixture(scope="module")
def clip() -> AudioChunk:
    return speak(TEXT)


@pytest.fixture(scope="module")
def limits() -> ClipLimits:
    return ClipLimits.from_json(Golden().tts_checks())


def test_a_real_piper_clip_passes(clip: AudioChunk, limits: ClipLimits) -> None:
    check = check_clip(clip, TEXT, limits)
    assert check.passed, check
    assert limits.seconds_per_char_min < check.seconds_per_char < limits.seconds_per_char_max
    assert check.voiced_fraction > 0.6
    assert check.clipped_fraction < limits.max_clipped_fraction  # Piper peaks at full scale


def test_a_clipped_clip_fails_clipping(clip: AudioChunk, limits: ClipLimits) -> None:
    loud = np.clip(clip.samples * 20, -1.0, 1.0).astype(np.float32)
    check = check_clip(AudioChunk(loud, clip.sample_rate), TEXT, limits)
    assert "clipping" in check.failures and check.clipped_fraction > 0.01


def test_a_silent_clip_fails_silence_and_duration(clip: AudioChunk, limits: ClipLimits) -> None:
    silent = AudioChunk(np.zeros_like(clip.samples), clip.sample_rate)
    check = check_clip(silent, TEXT, limits)
    assert {"silence", "duration"} <= set(check.failures)
    assert check.voiced_fraction == 0.0


def test_a_clip_cut_short_fails_duration(clip: AudioChunk, limits: ClipLimits) -> None:
    cut = AudioChunk(clip.samples[: len(clip.samples) // 4], clip.sample_rate)
    check = check_clip(cut, TEXT, limits)
    assert check.failures == ("duration",)
    assert check.seconds_per_char < limits.seconds_per_char_min


def test_long_silences_inside_or_around_fail_silence(clip: AudioChunk, limits: ClipLimits) -> None:
    rate = clip.sample_rate
    half = len(clip.samples) // 2
    gap = np.zeros(2 * rate, dtype=np.float32)
    gappy = AudioChunk(np.concatenate([clip.samples[:half], gap, clip.samples[half:]]), rate)
    assert "silence" in check_clip(gappy, TEXT, limits).failures
    trailing = AudioChunk(np.concatenate([clip.samples, gap]), rate)
    check = check_clip(trailing, TEXT, limits)
    assert "silence" in check.failures and check.trail_silence_s > 1.5


def test_quiet_noise_under_speech_is_not_speech(clip: AudioChunk, limits: ClipLimits) -> None:
    rng = np.random.default_rng(0)
    hiss = (rng.standard_normal(len(clip.samples)) * 1e-4).astype(np.float32)  # ~ -80 dBFS
    assert check_clip(AudioChunk(clip.samples + hiss, clip.sample_rate), TEXT, limits).passed
