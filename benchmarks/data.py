"""The benchmark's inputs: spoken questions with reference texts, and replies to speak.

The built-in set is synthesized with the packaged Piper voice with its sampling noise off, so it is
the same on every run and machine and needs no download; each clip is cached on disk keyed by its
text and the voice, so only the first run pays for synthesis. Synthetic speech flatters an STT,
so ``--data DIR`` takes a user's own recordings (``name.wav`` beside ``name.txt``) instead.

Every clip carries where its speech ends (the last voiced 10 ms frame, found by energy) because
voice-to-voice latency is measured from the end of speech, not from the end of the file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.audio import decode_audio, resample, rms_dbfs
from pipeline.errors import InvalidInput
from pipeline.settings import AudioLimits
from pipeline.types import AudioChunk

SAMPLE_RATE = 24_000
"""Rate of every clip: what a realtime client sends (OpenAI Realtime pcm16)."""

VOICE = "piper-joe-medium"
"""The packaged voice that speaks the built-in questions."""

PAD_SECONDS = 0.3
"""Silence before and after each built-in question, as a microphone would hear it."""

AnswerLength = Literal["short", "medium", "long"]

PROMPTS: tuple[tuple[str, AnswerLength], ...] = (
    ("What is the capital of France?", "short"),
    ("What time does the sun usually rise in summer?", "medium"),
    ("What is 12 plus 7?", "short"),
    ("How many legs does a spider have?", "short"),
    ("Why is the sky blue?", "medium"),
    ("Can you recommend a good book to read this weekend?", "medium"),
    ("Tell me a fun fact about octopuses.", "medium"),
    ("How far away is the moon from the Earth?", "short"),
    ("What should I cook for dinner tonight?", "medium"),
    ("How do you say good morning in Spanish?", "short"),
    ("Explain step by step how to bake a loaf of bread.", "long"),
    ("Tell me a story about a dragon who learns to cook.", "long"),
    ("Describe the water cycle in detail.", "long"),
    ("Give me five tips for sleeping better and explain each one.", "long"),
)
"""Built-in spoken questions (also their reference transcripts), each with the length of answer
it asks for. The long ones are there so the naive pipeline's cost of waiting for a whole reply
shows: with one-sentence replies, streaming and naive are close by construction. Quick runs take
the first three: a one-sentence answer, one of a few clauses and digits in the question."""

QUESTIONS: tuple[str, ...] = tuple(text for text, _ in PROMPTS)
"""The built-in questions' texts."""

ANSWER_LENGTH: dict[str, AnswerLength] = dict(PROMPTS)
"""The answer length each built-in question asks for."""

REPLIES: tuple[str, ...] = (
    "The capital of France is Paris.",
    "A spider has 8 legs.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Sure, here is a quick tip: drink a glass of water before every meal.",
    "The moon is about 384,000 kilometers away from the Earth.",
    "Octopuses have three hearts and blue blood.",
    "I would recommend a short novel, something light and fun.",
    "Good morning in Spanish is buenos dias.",
)
"""Reply-like sentences for the TTS scenario (round-trip intelligibility)."""


@dataclass(frozen=True, slots=True)
class Clip:
    """One spoken input with its reference transcript.

    Attributes:
        name: a short id (file stem or ``q01``...).
        audio: mono float32 at ``SAMPLE_RATE``.
        reference: what is said.
        speech_end_s: seconds from the start of ``audio`` to the end of the last voiced frame.
        answer_length: the length of answer it asks for (built-in questions; ``None``: unknown).
    """

    name: str
    audio: AudioChunk
    reference: str
    speech_end_s: float
    answer_length: AnswerLength | None = None


