"""Sanity checks of a synthesized clip: duration for its text, clipping, silence.

A TTS regression is often not a wrong word but a broken clip: speech squeezed or dragged (a
length or sample-rate bug), a clipped waveform (a gain bug), a clip that is mostly silence, or
audio cut short. Each check is a plain measurement compared with a threshold from
``golden/tts/checks.json``, so a failure names the number that broke it.

Silence is judged relative to the clip's loudest 10 ms frame (``silence_floor_db`` below it, and
never above -60 dBFS), as ``benchmarks.data.speech_end_seconds`` does: a quiet voice is not
silence, and noise 40 dB under the speech is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.types import AudioChunk


@dataclass(frozen=True, slots=True)
class ClipLimits:
    """Thresholds of the checks (the keys of ``golden/tts/checks.json``)."""

    seconds_per_char_min: float = 0.035
    seconds_per_char_max: float = 0.15
    max_clipped_fraction: float = 0.001
    clip_level: float = 0.999
    max_edge_silence_s: float = 0.75
    max_pause_s: float = 1.2
    min_voiced_fraction: float = 0.35
    silence_floor_db: float = 40.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClipLimits:
        """Limits from the checks file's object."""
        spc = data.get("seconds_per_char", {})
        defaults = cls()
        return cls(
            seconds_per_char_min=float(spc.get("min", defaults.seconds_per_char_min)),
            seconds_per_char_max=float(spc.get("max", defaults.seconds_per_char_max)),
            **{
                k: float(data[k])
                for k in (
                    "max_clipped_fraction",
                    "clip_level",
                    "max_edge_silence_s",
                    "max_pause_s",
                    "min_voiced_fraction",
                    "silence_floor_db",
                )
                if k in data
            },
        )


@dataclass(frozen=True, slots=True)
class ClipCheck:
    """The measurements of one clip and the checks it failed (empty: it passed).

    Attributes:
        seconds: clip duration.
        seconds_per_char: voiced duration (first to last voiced frame) per character of text.
        clipped_fraction: share of samples at or beyond ``clip_level``.
        lead_silence_s, trail_silence_s: silence before the first and after the last voiced frame.
        longest_pause_s: the longest silent run between voiced frames.
        voiced_fraction: share of frames between the first and last voiced frame that are voiced.
        failures: names of the failed checks (``duration``, ``clipping``, ``silence``).
    """

    seconds: float
    seconds_per_char: float
    clipped_fraction: float
    lead_silence_s: float
    trail_silence_s: float
    longest_pause_s: float
    voiced_fraction: float
    failures: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return not self.failures


def _voiced_frames(samples: np.ndarray, frame: int, floor_db: float) -> np.ndarray:
    count = len(samples) // frame
    if count == 0:
        return np.zeros(0, dtype=bool)
    frames = samples[: count * frame].astype(np.float64).reshape(count, frame)
    power = np.mean(frames**2, axis=1)
    loudest = float(power.max())
    if loudest <= 0:
        return np.zeros(count, dtype=bool)
    threshold = max(loudest * 10 ** (-floor_db / 10), 10 ** (-60 / 10))
    return np.asarray(power >= threshold)


def _longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def check_clip(audio: AudioChunk, text: str, limits: ClipLimits | None = None) -> ClipCheck:
    """Measure ``audio`` (the speech of ``text``) and name the checks it fails."""
    limits = limits or ClipLimits()
    samples = audio.samples
    frame = max(1, audio.sample_rate // 100)
    frame_s = frame / audio.sample_rate
    voiced = _voiced_frames(samples, frame, limits.silence_floor_db)
    seconds = len(samples) / audio.sample_rate
    clipped = float(np.mean(np.abs(samples) >= limits.clip_level)) if len(samples) else 0.0
    chars = max(1, len(" ".join(text.split())))
    if voiced.any():
        idx = np.flatnonzero(voiced)
        first, last = int(idx[0]), int(idx[-1])
        span = voiced[first : last + 1]
        lead, trail = first * frame_s, seconds - (last + 1) * frame_s
        pause = _longest_run(~span) * frame_s
        voiced_fraction = float(span.mean())
        spoken = (last + 1 - first) * frame_s
    else:
        lead, trail, pause, voiced_fraction, spoken = seconds, 0.0, 0.0, 0.0, 0.0
    per_char = spoken / chars
    failures = []
    if not limits.seconds_per_char_min <= per_char <= limits.seconds_per_char_max:
        failures.append("duration")
    if clipped > limits.max_clipped_fraction:
        failures.append("clipping")
    if (
        voiced_fraction < limits.min_voiced_fraction
        or max(lead, trail) > limits.max_edge_silence_s
        or pause > limits.max_pause_s
    ):
        failures.append("silence")
    return ClipCheck(
        seconds=round(seconds, 3),
        seconds_per_char=round(per_char, 4),
        clipped_fraction=round(clipped, 5),
        lead_silence_s=round(lead, 3),
        trail_silence_s=round(trail, 3),
        longest_pause_s=round(pause, 3),
        voiced_fraction=round(voiced_fraction, 3),
        failures=tuple(failures),
    )
