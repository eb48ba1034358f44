"""The shipped spoken sets: held-out questions, and utterances with a pause in the middle.

The built-in questions (``benchmarks.data``) are what the pipeline was tuned on, spoken by the
voice that also answers; a latency claim needs speech it has never seen. Two sets ship in
``benchmarks/speech/`` (16 kHz mono FLAC, each ``name.flac`` beside its ``name.txt``), so that
``voxline bench realtime --data heldout`` and ``voxline bench endpoint`` are reproducible:

- ``heldout``: complete spoken questions that are in no other set, in two voices (the packaged
  Piper voice, slower than its default, and eSpeak NG's en-us, a formant synthesizer unlike
  anything Whisper or the VAD was trained on).
- ``pauses``: requests with a silent pause inside ("I'd like to book a table for ... four
  people"), four voices, pauses of 350-1100 ms. Most pauses follow a word that cannot end a
  sentence (a preposition, an article, "and"), as hesitations do; a few follow a word that can
  ("Set a timer ... for ten minutes"), where only the voice could tell. Each half is synthesized
  on its own, the first ending on a comma (so it has a continuing, not a final, intonation), and
  the two are joined with exact silence. Their ``.txt`` is the whole sentence.

Regenerate them (deterministic: eSpeak NG is, and Piper's sampling noise is off)::

    apt-get install -y espeak-ng
    PYTHONPATH=. .venv/bin/python -m benchmarks.speech_sets

It rewrites both folders and ``manifest.tsv`` (file, set, voice, pause in ms, the word before
the pause, text).
"""

from __future__ import annotations

import functools
import io
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import resample, rms_dbfs
from pipeline.types import AudioChunk, Float32Array

ROOT = Path(__file__).parent / "speech"
"""Where the shipped sets live."""

SETS: dict[str, Path] = {"heldout": ROOT / "heldout", "pauses": ROOT / "pauses"}
"""The shipped sets by name (``--data heldout``)."""

RATE = 16_000
PAD_SECONDS = 0.3  # silence before and after each clip, as a microphone would hear it

HELDOUT: tuple[str, ...] = (
    "What is the capital of Italy?",
    "What language is spoken in Brazil?",
    "How many days are there in a leap year?",
    "Which animal is the largest on Earth?",
    "What is the boiling point of water?",
    "Who painted the Mona Lisa?",
    "How do I make a cup of green tea?",
    "What is the tallest mountain in the world?",
    "Can you suggest a name for my dog?",
    "Why do leaves change color in the fall?",
    "What is seven times eight?",
    "Where is the Eiffel Tower?",
    "Which country does this coffee come from?",
    "Who is this book written for?",
)
"""Complete questions, none of them in the built-in set or the tests; the last two end on a
preposition, as English questions may (a lexical end-of-turn judge must not stall on them)."""

PAUSED: tuple[tuple[str, str], ...] = (
    ("I'd like to book a table for", "four people."),
    ("What's the weather going to be like in", "Berlin this weekend?"),
    ("Please add eggs, butter and", "some flour to the list."),
    ("How do I get to the", "train station from here?"),
    ("Set an alarm for", "six thirty in the morning."),
    ("Tell me about the history of", "the Roman empire."),
    ("I need a recipe with", "chicken and rice."),
    ("Could you play something by", "the Beatles?"),
    ("My flight leaves at", "nine, when should I leave home?"),
    ("What is the difference between", "a frog and a toad?"),
    ("Turn off the lights in the", "kitchen, please."),
    ("Can you remind me to", "call my mother tomorrow?"),
    ("Set a timer", "for ten minutes."),
    ("I want to order a pizza", "with extra cheese."),
    ("What time is it", "in Tokyo right now?"),
    ("Send a message to Anna", "saying I will be late."),
)
"""Requests as (before the pause, after it); the last four pause where a sentence could end."""

PAUSES_MS: tuple[int, ...] = (350, 600, 850, 1100)
"""Pause lengths, cycled over the clips (each sentence gets each length in one voice)."""