def speech_end_seconds(audio: AudioChunk, *, frame_ms: int = 10, floor_db: float = 40.0) -> float:
    """End of the last frame within ``floor_db`` of the loudest frame (and above -60 dBFS).

    Relative to the loudest frame, so a quiet recording is judged like a loud one.
    """
    frame = max(1, audio.sample_rate * frame_ms // 1000)
    count = len(audio.samples) // frame
    if count == 0:
        return 0.0
    levels = [rms_dbfs(audio.samples[i * frame : (i + 1) * frame]) for i in range(count)]
    threshold = max(max(levels) - floor_db, -60.0)
    voiced = [i for i, level in enumerate(levels) if level >= threshold]
    return 0.0 if not voiced else (voiced[-1] + 1) * frame / audio.sample_rate


def _clip_key(text: str) -> str:
    blob = f"{VOICE}\0noiseless\0{SAMPLE_RATE}\0{PAD_SECONDS}\0{text}".encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _synthesize(text: str) -> AudioChunk:
    from piper import PiperVoice, SynthesisConfig  # deferred: loads onnxruntime

    from models.weights import packaged_path

    voice = PiperVoice.load(str(packaged_path(VOICE, stage="tts")))
    # Piper samples noise (pitch, durations) on every call; without it the same text gives the
    # same samples on every run, so the built-in set is deterministic, cache or no cache.
    noiseless = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(voice.synthesize(text, syn_config=noiseless))
    samples = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    speech = resample(AudioChunk(samples, chunks[0].sample_rate), SAMPLE_RATE)
    pad = np.zeros(int(PAD_SECONDS * SAMPLE_RATE), dtype=np.float32)
    return AudioChunk(np.concatenate([pad, speech.samples, pad]), SAMPLE_RATE)


def _cached_speech(text: str, cache_dir: Path) -> AudioChunk:
    import soundfile as sf

    path = cache_dir / f"{_clip_key(text)}.wav"
    if path.is_file():
        samples, rate = sf.read(path, dtype="float32")
        return AudioChunk(np.ascontiguousarray(samples), int(rate))
    audio = _synthesize(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    # float wav: the cached clip is bit-identical to the one synthesized, run after run
    sf.write(partial, audio.samples, audio.sample_rate, subtype="FLOAT", format="WAV")
    partial.replace(path)
    return audio


def builtin_clips(cache_dir: Path, limit: int | None = None) -> list[Clip]:
    """The built-in questions as clips, synthesized once and cached under ``cache_dir``."""
    clips = []
    for i, text in enumerate(QUESTIONS[:limit], start=1):
        audio = _cached_speech(text, cache_dir)
        clips.append(Clip(f"q{i:02d}", audio, text, speech_end_seconds(audio), ANSWER_LENGTH[text]))
    return clips


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
"""Audio files ``load_dir`` reads (each beside its ``.txt``)."""


def data_dir(data: str) -> Path:
    """``--data``: a folder, or the name of a shipped set (``heldout``, ``pauses``; see
    ``benchmarks.speech_sets``)."""
    from benchmarks.speech_sets import SETS

    path = Path(data)
    return SETS[data] if data in SETS and not path.exists() else path


def load_dir(directory: Path, limits: AudioLimits, limit: int | None = None) -> list[Clip]:
    """The ``name.wav`` (or ``.flac``...) + ``name.txt`` pairs in ``directory``, by name.

    Raises:
        InvalidInput: not a directory, no pairs in it, or audio that cannot be decoded.
    """
    if not directory.is_dir():
        raise InvalidInput(f"{directory}: not a directory", param="data")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    pairs = [(w, w.with_suffix(".txt")) for w in files]
    pairs = [(w, t) for w, t in pairs if t.is_file()]
    if not pairs:
        raise InvalidInput(f"{directory}: no name.wav + name.txt pairs", param="data")
    clips = []
    for wav, txt in pairs[:limit]:
        try:
            audio = decode_audio(wav.read_bytes(), sample_rate=SAMPLE_RATE, limits=limits)
        except InvalidInput as exc:
            raise InvalidInput(f"{wav}: {exc}", param="data") from exc
        reference = " ".join(txt.read_text(encoding="utf-8").split())
        clips.append(Clip(wav.stem, audio, reference, speech_end_seconds(audio)))
    return clips


def replies(limit: int | None = None) -> list[str]:
    """Reply-like sentences for the TTS scenario."""
    return list(REPLIES[:limit])
