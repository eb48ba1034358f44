"""The commands a realtime client's events become: what the ``Session`` is asked to do.

Frozen values, one per client event type the pipeline acts on, made by
``server.realtime_protocol.ClientEventParser`` and applied in order by the connection
(``server.realtime_connection``). ``UpdateSession`` is merged into the configuration current when
it is applied, not when it was parsed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from pipeline.file_search import FileSearch
from pipeline.session_config import SessionConfig, TurnDetection
from pipeline.types import FunctionTool, ToolChoice


@dataclass(frozen=True, slots=True)
class TurnDetectionPatch:
    """The server VAD fields a ``session.update`` set (``None``: unchanged)."""

    threshold: float | None = None
    silence_duration_ms: int | None = None
    prefix_padding_ms: int | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


@dataclass(frozen=True, slots=True)
class UpdateSession:
    """``session.update``, normalized from the GA or the beta shape; ``None`` leaves a field as it
    is. It is merged into the configuration current when it is applied (``changes``), not when it
    was parsed: updates queued behind each other build on each other.

    Attributes:
        max_tokens: A token cap, or ``"inf"`` for the server's default cap.
        turn_detection: Server VAD fields to change, or ``"off"`` for manual turns.
        language: STT language; ``""`` asks the engine to detect it.
        file_search: The ``file_search`` tool of ``session.tools``; ``"off"``: tools were set
            without one (retrieval stops).
    """

    instructions: str | None = None
    voice: str | None = None
    speed: float | None = None
    temperature: float | None = None
    max_tokens: int | Literal["inf"] | None = None
    turn_detection: TurnDetectionPatch | Literal["off"] | None = None
    language: str | None = None
    input_sample_rate: int | None = None
    output_sample_rate: int | None = None
    tools: tuple[FunctionTool, ...] | None = None
    tool_choice: ToolChoice | None = None
    tier: str | None = None
    file_search: FileSearch | Literal["off"] | None = None

    def changes(self, current: SessionConfig, default_vad: TurnDetection) -> dict[str, object]:
        """Keyword arguments for ``Session.update`` (``SessionConfig`` field names).

        Args:
            current: The session's configuration now.
            default_vad: Server VAD as configured on the server, the base when a client turns
                server VAD back on.
        """
        out: dict[str, object] = {}
        for name in ("instructions", "voice", "speed", "input_sample_rate", "output_sample_rate"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        if self.language is not None:
            out["language"] = self.language or None
        if self.tools is not None:
            out["tools"] = self.tools
        if self.tool_choice is not None:
            out["tool_choice"] = self.tool_choice
        if self.tier is not None:
            out["tier"] = self.tier or None  # "": a model that is no tier, the router decides
        if self.file_search is not None:
            out["file_search"] = None if self.file_search == "off" else self.file_search
        if self.temperature is not None or self.max_tokens is not None:
            params = current.params
            if self.temperature is not None:
                params = dataclasses.replace(params, temperature=self.temperature)
            if self.max_tokens is not None:
                cap = None if self.max_tokens == "inf" else self.max_tokens
                params = dataclasses.replace(params, max_tokens=cap)
            out["params"] = params
        if self.turn_detection == "off":
            out["turn_detection"] = None
        elif self.turn_detection is not None:
            given = {
                f.name: v
                for f in dataclasses.fields(self.turn_detection)
                if (v := getattr(self.turn_detection, f.name)) is not None
            }
            out["turn_detection"] = dataclasses.replace(
                current.turn_detection or default_vad, **given
            )
        return out


@dataclass(frozen=True, slots=True)
class AppendAudio:
    """``input_audio_buffer.append``: pcm16 little-endian mono at the session's input rate."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class CommitAudio:
    """``input_audio_buffer.commit``."""


@dataclass(frozen=True, slots=True)
class ClearAudio:
    """``input_audio_buffer.clear``."""


@dataclass(frozen=True, slots=True)
class AddUserText:
    """``conversation.item.create`` with a user message of text parts (joined by newlines)."""

    text: str


@dataclass(frozen=True, slots=True)
class AddToolOutput:
    """``conversation.item.create`` with a ``function_call_output``: a function's result."""

    call_id: str
    output: str


@dataclass(frozen=True, slots=True)
class CreateResponse:
    """``response.create``."""


@dataclass(frozen=True, slots=True)
class CancelResponse:
    """``response.cancel`` (``response_id``: only if it is the active one)."""

    response_id: str | None


@dataclass(frozen=True, slots=True)
class TruncateItem:
    """``conversation.item.truncate``."""

    item_id: str
    audio_end_ms: int


Command = (
    UpdateSession
    | AppendAudio
    | CommitAudio
    | ClearAudio
    | AddUserText
    | AddToolOutput
    | CreateResponse
    | CancelResponse
    | TruncateItem
)
