"""The JSON shapes of the Realtime client events we accept, as strict pydantic models.

Strict: a string where a number belongs is an error, never a coercion (``"500"`` is not a
duration). Unknown fields are ignored, so that clients written against a newer API version still
connect; ``server.realtime_protocol`` decides what each accepted field means, and refuses the
ones the pipeline cannot honour with an error naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TEXT_CHARS = 32_768
"""Longest instructions or message text: far beyond any context window we serve."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class AudioFormat(_Strict):
    """An audio format (GA ``audio.*.format``); only ``audio/pcm`` is served."""

    type: str = "audio/pcm"
    rate: int | None = Field(default=None, ge=8_000, le=192_000)


class ServerVad(_Strict):
    """Turn detection (GA ``audio.input.turn_detection``, beta ``turn_detection``)."""

    type: Literal["server_vad", "semantic_vad"]
    threshold: float | None = Field(default=None, gt=0.0, lt=1.0)
    silence_duration_ms: int | None = Field(default=None, ge=0, le=10_000)
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=5_000)
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None


class Transcription(_Strict):
    """Input transcription options (only ``language`` changes anything here)."""

    model: str | None = None
    language: str | None = None


class AudioInput(_Strict):
    """GA ``audio.input``."""

    format: AudioFormat | None = None
    turn_detection: ServerVad | None = None
    transcription: Transcription | None = None


class VoiceId(_Strict):
    """A custom voice reference (GA ``{"id": ...}``)."""

    id: str


class AudioOutput(_Strict):
    """GA ``audio.output``."""

    format: AudioFormat | None = None
    voice: str | VoiceId | None = None
    speed: float | None = Field(default=None, ge=0.25, le=4.0)


class AudioConfig(_Strict):
    """GA ``audio``."""

    input: AudioInput | None = None
    output: AudioOutput | None = None


Tokens = Annotated[int, Field(ge=1, le=4096)] | Literal["inf"]
"""A token cap: 1 to 4096, or ``"inf"`` (the server's default cap)."""


class SessionFields(_Strict):
    """``session.update``'s ``session``: GA fields, then the beta API's flat ones."""

    type: Literal["realtime", "transcription"] | None = None
    instructions: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    output_modalities: list[Literal["text", "audio"]] | None = None
    max_output_tokens: Tokens | None = None
    audio: AudioConfig | None = None
    tools: list[Any] | None = Field(default=None, max_length=64)
    tool_choice: Any = None
    model: str | None = Field(default=None, max_length=256)
    # the beta API's flat fields
    modalities: list[Literal["text", "audio"]] | None = None
    voice: str | None = None
    speed: float | None = Field(default=None, ge=0.25, le=4.0)
    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    output_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    turn_detection: ServerVad | None = None
    input_audio_transcription: Transcription | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_response_output_tokens: Tokens | None = None


class ContentPart(_Strict):
    """One content part of a message."""

    type: str
    text: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)


class Item(_Strict):
    """A conversation item the client adds: a message, or a function's result."""

    type: str = "message"
    role: str | None = None
    content: list[ContentPart] = Field(default_factory=list, max_length=64)
    call_id: str | None = Field(default=None, max_length=128)
    output: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)


class ResponseParams(_Strict):
    """``response.create``'s ``response``: only what is refused is declared."""

    conversation: str | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    instructions: str | None = None
    max_output_tokens: Tokens | None = None
    temperature: float | None = None
    voice: str | None = None
    audio: dict[str, Any] | None = None
    input: list[Any] | None = None
    tools: list[Any] | None = None


class ClientEvent(_Strict):
    """Any client event (the ones without fields: commit, clear)."""

    event_id: str | None = None


class SessionUpdate(ClientEvent):
    """``session.update``."""

    session: SessionFields


class Append(ClientEvent):
    """``input_audio_buffer.append``."""

    audio: str


class ItemCreate(ClientEvent):
    """``conversation.item.create``."""

    item: Item
    previous_item_id: str | None = None


class ResponseCreate(ClientEvent):
    """``response.create``."""

    response: ResponseParams | None = None


class ResponseCancel(ClientEvent):
    """``response.cancel``."""

    response_id: str | None = None


class Truncate(ClientEvent):
    """``conversation.item.truncate``."""

    item_id: str
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


EVENTS: dict[str, type[ClientEvent]] = {
    "session.update": SessionUpdate,
    "input_audio_buffer.append": Append,
    "input_audio_buffer.commit": ClientEvent,
    "input_audio_buffer.clear": ClientEvent,
    "conversation.item.create": ItemCreate,
    "response.create": ResponseCreate,
    "response.cancel": ResponseCancel,
    "conversation.item.truncate": Truncate,
}
"""The client events we serve (others, e.g. ``conversation.item.delete``, are refused)."""
