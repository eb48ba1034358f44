"""Bounds on the audio voxline accepts: uploads and the realtime input alike."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class AudioLimits(BaseModel):
    """Bounds on audio we accept (checked while decoding, never trusted from headers)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    max_bytes: int = 25 * 1024 * 1024
    """Largest encoded upload, in bytes (OpenAI's limit is 25 MB)."""
    max_seconds: float = 600.0
    """Longest decoded duration, in seconds."""
    max_channels: int = 8
    """Most channels in an input file (mixed down to mono)."""
    max_sample_rate: int = 192_000
    """Highest input sample rate."""
