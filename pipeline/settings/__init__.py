"""The settings tree: one source for every knob.

Every field is an environment variable ``VOXLINE_<SECTION>__<FIELD>`` (nested delimiter ``__``),
e.g. ``VOXLINE_LLM__MAX_TOKENS=64`` or ``VOXLINE_TTS__GPT_SOVITS__POOL_SIZE=2``. Settings are built
once by the entry point (CLI, server factory, benchmark) and passed down; nothing reads a module
global. A ``.env`` file in the working directory is read too.

The root, ``Settings``, is here; its sections live in modules by area, and every one is exported
here (import them from ``pipeline.settings``):

- ``backends``: what the stages share (``HostedSettings``, ``FallbackSettings``, ``Device``,
  ``BackendName``);
- ``audio``, ``stt``, ``llm`` (with the tier ``RouterSettings``), ``tts`` (with the uploaded
  ``VoicesSettings``): the input audio and the three stages;
- ``conversation``: the realtime ``SessionSettings`` and the ``ReplySettings`` phrasing;
- ``serving``: observability, pricing, the state store, limits and the edge;
- ``operations``: jobs, Ray Serve, releases;
- ``kb``: the knowledge base.

A new section goes in the module of its area (or a new one), with one field on ``Settings``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.settings.audio import AudioLimits
from pipeline.settings.backends import BackendName, Device, FallbackSettings, HostedSettings
from pipeline.settings.conversation import ReplySettings, SessionSettings
from pipeline.settings.kb import KBSettings
from pipeline.settings.llm import (
    LLMGpuSettings,
    LLMSettings,
    LLMTierSettings,
    RouterSettings,
    llm_threads,
)
from pipeline.settings.operations import (
    JobSettings,
    RaySettings,
    RayStageSettings,
    ReleaseSettings,
)
from pipeline.settings.serving import (
    EdgeSettings,
    LimitsSettings,
    ObservabilitySettings,
    PricingSettings,
    StateSettings,
)
from pipeline.settings.stt import STTGpuSettings, STTSettings
from pipeline.settings.tts import (
    GptSovitsSettings,
    GptSovitsVoice,
    TTSGpuSettings,
    TTSSettings,
    VoicesSettings,
)

__all__ = [
    "AudioLimits",
    "BackendName",
    "Device",
    "EdgeSettings",
    "FallbackSettings",
    "GptSovitsSettings",
    "GptSovitsVoice",
    "HostedSettings",
    "JobSettings",
    "KBSettings",
    "LLMGpuSettings",
    "LLMSettings",
    "LLMTierSettings",
    "LimitsSettings",
    "ObservabilitySettings",
    "PricingSettings",
    "RaySettings",
    "RayStageSettings",
    "ReleaseSettings",
    "ReplySettings",
    "RouterSettings",
    "STTGpuSettings",
    "STTSettings",
    "SessionSettings",
    "Settings",
    "StateSettings",
    "TTSGpuSettings",
    "TTSSettings",
    "VoicesSettings",
    "llm_threads",
]


class Settings(BaseSettings):
    """All of voxline's settings."""

    model_config = SettingsConfigDict(
        env_prefix="VOXLINE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        use_attribute_docstrings=True,  # field docstrings become descriptions (README table)
    )

    stt: STTSettings = STTSettings()
    """Speech to text."""
    llm: LLMSettings = LLMSettings()
    """Language model."""
    tts: TTSSettings = TTSSettings()
    """Text to speech."""
    audio: AudioLimits = AudioLimits()
    """Input audio limits."""
    session: SessionSettings = SessionSettings()
    """The realtime conversation session."""
    reply: ReplySettings = ReplySettings()
    """How replies are cut into phrases for TTS."""
    observability: ObservabilitySettings = ObservabilitySettings()
    """Logs and traces."""
    pricing: PricingSettings = PricingSettings()
    """The cost ledger's price table."""
    state: StateSettings = StateSettings()
    """The durable state store."""
    limits: LimitsSettings = LimitsSettings()
    """Admission control, backpressure and graceful drain."""
    edge: EdgeSettings = EdgeSettings()
    """API keys, origins, hosts and per-key limits."""
    jobs: JobSettings = JobSettings()
    """Durable jobs."""
    voices: VoicesSettings = VoicesSettings()
    """Voices uploaded through the API (GPT-SoVITS)."""
    ray: RaySettings = RaySettings()
    """Ray Serve deployment."""
    router: RouterSettings = RouterSettings()
    """Which LLM tier answers each turn."""
    kb: KBSettings = KBSettings()
    """The knowledge base (files, vector stores, retrieval, groundedness)."""
    release: ReleaseSettings = ReleaseSettings()
    """Releases: following promotions, the promotion gate, canaries."""
    cache_dir: Path = Path.home() / ".cache" / "voxline"
    """Where derived artefacts (dequantized GGUF weights, ...) are cached."""
    hf_offline: bool = False
    """Never contact a model hub: hub ids must already be in the local cache."""
    demo_enabled: bool = True
    """Serve the Gradio demo at ``/demo`` (a client of this server's own ``/v1/realtime``)."""
