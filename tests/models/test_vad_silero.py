"""Silero VAD streamed frame by frame on real speech, silence and noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.vad_silero import SileroVAD
from pipeline.errors import InvalidInput, ModelLoadError
from tests.conftest import speak

FRAME = 512


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    model = SileroVAD()
    model.load()
    return model


def frames_of(samples: np.ndarray) -> list[np.ndarray]:
    whole = len(samples) // FRAME * FRAME
    return [samples[i : i + FRAME] for i in range(0, whole, FRAME)]


def probabilities(vad: SileroVAD, samples: np.ndarray) -> np.ndarray:
    vad.reset()
    return np.array([vad.probability(f) for f in frames_of(samples)])


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    return speak("The quick brown fox jumps over the lazy dog.", pad_seconds=0.0).samples


def test_speech_scores_high_and_silence_low(vad: SileroVAD, sentence: np.ndarray) -> None:
    silence = np.zeros(16_000, np.float32)
    probs = probabilities(vad, np.concatenate([silence, sentence, silence]))
    lead = len(silence) // FRAME
    speech = probs[lead + 3 : lead + len(sentence) // FRAME - 3]
    assert speech.mean() > 0.7
    assert (speech > 0.5).mean() > 0.8
    assert probs[:lead].max() < 0.1  # before the speech
    assert probs[-lead + 10 :].max() < 0.1  # well after it (the LSTM needs a few frames)


def test_noise_is_not_speech(vad: SileroVAD) -> None:
    rng = np.random.default_rng(0)
    for level in (0.003, 0.03):  # about -50 and -30 dBFS of white noise
        noise = rng.normal(0.0, level, 16_000 * 2).astype(np.float32)
        assert probabilities(vad, noise).max() < 0.3


def test_streamed_equals_faster_whisper_batched(vad: SileroVAD, sentence: np.ndarray) -> None:
    from faster_whisper.vad import get_vad_model

    samples = sentence[: len(sentence) // FRAME * FRAME]
    batched = get_vad_model()(samples).reshape(-1)
    np.testing.assert_allclose(probabilities(vad, samples), batched, atol=1e-5)


def test_forks_keep_separate_state(vad: SileroVAD, sentence: np.ndarray) -> None:
    alone = probabilities(vad, sentence)
    silence = np.zeros_like(sentence)
    a, b = vad.fork(), vad.fork()
    interleaved_a, interleaved_b = [], []
    for fa, fb in zip(frames_of(sentence), frames_of(silence), strict=True):
        interleaved_a.append(a.probability(fa))
        interleaved_b.append(b.probability(fb))
    np.testing.assert_allclose(interleaved_a, alone, atol=1e-6)
    assert max(interleaved_b) < 0.1


def test_reset_starts_a_new_stream(vad: SileroVAD, sentence: np.ndarray) -> None:
    first = probabilities(vad, sentence)  # resets before
    for f in frames_of(sentence)[:20]:
        vad.probability(f)
    again = probabilities(vad, sentence)
    np.testing.assert_allclose(first, again, atol=1e-6)


def test_wrong_frame_size_is_refused(vad: SileroVAD) -> None:
    with pytest.raises(InvalidInput):
        vad.probability(np.zeros(480, np.float32))
    with pytest.raises(InvalidInput):
        vad.probability(np.zeros((2, 512), np.float32))


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        SileroVAD(tmp_path / "nope.onnx").load()
    assert info.value.stage == "vad"
