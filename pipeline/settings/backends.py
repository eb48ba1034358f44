"""What every stage's settings share: the backends of a fallback chain.

A stage (STT, LLM, TTS) runs on a chain of backends (``gpu``, ``cpu``, ``hosted``, ``ray``); the
``hosted`` backend is an OpenAI-compatible endpoint, and the chain's deadlines and circuit
breakers are the same knobs for each stage.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

Device = Literal["auto", "cpu", "cuda"]


class HostedSettings(BaseModel):
    """An OpenAI-compatible endpoint used as a stage backend (a second voxline server is one)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    base_url: str | None = None
    """Base URL including ``/v1``, e.g. ``http://127.0.0.1:8001/v1``. Unset: no hosted backend."""
    api_key: SecretStr | None = None
    """Bearer token sent as ``Authorization``; never logged."""
    model: str | None = None
    """Model name sent to the endpoint (defaults per stage: whisper-1, gpt-4o-mini, tts-1)."""
    voice: str | None = None
    """TTS only: the voice name sent to the endpoint."""
    connect_timeout_s: float = 3.0
    """Seconds to establish a connection."""
    timeout_s: float = 30.0
    """Seconds to wait for the response to start (and between streamed chunks)."""
    max_retries: int = 1
    """Retries of a request that failed before any output (connection errors, 429, 5xx)."""
    capacity: int = Field(default=8, ge=1)
    """Calls sent to the endpoint at once; more wait in its queue (``VOXLINE_LIMITS__*``)."""


BackendName = Literal["gpu", "cpu", "hosted", "ray"]
"""``ray``: the stage's Ray Serve deployment (docs/ray.md); the others run in this process or,
for ``hosted``, behind an OpenAI-compatible URL."""


class FallbackSettings(BaseModel):
    """When a stage's chain gives up on a backend, and how it brings it back."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    first_output_timeout_s: float = Field(default=10.0, gt=0.0)
    """Seconds a backend may take to its first output before the next one is tried."""
    gap_timeout_s: float = Field(default=10.0, gt=0.0)
    """Seconds a backend may take between two outputs (a hung engine costs this, not the turn)."""
    failure_threshold: int = Field(default=3, ge=1)
    """Consecutive failures that open a backend's circuit breaker (calls then skip it)."""
    probe_interval_s: float = Field(default=15.0, gt=0.0)
    """Seconds between background health probes of an open backend; a passing probe closes it
    and traffic returns to it without a restart."""
    probe_timeout_s: float = Field(default=60.0, gt=0.0)
    """Seconds one probe may take (a cold start may load weights)."""
    trial_interval_s: float = Field(default=60.0, gt=0.0)
    """Seconds after which one real call may try an open backend whatever its probes say."""
    first_output_budget_s: float | None = Field(default=None, gt=0.0)
    """Rolling p95 time to first output above which a backend is demoted behind the others
    (unset: never)."""
