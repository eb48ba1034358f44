"""Shared fixtures: real speech synthesized by the packaged Piper voice (no system packages)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest

from models.weights import packaged_path
from pipeline.audio import resample
from pipeline.types import AudioChunk

# `postgres` / `postgres_url`: a real Postgres on loopback, for any test that needs one
pytest_plugins = ("tests.postgres",)


def pytest_configure(config: pytest.Config) -> None:
    # The CPU LLM engine defaults to llama.cpp when its extra is installed; the suite runs on the
    # always-installed transformers engine (thread names and backends are asserted), and the
    # llama.cpp engine has its own tests.
    os.environ.setdefault("VOXLINE_LLM__ENGINE", "transformers")


@functools.cache
def _piper_voice():  # type: ignore[no-untyped-def]
    from piper import PiperVoice

    return PiperVoice.load(str(packaged_path("piper-joe-medium", stage="tts")))


@functools.cache
def speak(text: str, sample_rate: int = 16_000, pad_seconds: float = 0.3) -> AudioChunk:
    """Speech for ``text`` from the packaged Piper voice, with a little silence around it."""
    from piper import SynthesisConfig

    # no sampled noise: the same text is the same speech in every test, whatever the order
    quiet = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(_piper_voice().synthesize(text, syn_config=quiet))
    samples = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    audio = resample(AudioChunk(samples, chunks[0].sample_rate), sample_rate)
    pad = np.zeros(int(pad_seconds * sample_rate), dtype=np.float32)
    return AudioChunk(np.concatenate([pad, audio.samples, pad]), sample_rate)


@pytest.fixture(scope="session")
def spoken_question() -> AudioChunk:
    """A short spoken question at 16 kHz."""
    return speak("What is the capital of France?")


@pytest.fixture
def wav_file(tmp_path: Path, spoken_question: AudioChunk) -> Path:
    """The spoken question written as a 16-bit wav file."""
    from pipeline.audio import encode_wav

    path = tmp_path / "question.wav"
    path.write_bytes(encode_wav(spoken_question))
    return path
