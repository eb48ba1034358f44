"""Make the STT golden set: real human speech plus held-out synthetic speech, and its manifest.

Run from the repository root (needs espeak-ng, ``apt-get install -y espeak-ng``, and pip access
to PyPI for the pocketsphinx source distribution)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/golden/make_stt.py

Real speech (``stt/real/*.flac``, samples unchanged, only re-wrapped from WAV/raw to FLAC):

- ``tests/data/arctic_a0007.wav``: CMU ARCTIC, speaker awb (CMU ARCTIC license);
- from the sdist of ``pocketsphinx==5.1.1`` (``test/data``): ``goforward.raw`` and the five
  ``cards`` clips (CMU Sphinx, BSD-style license), and five LibriVox utterances of *Sense and
  Sensibility* (LibriVox recordings are in the public domain), with the transcripts shipped
  beside them.

Synthetic speech (``stt/synthetic/*.ogg``): ten held-out sentences (none of the benchmark's
built-in questions) in a factorial design, so each condition differs from its reference in one
thing only: every voice at speed 1.0 without noise; two voices at speeds 0.8 and 1.3; two
voices at speed 1.0 under pink noise at 20, 10 and 5 dB SNR and café babble at 10 dB.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.eval.synth import (
    SAMPLE_RATE,
    VOICES,
    babble,
    mix_at_snr,
    pink_noise,
    speak,
    write_clip,
)
from pipeline.types import AudioChunk

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parents[1]
SEED = 1414

SENTENCES: tuple[str, ...] = (
    "What language is spoken in Brazil?",
    "What is the capital of Italy?",
    "Set a timer for twenty five minutes and remind me to check the oven.",
    "How many days are there in a leap year?",
    "Please turn off the lights in the living room.",
    "Who wrote the play Romeo and Juliet?",
    "What's the weather going to be like tomorrow morning?",
    "Convert three hundred grams into ounces.",
    "Can you read me the latest message from my sister?",
    "Why do cats purr when they are happy?",
)
"""Held-out sentences: questions and commands a voice assistant hears, none of them built in."""

BABBLE_SENTENCES: tuple[str, ...] = (
    "I think the train leaves at half past seven but it might be late again.",
    "We should paint the kitchen a lighter colour before the summer.",
    "My brother bought a new bicycle and rides it to work every day.",
    "The museum is closed on Mondays so let us go on Tuesday instead.",
)
"""What the café talkers say (never a test sentence)."""

SPEED_VOICES = ("piper-joe", "espeak-en-us")
NOISE_VOICES = ("piper-joe", "espeak-en-us")
SPEEDS = (0.8, 1.3)
NOISES: tuple[tuple[str, float], ...] = (("pink", 20.0), ("pink", 10.0), ("pink", 5.0))
BABBLE_SNR = 10.0
QUICK_SENTENCES = (1, 6)
"""Sentences of the quick subset, in every condition."""

POCKETSPHINX = "pocketsphinx==5.1.1"
CMU_LICENSE = "CMU ARCTIC license (free for any use; keep the notice): stt/real/LICENSES.md"
SPHINX_LICENSE = "CMU Sphinx BSD-style license (pocketsphinx 5.1.1): stt/real/LICENSES.md"
LIBRIVOX_LICENSE = "public domain (LibriVox recording of a public-domain text)"


def _row(
    clip_id: str, audio: str, text: str, conditions: list[str], quick: bool, **extra: Any
) -> dict[str, Any]:
    return {
        "id": clip_id,
        "audio": audio,
        "text": text,
        "conditions": conditions,
        "quick": quick,
        **extra,
    }


def _sdist(tmp: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-q",
            "-d",
            str(tmp),
            POCKETSPHINX,
        ],
        check=True,
    )
    archive = next(tmp.glob("pocketsphinx-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    return next(p for p in tmp.iterdir() if p.is_dir()) / "test" / "data"


def _flac(src: Path, dest: Path) -> float:
    import soundfile as sf

    if src.suffix == ".raw":
        samples = np.fromfile(src, dtype="<i2").astype(np.float32) / 32768.0
        rate = SAMPLE_RATE
    else:
        samples, rate = sf.read(src, dtype="float32")
    assert rate == SAMPLE_RATE, f"{src}: {rate} Hz"
    write_clip(dest, AudioChunk(np.ascontiguousarray(samples), rate))
    return round(len(samples) / rate, 2)


def real_clips() -> list[dict[str, Any]]:
    """Copy the real recordings into ``stt/real`` and describe them."""
    out = ROOT / "stt" / "real"
    rows = []
    secs = _flac(REPO / "tests/data/arctic_a0007.wav", out / "arctic_a0007.flac")
    text = "And you always want to see it in the superlative degree."
    rows.append(
        _row("real-arctic-a0007", "stt/real/arctic_a0007.flac", text, ["real"], True,
             speaker="cmu-arctic-awb", seconds=secs, license=CMU_LICENSE)
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        data = _sdist(Path(tmp))
        secs = _flac(data / "goforward.raw", out / "sphinx_goforward.flac")
        rows.append(
            _row("real-sphinx-goforward", "stt/real/sphinx_goforward.flac",
                 "go forward ten meters", ["real"], True, speaker="cmu-sphinx-goforward",
                 seconds=secs, license=SPHINX_LICENSE)
        )  # fmt: skip
        cards = (data / "cards" / "cards.transcription").read_text().splitlines()
        for line in cards:
            words = line.split()
            text, name = " ".join(words[1:-2]), words[-1].strip("()")
            secs = _flac(data / "cards" / f"{name}.wav", out / f"sphinx_cards_{name}.flac")
            rows.append(
                _row(f"real-sphinx-cards-{name}", f"stt/real/sphinx_cards_{name}.flac", text,
                     ["real"], name == "005", speaker="cmu-sphinx-cards", seconds=secs,
                     license=SPHINX_LICENSE)
            )  # fmt: skip
        for txt in sorted((data / "librivox").glob("*.txt")):
            utt = txt.stem.rsplit("-", 1)[1]
            secs = _flac(txt.with_suffix(".wav"), out / f"librivox_{utt}.flac")
            rows.append(
                _row(f"real-librivox-{utt}", f"stt/real/librivox_{utt}.flac",
                     " ".join(txt.read_text().split()), ["real"], utt == "0880",
                     speaker="librivox-sense-and-sensibility", seconds=secs,
                     license=LIBRIVOX_LICENSE)
            )  # fmt: skip
        shutil.copy(data.parent.parent / "LICENSE", ROOT / "stt" / "real" / "POCKETSPHINX_LICENSE")
    return rows


def _synthetic_row(
    i: int,
    voice: str,
    speed: float,
    noise: str,
    audio: AudioChunk,
    conditions: list[str],
    **extra: Any,
) -> dict[str, Any]:
    clip_id = f"syn-{voice}-x{speed:g}-{noise}-{i:02d}"
    path = f"stt/synthetic/{clip_id}.ogg"
    write_clip(ROOT / path, audio)
    return _row(
        clip_id,
        path,
        SENTENCES[i],
        ["synthetic", *conditions],
        i in QUICK_SENTENCES,
        voice=voice,
        speed=speed,
        noise=noise,
        seconds=round(audio.duration, 2),
        license="CC0-1.0 (synthesized by make_stt.py)",
        **extra,
    )


def synthetic_clips() -> list[dict[str, Any]]:
    """Speak the held-out sentences in every condition of the design."""
    rng = np.random.default_rng(SEED)
    rows = []
    clean: dict[tuple[str, int], AudioChunk] = {}
    for name, voice in VOICES.items():
        for i, text in enumerate(SENTENCES):
            audio = clean[name, i] = speak(text, voice)
            rows.append(_synthetic_row(i, name, 1.0, "clean", audio, [f"voice={name}"]))
    for name in SPEED_VOICES:
        for speed in SPEEDS:
            for i, text in enumerate(SENTENCES):
                audio = speak(text, VOICES[name], speed)
                rows.append(_synthetic_row(i, name, speed, "clean", audio, [f"speed={speed:g}"]))
    talkers = [speak(t, v).samples for t, v in zip(BABBLE_SENTENCES, VOICES.values(), strict=True)]
    for name in NOISE_VOICES:
        for i in range(len(SENTENCES)):
            speech = clean[name, i].samples
            for kind, snr in [*NOISES, ("babble", BABBLE_SNR)]:
                noise = (
                    pink_noise(len(speech), rng)
                    if kind == "pink"
                    else babble(len(speech), talkers, rng)
                )
                label = f"{kind}-{snr:g}db"
                mixed = AudioChunk(mix_at_snr(speech, noise, snr), SAMPLE_RATE)
                rows.append(
                    _synthetic_row(i, name, 1.0, label, mixed, [f"noise={label}"], snr_db=snr)
                )
    return rows


def main() -> None:
    """Write every clip and ``stt/manifest.jsonl``."""
    rows = real_clips() + synthetic_clips()
    # the speed-1.0 clean clips of the speed and noise voices are every facet's reference
    for row in rows:
        if row.get("speed") == 1.0 and row.get("noise") == "clean":
            if row["voice"] in SPEED_VOICES:
                row["conditions"].append("speed=1")
            if row["voice"] in NOISE_VOICES:
                row["conditions"].append("noise=clean")
    manifest = ROOT / "stt" / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} clips, {sum(r['seconds'] for r in rows):.0f} s -> {manifest}")


if __name__ == "__main__":
    main()
