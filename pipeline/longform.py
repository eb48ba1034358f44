"""Long inputs cut into pieces a stage can take, and the pieces' results put back together.

A 30-minute recording is too long for one STT call to be resumable or parallel, and a chapter
too long for one TTS call, so durable jobs (docs/jobs.md) cut them first:

- audio at silences: the Silero VAD gives each 32 ms frame a speech probability, and the cut
  goes in the middle of the longest silence that leaves a chunk between ``min_seconds`` and
  ``max_seconds`` long (whisper reads 30 s windows, so longer chunks gain nothing). Cutting in
  silence means no word is split, which is what keeps a job's WER at that of its pieces. A
  stretch with no silence at all is cut at its quietest frame near ``max_seconds``. A chunk with
  no voiced frame is marked so and never transcribed (whisper invents words in silence);
- text at sentence ends (the reply path's :class:`~pipeline.phrases.PhraseChunker`, so "Dr." and
  "3.5" do not end a sentence), whole sentences packed up to ``max_chars`` per chunk;
- transcripts back into one: each chunk's segments moved by the chunk's start, texts joined.

Pure functions of their inputs (the VAD is handed in), so a resumed job that stored its plan gets
the same chunks again.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.phrases import PhraseChunker, PhrasePolicy
from pipeline.types import Float32Array, Segment, Transcript
from pipeline.vad import VAD


@dataclass(frozen=True, slots=True)
class Span:
    """A chunk of audio: samples ``[start, end)``, and whether any frame of it is voiced."""

    start: int
    end: int
    voiced: bool


def speech_probabilities(samples: Float32Array, vad: VAD) -> Float32Array:
    """Blocking: the VAD's speech probability of every whole frame of ``samples`` (at the VAD's
    rate); ``vad`` is reset first and must not be shared with another stream meanwhile."""
    vad.reset()
    size = vad.frame_samples
    count = len(samples) // size
    probs = np.empty(count, np.float32)
    for i in range(count):
        probs[i] = vad.probability(samples[i * size : (i + 1) * size])
    vad.reset()
    return probs


@dataclass(frozen=True, slots=True)
class CutPolicy:
    """Where audio may be cut.

    Attributes:
        max_seconds: Longest chunk.
        min_seconds: No cut before a chunk is this long (unless the audio ends).
        min_silence_ms: Silence long enough to cut in.
        threshold: A frame at or above this probability is voiced.
    """

    max_seconds: float = 30.0
    min_seconds: float = 10.0
    min_silence_ms: int = 300
    threshold: float = 0.5

    @property
    def silent_below(self) -> float:
        """Below this a frame is silent (the endpointer's hysteresis, ``pipeline.vad``)."""
        return max(self.threshold - 0.15, 0.01)


def plan_chunks(
    probs: Float32Array,
    *,
    total_samples: int,
    frame_samples: int,
    sample_rate: int,
    policy: CutPolicy | None = None,
) -> list[Span]:
    """Cut ``total_samples`` of audio at silences, given its frames' speech probabilities.

    Returns:
        Consecutive spans covering the whole audio.
    """
    policy = policy or CutPolicy()
    frame_s = frame_samples / sample_rate
    max_frames = max(1, int(policy.max_seconds / frame_s))
    min_frames = min(max_frames, max(1, int(policy.min_seconds / frame_s)))
    total_frames = -(-total_samples // frame_samples)  # the last partial frame counts
    silences = list(_silences(probs, policy, frame_s))
    cuts: list[int] = []  # frame indices
    pos = 0
    while total_frames - pos > max_frames:
        window = [s for s in silences if pos + min_frames <= (s[0] + s[1]) // 2 <= pos + max_frames]
        if window:
            start, end = max(window, key=lambda s: (s[1] - s[0], s[0]))
            cut = (start + end) // 2
        else:  # no silence long enough: the quietest frame of the last seconds before the limit
            low = max(pos + min_frames, pos + max_frames - int(3.0 / frame_s))
            stretch = probs[low : pos + max_frames]
            cut = low + int(np.argmin(stretch)) if len(stretch) else pos + max_frames
        cuts.append(cut)
        pos = cut
    bounds = [0, *(c * frame_samples for c in cuts), total_samples]
    voiced = probs >= policy.threshold
    return [
        Span(a, b, bool(voiced[a // frame_samples : -(-b // frame_samples)].any()))
        for a, b in itertools.pairwise(bounds)
        if b > a
    ]


def _silences(probs: Float32Array, policy: CutPolicy, frame_s: float) -> Iterator[tuple[int, int]]:
    """``(first, end)`` frame ranges of the silent runs at least ``min_silence_ms`` long."""
    need = max(1, round(policy.min_silence_ms / 1000 / frame_s))
    silent = np.concatenate([[False], probs < policy.silent_below, [False]])
    edges = np.flatnonzero(np.diff(silent.astype(np.int8)))
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        if end - start >= need:
            yield int(start), int(end)


def split_sentences(text: str, max_chars: int) -> list[str]:
    """``text`` as chunks of whole sentences, each at most ``max_chars`` long (a longer sentence
    is cut at a clause or a space, as the phrase chunker cuts a long phrase)."""
    never = 10**9  # clause boundaries only matter once a sentence outgrows max_chars
    chunker = PhraseChunker(
        PhrasePolicy(first_min_words=never, min_words=never, max_chars=max_chars, first_max_words=0)
    )
    sentences = [*chunker.feed(text), *chunker.flush()]
    chunks: list[str] = []
    for sentence in sentences:
        if chunks and len(chunks[-1]) + 1 + len(sentence) <= max_chars:
            chunks[-1] += " " + sentence
        else:
            chunks.append(sentence)
    return chunks


def stitch(parts: Sequence[tuple[float, Transcript]], *, audio_seconds: float) -> Transcript:
    """One final transcript from ``(chunk start in seconds, chunk transcript)`` pairs in order.

    Segments are moved to the whole recording's time; a chunk without segments becomes one
    segment spanning its audio, so subtitles still cover it.
    """
    texts: list[str] = []
    segments: list[Segment] = []
    language: str | None = None
    for offset, part in parts:
        text = part.text.strip()
        if not text:
            continue
        texts.append(text)
        language = language or part.language
        if part.segments:
            segments += [
                Segment(s.text, round(s.start + offset, 3), round(s.end + offset, 3))
                for s in part.segments
            ]
        else:
            segments.append(Segment(text, round(offset, 3), round(offset + part.audio_seconds, 3)))
    return Transcript(
        " ".join(texts),
        final=True,
        language=language,
        segments=tuple(segments),
        audio_seconds=audio_seconds,
    )
