"""Speech to text: the Whisper engine, its chain and its ``gpu`` backend."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.settings.backends import BackendName, Device, FallbackSettings, HostedSettings


class STTGpuSettings(BaseModel):
    """The ``gpu`` backend of STT: the settings of the stage, with these in place."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    model: str = "large-v3-turbo"
    """Model reference (hub id or faster-whisper size, or a local CTranslate2 directory)."""
    compute_type: str = "float16"
    """CTranslate2 compute type on the GPU."""
    window_floor_ms: int = Field(default=30_000, ge=1000, le=30_000)
    """Shortest encoder window on the GPU (see ``stt.window_floor_ms``): the full 30 s until the
    short window is measured on large-v3-turbo; a GPU encodes 30 s in milliseconds anyway."""


class STTSettings(BaseModel):
    """Speech to text."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    engine: Literal["whisper", "hosted"] = "whisper"
    """Engine of the ``cpu`` backend (``hosted``: the default chain is the hosted backend)."""
    model: str = "packaged:whisper-tiny.en"
    """Model reference: a local CTranslate2 directory, ``packaged:<name>`` or a hub id
    (e.g. ``Systran/faster-whisper-large-v3`` or ``large-v3-turbo``)."""
    device: Device = "auto"
    """Device of the engine when built on its own (a chain sets cpu/cuda per backend)."""
    compute_type: str = "default"
    """CTranslate2 compute type; ``default`` means int8 on CPU and float16 on CUDA."""
    beam_size: int = Field(default=1, ge=1, le=10)
    """Beam width. 1 (greedy) is fastest; 5 is whisper's reference setting."""
    language: str | None = "en"
    """Spoken language code, or ``auto`` (also empty) to detect it (``.en`` models know English
    only)."""
    vad_filter: bool = False
    """Drop non-speech with faster-whisper's Silero VAD before decoding."""
    cpu_threads: int = Field(default=0, ge=0)
    """CTranslate2 intra-op threads on CPU (0: the library's default)."""
    capacity: int = Field(default=1, ge=1)
    """Transcriptions the local engine runs at once, for all sessions and requests together;
    more wait by priority (finals, then speculative ones; partials are dropped instead). 1 on
    a CPU: CTranslate2 runs one Whisper call at a time per model anyway, and batching two
    sessions' clips measured no faster on 2 cores (README, "Overload, backpressure and
    shutdown")."""
    window_margin_ms: int = Field(default=3000, ge=0, le=30_000)
    """Whisper encodes the audio plus this much padding (at least ``window_floor_ms``) instead
    of a fixed 30-second window: a 3 s question costs a third of the time, at the same WER.
    Too little room after the speech and the decoder repeats itself or stops early (measured:
    whisper-base on 10-25 s utterances needs 3 s; tiny.en less)."""
    window_floor_ms: int = Field(default=10_000, ge=1000, le=30_000)
    """The shortest encoder window; 30000 restores Whisper's fixed 30-second window. Below
    about 8 s, tiny.en and base repeat short phrases ("ten of clubs") until cut off."""
    max_tokens_per_second: float = Field(default=12.0, gt=0.0, le=100.0)
    """Cap on decoded tokens per second of audio (plus 16): a decoder stuck in a loop stops
    there. Fast English speech needs about 6."""
    silence_dbfs: float = Field(default=-50.0, ge=-120.0, le=0.0)
    """Audio, or a 30-second window of it, with no 30 ms frame louder than this (RMS) is
    silence: it transcribes to empty text with no decoding (Whisper hallucinates on silence)."""
    file_fallback: bool = True
    """Whisper's temperature fallback for file transcriptions (``/v1/audio/transcriptions``): a
    window that decodes as a loop or improbably is decoded again at higher temperatures.
    Realtime transcriptions never use it (deterministic and bounded)."""
    realtime_deadline_ms: int = Field(default=1000, ge=0)
    """After this long a realtime transcription retries nothing (a window that looped is kept
    as decoded); every window is still decoded once within its token budget, so no words are
    dropped and the time stays proportional to the audio."""
    hosted: HostedSettings = HostedSettings()
    """The ``hosted`` backend: an OpenAI-compatible endpoint."""
    chain: list[BackendName] | None = None
    """Ordered backends, e.g. ``["gpu","cpu","hosted"]``. Unset: ``gpu`` then ``cpu`` on a
    machine with CUDA, else ``cpu``; then ``hosted`` when its base URL is set."""
    fallback: FallbackSettings = FallbackSettings()
    """Deadlines and circuit breaker of the chain."""
    gpu: STTGpuSettings = STTGpuSettings()
    """The ``gpu`` backend (used when the chain names it)."""

    @field_validator("language")
    @classmethod
    def _detect(cls, value: str | None) -> str | None:
        # an env var cannot spell None: "auto" or "" asks whisper to detect the language
        return None if value is None or value.strip().lower() in {"", "auto", "none"} else value
