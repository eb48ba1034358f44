"""Values that cross stage boundaries: frozen, slotted dataclasses, never dicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]
Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Mono float32 PCM in [-1, 1] at ``sample_rate`` Hz."""

    samples: Float32Array
    sample_rate: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True, slots=True)
class Segment:
    """One timed piece of a transcript (seconds from the start of the audio)."""

    text: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Transcript:
    """STT output. Partials (``final=False``) carry the text so far; the final one carries all."""

    text: str
    final: bool
    language: str | None = None
    segments: tuple[Segment, ...] = ()
    audio_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Usage:
    """Token accounting of one LLM call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of LLM output. The last delta of a stream carries ``usage`` and ``finish_reason``
    (and may have empty ``text``)."""

    text: str
    usage: Usage | None = None
    finish_reason: Literal["stop", "length", "cancelled"] | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling options for one LLM call. ``None`` means the engine's configured default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class STTCapabilities:
    """What an STT backend can do, declared as data."""

    partials: bool = True
    languages: tuple[str, ...] = ()  # empty: any language the model knows


@dataclass(frozen=True, slots=True)
class LLMCapabilities:
    """What an LLM backend can do, declared as data."""

    streaming: bool = True
    context_tokens: int = 2048


@dataclass(frozen=True, slots=True)
class TTSCapabilities:
    """What a TTS backend can do, declared as data."""

    sample_rate: int
    streaming: bool = True
    voices: tuple[str, ...] = field(default_factory=tuple)
    max_input_chars: int = 4096
    languages: tuple[str, ...] = ()
    """Text languages a request may ask for (empty: none; the voice's own language is spoken)."""


@dataclass(frozen=True, slots=True)
class Backends:
    """The backend that served each stage of a turn (a chain names the one that answered)."""

    stt: str
    llm: str
    tts: str


@dataclass(frozen=True, slots=True)
class TurnTimings:
    """Milliseconds of one voice turn, in the latency vocabulary (``pipeline.timing``).

    A field is ``None`` when the stage did not run (e.g. a text-only turn has no STT).
    """

    stt_ms: float | None = None
    llm_ttft_ms: float | None = None
    llm_first_phrase_ms: float | None = None
    llm_total_ms: float | None = None
    tts_ttfb_ms: float | None = None
    tts_total_ms: float | None = None
    total_ms: float | None = None
    endpoint_ms: float | None = None
    v2v_ms: float | None = None
