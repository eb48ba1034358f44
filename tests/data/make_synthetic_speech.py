"""Regenerate ``tests/data/synthetic/``: held-out spoken questions in several voices and speeds.

The STT window guard (tests/models/test_whisper_window.py) compares Whisper's short encoder window
with the fixed 30-second one on real speech (``tests/data/real``) and on these. They are held
out: none of the sentences is in the benchmark's built-in set or in the other STT tests, and
four of the five voices are not the packaged Piper voice the benchmark speaks with.

Voices: eSpeak NG (Debian's ``espeak-ng``; formant synthesis, unlike anything Whisper trained on)
in three accents and three speeds, and the packaged Piper voice (joe) slower and faster than its
default. Run from the repository root::

    apt-get install -y espeak-ng
    PYTHONPATH=. .venv/bin/python tests/data/make_synthetic_speech.py

It writes 16 kHz mono 16-bit FLAC files and ``manifest.tsv`` (file, voice, text). eSpeak NG is
deterministic; Piper's noise is switched off, so a rerun gives the same files.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from benchmarks.speech_sets import espeak
from models.weights import packaged_path
from pipeline.audio import resample
from pipeline.types import AudioChunk

OUT = Path(__file__).parent / "synthetic"
RATE = 16_000
PAD_SECONDS = 0.3  # silence around each clip, as the benchmark's clips have

SENTENCES = (
    "What is the capital of Italy?",
    "What language is spoken in Brazil?",
    "Turn the volume down a little, please.",
    "How long does it take to boil an egg?",
    "Can you tell me a joke about cats?",
    "Which planet is closest to the sun?",
    "Add milk and bread to my shopping list.",
    "Who wrote the novel Pride and Prejudice?",
    "Is it going to rain this afternoon?",
    "Play some quiet music for the evening.",
    "How many minutes are there in a day?",
    "Wake me up at seven tomorrow morning.",
)

# (name, engine, voice, speed): eSpeak speed in words per minute (its default is 175); Piper's
# length scale (above 1 is slower).
VOICES = (
    ("espeak-us", "espeak", "en-us", 175.0),
    ("espeak-gb-f-slow", "espeak", "en-gb+f3", 140.0),
    ("espeak-us-m-fast", "espeak", "en-us+m3", 220.0),
    ("espeak-scot", "espeak", "en-gb-scotland", 165.0),
    ("piper-joe-slow", "piper", "piper-joe-medium", 1.25),
    ("piper-joe-fast", "piper", "piper-joe-medium", 0.8),
)


@functools.cache
def _joe() -> Any:
    from piper import PiperVoice

    return PiperVoice.load(str(packaged_path("piper-joe-medium", stage="tts")))


def piper(text: str, length_scale: float) -> AudioChunk:
    """``text`` spoken by the packaged Piper voice, without sampling noise."""
    from piper import SynthesisConfig

    voice = _joe()
    config = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(voice.synthesize(text, syn_config=config))
    samples = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    return AudioChunk(samples, chunks[0].sample_rate)


def main() -> None:
    """Write every (voice, sentence) clip and the manifest."""
    OUT.mkdir(exist_ok=True)
    pad = np.zeros(int(PAD_SECONDS * RATE), dtype=np.float32)
    rows = ["file\tvoice\ttext"]
    for name, engine, voice, speed in VOICES:
        for i, text in enumerate(SENTENCES, 1):
            audio = espeak(text, voice, speed) if engine == "espeak" else piper(text, speed)
            samples = resample(audio, RATE).samples
            samples = samples / max(1.0, float(np.max(np.abs(samples))))  # no clipping
            file = f"{name}_{i:02d}.flac"
            sf.write(OUT / file, np.concatenate([pad, samples, pad]), RATE, subtype="PCM_16")
            rows.append(f"{file}\t{name}\t{text}")
    (OUT / "manifest.tsv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
