"""A CPU stand-in for the three torchaudio calls upstream GPT-SoVITS makes at inference.

No torchaudio build matches the CPU torch wheel this project pins, and upstream imports it at
import time. Inference needs only ``torchaudio.load`` (the reference clip),
``transforms.Resample`` and ``functional.resample``; soundfile and soxr do both on CPU. Put the
folder holding this package first on the GPT-SoVITS worker's ``PYTHONPATH``; on a GPU host install
the torchaudio that matches its torch instead.
"""

from __future__ import annotations

from pathlib import Path

import soundfile
import torch

from . import functional, transforms

__all__ = ["functional", "load", "transforms"]


def load(path: str | Path) -> tuple[torch.Tensor, int]:
    """Read an audio file as float32 ``(channels, frames)`` and its sample rate."""
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy()), int(rate)
