"""``torchaudio.functional.resample`` on CPU via soxr (see the package docstring for why)."""

from __future__ import annotations

import numpy as np
import soxr
import torch


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int, **_: object) -> torch.Tensor:
    """Resample the last axis of ``waveform`` from ``orig_freq`` to ``new_freq`` Hz.

    Extra keyword arguments of the real function (filter shape, rolloff) are accepted and ignored:
    soxr's high-quality filter stands in for them.
    """
    if orig_freq == new_freq:
        return waveform
    frames = waveform.detach().to("cpu", torch.float32).numpy()
    lead = frames.shape[:-1]
    # soxr takes (frames, channels): fold every leading axis into channels.
    flat = np.ascontiguousarray(frames.reshape(-1, frames.shape[-1]).T)
    out = soxr.resample(flat, orig_freq, new_freq)
    result = torch.from_numpy(np.ascontiguousarray(out.T)).reshape(*lead, out.shape[0])
    return result.to(waveform.device, waveform.dtype)
