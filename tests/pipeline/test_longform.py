"""Long inputs cut at silences and sentence ends, and transcripts stitched back in order."""

from __future__ import annotations

import itertools

import numpy as np

from models.vad_silero import SileroVAD
from pipeline.longform import (
    CutPolicy,
    Span,
    plan_chunks,
    speech_probabilities,
    split_sentences,
    stitch,
)
from pipeline.types import Segment, Transcript
from tests.conftest import speak

FRAME = 512
RATE = 16_000
FRAME_S = FRAME / RATE


def _probs(pattern: list[tuple[float, float]]) -> np.ndarray:
    """Probabilities from ``(seconds, probability)`` runs."""
    return np.concatenate([np.full(round(s / FRAME_S), p, np.float32) for s, p in pattern]).astype(
        np.float32
    )


def _plan(probs: np.ndarray, policy: CutPolicy) -> list[Span]:
    return plan_chunks(
        probs,
        total_samples=len(probs) * FRAME,
        frame_samples=FRAME,
        sample_rate=RATE,
        policy=policy,
    )


def test_cuts_in_the_longest_silence_of_the_window() -> None:
    # speech 8 s, short pause 0.4 s, speech 5 s, long pause 1.2 s, speech 10 s
    probs = _probs([(8, 0.9), (0.4, 0.05), (5, 0.9), (1.2, 0.05), (10, 0.9)])
    spans = _plan(probs, CutPolicy(max_seconds=20, min_seconds=5, min_silence_ms=300))
    assert len(spans) == 2
    cut_s = spans[0].end / RATE
    assert 13.4 < cut_s < 14.6  # inside the long pause, not the short one
    assert spans[0].start == 0 and spans[-1].end == len(probs) * FRAME
    assert all(a.end == b.start for a, b in itertools.pairwise(spans))


def test_no_chunk_is_longer_than_the_limit_and_silence_is_marked() -> None:
    pattern: list[tuple[float, float]] = []
    for _ in range(12):
        pattern += [(4, 0.9), (0.5, 0.02)]
    pattern += [(20, 0.0)]  # a silent tail: a chunk with nothing to transcribe
    probs = _probs(pattern)
    spans = _plan(probs, CutPolicy(max_seconds=12, min_seconds=4))
    assert all((s.end - s.start) / RATE <= 12.0 + FRAME_S for s in spans)
    voiced = probs >= 0.5
    for span in spans:  # voiced exactly when it holds a voiced frame
        assert span.voiced == bool(voiced[span.start // FRAME : span.end // FRAME].any())
    assert spans[-1].voiced is False  # the silent tail: nothing to transcribe
    assert sum(s.voiced for s in spans) >= 4


def test_speech_without_pauses_is_cut_at_its_quietest_frame() -> None:
    probs = np.full(round(40 / FRAME_S), 0.95, np.float32)
    quiet = round(28.5 / FRAME_S)
    probs[quiet] = 0.6  # voiced, but the least so near the limit
    spans = _plan(probs, CutPolicy(max_seconds=30, min_seconds=10))
    assert spans[0].end == quiet * FRAME


def test_real_speech_is_cut_only_in_its_pauses() -> None:
    sentences = [
        "The bridge was closed for repairs, so we took the long road through the valley.",
        "She opened the letter slowly and read it twice before saying a word.",
        "The engineers tested the engine for three hours without a single failure.",
        "Children in the village learn to swim in the river every summer.",
        "The museum opens at nine and closes at five on weekdays.",
        "Heavy rain is expected tomorrow, with strong winds along the coast.",
    ]
    parts, speech = [], []
    position = 0
    for text in sentences:
        clip = speak(text, pad_seconds=0.0).samples
        gap = np.zeros(int(0.8 * RATE), np.float32)
        speech.append((position + len(gap), position + len(gap) + len(clip)))
        parts += [gap, clip]
        position += len(gap) + len(clip)
    samples = np.concatenate(parts)
    vad = SileroVAD()
    probs = speech_probabilities(samples, vad)
    spans = plan_chunks(
        probs,
        total_samples=len(samples),
        frame_samples=vad.frame_samples,
        sample_rate=RATE,
        policy=CutPolicy(max_seconds=12, min_seconds=3),
    )
    assert len(spans) >= 2
    for span in spans[:-1]:
        assert not any(start < span.end < end for start, end in speech), "a cut split a sentence"


def test_sentences_are_packed_whole_up_to_the_limit() -> None:
    text = (
        "Dr. Smith arrived at 3.5 o'clock. It rained. "
        "The second paragraph starts here, and it goes on for quite a while longer. End."
    )
    chunks = split_sentences(text, max_chars=60)
    assert chunks[0] == "Dr. Smith arrived at 3.5 o'clock. It rained."
    assert all(len(c) <= 60 for c in chunks)
    assert " ".join(chunks).split() == text.split()


def test_stitch_moves_segments_to_the_recording_time() -> None:
    first = Transcript("Hello there.", True, "en", (Segment("Hello there.", 0.5, 1.5),), 10.0)
    empty = Transcript("", True, "en", (), 5.0)
    third = Transcript(" Bye. ", True, "en", (), 4.0)
    whole = stitch([(0.0, first), (10.0, empty), (15.0, third)], audio_seconds=19.0)
    assert whole.text == "Hello there. Bye."
    assert whole.segments == (Segment("Hello there.", 0.5, 1.5), Segment("Bye.", 15.0, 19.0))
    assert whole.audio_seconds == 19.0 and whole.final
