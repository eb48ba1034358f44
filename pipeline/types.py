"""Values that cross stage boundaries: frozen, slotted dataclasses, never dicts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]
Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]


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
class FunctionTool:
    """A function the model may call (OpenAI's ``{"type": "function", ...}`` tool).

    Attributes:
        name: The function's name (``[A-Za-z0-9_-]{1,64}``).
        description: When and how to call it, for the model.
        parameters: The JSON schema of its arguments (an object schema).
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True, slots=True)
class ForcedTool:
    """``tool_choice`` naming one function: the model must call it."""

    name: str


ToolChoice = Literal["auto", "none", "required"] | ForcedTool
"""Whether the model may (``auto``), must not (``none``) or must (``required``, or this one
function) call a tool."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete function call the model made.

    Attributes:
        call_id: Its id (``call_...``); the tool's result names it.
        name: The function called.
        arguments: The arguments as JSON text (an object), validated against the schema.
    """

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a function call as the model streams it.

    The first delta of a call has the id and name and (usually) empty ``arguments``; each
    next one adds a piece of the JSON arguments text.

    Attributes:
        index: Which call of this reply (0-based).
        call_id: The call's id.
        name: The function called.
        arguments: The next piece of the arguments text.
    """

    index: int
    call_id: str
    name: str
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of LLM output. The last delta of a stream carries ``usage`` and ``finish_reason``
    (and may have empty ``text``).

    Tool calls ride on the same stream so that engines and consumers that know nothing of tools
    keep working: a delta with ``tool_call`` set has empty ``text``, and the last delta of a
    reply that called functions has ``finish_reason="tool_calls"`` and the complete, validated
    calls in ``tool_calls``.
    """

    text: str
    usage: Usage | None = None
    finish_reason: FinishReason | None = None
    tool_call: ToolCallDelta | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message.

    Attributes:
        role: ``system``, ``user``, ``assistant`` or ``tool`` (a function's result).
        content: The text (may be empty for an assistant message that only calls tools).
        tool_calls: Assistant: the functions it called.
        tool_call_id: Tool: the call this is the result of.
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling options for one LLM call. ``None`` means the engine's configured default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    tools: tuple[FunctionTool, ...] = ()
    """Functions the model may call (empty: a plain text reply)."""
    tool_choice: ToolChoice = "auto"
    """Whether it may, must or must not call one (see ``ToolChoice``)."""


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
    tools: bool = False
    """Whether the backend can call functions (``GenerationParams.tools``)."""


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