# (name, engine, voice, speed): eSpeak's speed in words per minute (its default is 175), Piper's
# length scale (above 1 is slower).
HELDOUT_VOICES = (
    ("piper-joe-slow", "piper", "piper-joe-medium", 1.15),
    ("espeak-us", "espeak", "en-us", 165.0),
)
PAUSE_VOICES = (
    ("piper-joe", "piper", "piper-joe-medium", 1.0),
    ("piper-joe-slow", "piper", "piper-joe-medium", 1.15),
    ("espeak-us", "espeak", "en-us", 165.0),
    ("espeak-gb-f", "espeak", "en-gb+f3", 150.0),
)


def espeak(text: str, voice: str, wpm: float) -> AudioChunk:
    """``text`` spoken by eSpeak NG (Debian's ``espeak-ng``; its WAV on stdout)."""
    import soundfile as sf

    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(int(wpm)), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return AudioChunk(np.ascontiguousarray(samples), int(rate))


@functools.cache
def _joe() -> Any:
    from piper import PiperVoice

    from models.weights import packaged_path

    return PiperVoice.load(str(packaged_path("piper-joe-medium", stage="tts")))


def piper(text: str, length_scale: float) -> AudioChunk:
    """``text`` spoken by the packaged Piper voice, without sampling noise."""
    from piper import SynthesisConfig

    config = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(_joe().synthesize(text, syn_config=config))
    samples = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    return AudioChunk(samples, chunks[0].sample_rate)


def trim(samples: Float32Array, *, floor_db: float = 45.0) -> Float32Array:
    """``samples`` without the silence at either end (10 ms frames ``floor_db`` below the
    loudest)."""
    frame = RATE // 100
    levels = [rms_dbfs(samples[i : i + frame]) for i in range(0, len(samples) - frame + 1, frame)]
    loud = [i for i, level in enumerate(levels) if level >= max(levels) - floor_db]
    return samples[loud[0] * frame : (loud[-1] + 1) * frame] if loud else samples


def _speak(text: str, engine: str, voice: str, speed: float) -> Float32Array:
    audio = espeak(text, voice, speed) if engine == "espeak" else piper(text, speed)
    return trim(resample(audio, RATE).samples)


def _write(path: Path, parts: list[Float32Array], text: str) -> None:
    import soundfile as sf

    pad = np.zeros(int(PAD_SECONDS * RATE), dtype=np.float32)
    samples = np.concatenate([pad, *parts, pad])
    samples = samples / max(1.0, float(np.max(np.abs(samples))))  # no clipping
    sf.write(path.with_suffix(".flac"), samples, RATE, subtype="PCM_16")
    path.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")


def main() -> None:
    """Write both sets and the manifest."""
    rows = ["file\tset\tvoice\tpause_ms\tbefore_pause\ttext"]
    for folder in SETS.values():
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.*"):
            old.unlink()
    for name, engine, voice, speed in HELDOUT_VOICES:
        for i, text in enumerate(HELDOUT, 1):
            stem = f"{name}_{i:02d}"
            _write(SETS["heldout"] / stem, [_speak(text, engine, voice, speed)], text)
            rows.append(f"heldout/{stem}.flac\theldout\t{name}\t0\t\t{text}")
    for v, (name, engine, voice, speed) in enumerate(PAUSE_VOICES):
        for i, (before, after) in enumerate(PAUSED, 1):
            pause_ms = PAUSES_MS[(i + v) % len(PAUSES_MS)]  # each sentence: every length once
            first = _speak(before + ",", engine, voice, speed)
            second = _speak(after, engine, voice, speed)
            silence = np.zeros(RATE * pause_ms // 1000, dtype=np.float32)
            text = f"{before} {after}"
            stem = f"{name}_{i:02d}"
            _write(SETS["pauses"] / stem, [first, silence, second], text)
            last_word = before.split()[-1]
            rows.append(f"pauses/{stem}.flac\tpauses\t{name}\t{pause_ms}\t{last_word}\t{text}")
    (ROOT / "manifest.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
