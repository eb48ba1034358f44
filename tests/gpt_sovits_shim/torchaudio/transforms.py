"""``torchaudio.transforms.Resample`` as a module around the soxr resampler."""

from __future__ import annotations

import torch

from .functional import resample


class Resample(torch.nn.Module):
    """Resample from ``orig_freq`` to ``new_freq`` Hz (``.to(device)`` works like any module)."""

    def __init__(self, orig_freq: int = 16000, new_freq: int = 16000, **_: object) -> None:
        super().__init__()
        self.orig_freq = int(orig_freq)
        self.new_freq = int(new_freq)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Resample the last axis of ``waveform``."""
        return resample(waveform, self.orig_freq, self.new_freq)
