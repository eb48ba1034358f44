"""Client events of the OpenAI Realtime API, validated into commands for a ``Session``.

The WebSocket route only moves messages; everything about the wire format of what the client
sends lives here, as pure functions, so each rule is tested without a socket. The server events
going the other way are built in ``server.realtime_events``.

We follow the GA API (``session.update`` with ``{"type": "realtime", "audio": {...}}``) and accept
the beta API's flat session fields too (``voice``, ``input_audio_format``, ``turn_detection``...),
so clients of either generation connect unchanged. Validation is strict about types (a string
where a number belongs is an error, never a coercion) and explicit about what the pipeline cannot
do (text-only output, G.711 audio, per-response overrides): those are errors naming the
field, never silently dropped. Fields that change nothing we do (``tracing``, ``noise_reduction``,
``include``...) and fields we do not know are ignored, so that clients written against a newer API
version still connect.

The commands it makes are the values of ``server.realtime_commands``.

Every problem is an ``InvalidInput`` carried by ``BadClientEvent`` with the client's
``event_id``, which the route echoes in the ``error`` event; the session stays open.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from pipeline.errors import InvalidInput
from pipeline.file_search import FileSearch, file_search_of
from pipeline.tool_calls import parse_tool_choice, parse_tools
from server import realtime_schema as wire
from server.realtime_commands import (
    AddToolOutput,
    AddUserText,
    AppendAudio,
    CancelResponse,
    ClearAudio,
    Command,
    CommitAudio,
    CreateResponse,
    TruncateItem,
    TurnDetectionPatch,
    UpdateSession,
)

T = TypeVar("T")


class BadClientEvent(Exception):
    """A client event we refuse; the connection goes on.

    Attributes:
        error: What is wrong (message, param, code).
        event_id: The client's ``event_id``, if it could be read.
    """

    def __init__(self, error: InvalidInput, event_id: str | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.event_id = event_id


class ClientEventParser:
    """Parses one connection's client events.

    Args:
        max_append_bytes: Largest decoded audio of one ``input_audio_buffer.append``.
        voices: The voices the TTS accepts now (empty: any name, the engine decides); asked at
            each ``session.update``, since a fallback chain's voices change with its backends.
        tiers: The server's LLM tiers: a ``session.model`` naming one pins the session to it.
    """

    def __init__(
        self,
        *,
        max_append_bytes: int,
        voices: Callable[[], Sequence[str]] = tuple,
        tiers: Sequence[str] = (),
    ) -> None:
        self.max_append_bytes = max_append_bytes
        self.voices = voices
        self.tiers = tiers

    def parse(self, data: str | bytes) -> tuple[str | None, Command]:
        """One WebSocket message -> the client's ``event_id`` and the command.

        Raises:
            BadClientEvent: not JSON, not an event we serve, or a field that is wrong.
        """
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise BadClientEvent(
                InvalidInput("the message is not valid JSON", code="invalid_json"), None
            ) from exc
        if not isinstance(raw, dict):
            raise BadClientEvent(
                InvalidInput("an event is a JSON object", code="invalid_event"), None
            )
        event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
        try:
            return event_id, self._command(raw)
        except InvalidInput as exc:
            raise BadClientEvent(exc, event_id) from exc

    def _command(self, raw: dict[str, Any]) -> Command:
        kind = raw.get("type")
        if not isinstance(kind, str):
            raise InvalidInput(
                "the event has no 'type'", param="type", code="missing_required_parameter"
            )
        model = wire.EVENTS.get(kind)
        if model is None:
            raise InvalidInput(
                f"unsupported event type {kind[:64]!r}; this server accepts: "
                + ", ".join(wire.EVENTS),
                param="type",
                code="unknown_event_type",
            )
        try:
            event = model.model_validate(raw)
        except ValidationError as exc:
            raise _invalid(exc, raw) from exc
        if isinstance(event, wire.SessionUpdate):
            return self._update(event.session)
        if isinstance(event, wire.Append):
            return AppendAudio(self._audio(event.audio))
        if isinstance(event, wire.ItemCreate):
            if event.item.type == "function_call_output":
                return _tool_output(event)
            return _user_text(event)
        if isinstance(event, wire.ResponseCreate):
            _check_response_params(event.response)
            return CreateResponse()
        if isinstance(event, wire.ResponseCancel):
            return CancelResponse(event.response_id)
        if isinstance(event, wire.Truncate):
            if event.content_index != 0:
                raise InvalidInput(
                    "an assistant item has one content part: content_index must be 0",
                    param="content_index",
                    code="invalid_value",
                )
            return TruncateItem(event.item_id, event.audio_end_ms)
        return CommitAudio() if kind == "input_audio_buffer.commit" else ClearAudio()

    def _audio(self, b64: str) -> bytes:
        # refuse on the encoded length, before spending time and memory on decoding it
        if len(b64) > 4 * -(-self.max_append_bytes // 3):
            raise InvalidInput(
                f"one append may carry at most {self.max_append_bytes} bytes of audio: "
                "send smaller chunks",
                param="audio",
                code="audio_too_large",
            )
        try:
            pcm = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(
                "audio is not valid base64", param="audio", code="invalid_audio"
            ) from exc
        if len(pcm) % 2:
            raise InvalidInput(
                f"pcm16 audio must have an even number of bytes (whole 16-bit samples); this"
                f" append has {len(pcm)}",
                param="audio",
                code="invalid_audio",
            )
        return pcm

    def _update(self, s: wire.SessionFields) -> UpdateSession:
        if s.type == "transcription":
            raise _unsupported("session.type", "transcription-only sessions are not supported")
        tools = None
        file_search: FileSearch | Literal["off"] | None = None
        if "tools" in s.model_fields_set:
            # function tools and the knowledge base's file_search; any other type is refused
            tools = parse_tools(s.tools or [], param="session.tools", nested=False)
            file_search = file_search_of(s.tools or [], param="session.tools") or "off"
        tool_choice = None
        if s.tool_choice is not None:
            tool_choice = parse_tool_choice(
                s.tool_choice, tools, param="session.tool_choice", nested=False
            )
        tier = None
        if s.model is not None:
            tier = s.model if s.model in self.tiers else ""
        for name in ("output_modalities", "modalities"):
            modalities = getattr(s, name)
            if modalities is not None and "audio" not in modalities:
                raise _unsupported(f"session.{name}", "this server always answers with audio")
        audio = s.audio or wire.AudioConfig()
        a_in, a_out = audio.input or wire.AudioInput(), audio.output or wire.AudioOutput()
        vad_param = "session.audio.input.turn_detection"
        vad = _vad_patch(a_in, "turn_detection", vad_param)
        if vad is None:
            vad = _vad_patch(s, "turn_detection", "session.turn_detection")
        transcription = a_in.transcription or s.input_audio_transcription
        voice = a_out.voice.id if isinstance(a_out.voice, wire.VoiceId) else a_out.voice
        voice = _either(voice, s.voice)
        voices = self.voices()
        if voice is not None and voices and voice not in voices:
            raise InvalidInput(
                f"unknown voice {voice[:64]!r}; voices: {', '.join(voices)}",
                param="session.audio.output.voice",
                code="invalid_value",
            )
        return UpdateSession(
            instructions=s.instructions,
            voice=voice,
            speed=_either(a_out.speed, s.speed),
            temperature=s.temperature,
            max_tokens=_either(s.max_output_tokens, s.max_response_output_tokens),
            turn_detection=vad,
            language=transcription.language if transcription is not None else None,
            input_sample_rate=_rate(a_in.format, s.input_audio_format, "input"),
            output_sample_rate=_rate(a_out.format, s.output_audio_format, "output"),
            tools=tools,
            tool_choice=tool_choice,
            tier=tier,
            file_search=file_search,
        )


def _either(ga: T | None, beta: T | None) -> T | None:
    """The GA field if set, else its beta twin."""
    return ga if ga is not None else beta


def _vad_patch(
    holder: wire.AudioInput | wire.SessionFields, field: str, param: str
) -> TurnDetectionPatch | Literal["off"] | None:
    if field not in holder.model_fields_set:
        return None
    vad: wire.ServerVad | None = getattr(holder, field)
    if vad is None:
        return "off"
    if vad.idle_timeout_ms is not None:
        raise _unsupported(f"{param}.idle_timeout_ms", "idle timeouts are not supported")
    # semantic_vad has no model here: it is served by server VAD with the server's settings
    return TurnDetectionPatch(
        vad.threshold,
        vad.silence_duration_ms,
        vad.prefix_padding_ms,
        vad.create_response,
        vad.interrupt_response,
    )


def _rate(ga: wire.AudioFormat | None, beta: str | None, side: str) -> int | None:
    if ga is not None:
        if ga.type != "audio/pcm":
            raise _unsupported(
                f"session.audio.{side}.format.type",
                f"audio format {ga.type[:32]!r} is not supported: use audio/pcm",
            )
        return ga.rate or 24_000
    if beta is not None:
        if beta != "pcm16":
            raise _unsupported(f"session.{side}_audio_format", f"{beta} is not supported: pcm16")
        return 24_000  # the beta API's pcm16 is 24 kHz
    return None


def _user_text(event: wire.ItemCreate) -> AddUserText:
    item = event.item
    if event.previous_item_id is not None:
        raise _unsupported("previous_item_id", "items can only be appended (omit it)")
    if item.type != "message" or item.role != "user":
        raise _unsupported(
            "item",
            "only user messages (type message, role user) and function results (type "
            "function_call_output) can be added",
        )
    texts: list[str] = []
    for i, part in enumerate(item.content):
        if part.type not in ("input_text", "text") or part.text is None:
            raise _unsupported(f"item.content[{i}]", "only input_text content parts are supported")
        texts.append(part.text)
    text = "\n".join(texts)
    if not text.strip():
        raise InvalidInput("the message has no text", param="item.content", code="invalid_value")
    return AddUserText(text)


def _tool_output(event: wire.ItemCreate) -> AddToolOutput:
    item = event.item
    if event.previous_item_id is not None:
        raise _unsupported("previous_item_id", "items can only be appended (omit it)")
    if not item.call_id:
        raise InvalidInput(
            "a function_call_output needs the call_id it answers",
            param="item.call_id",
            code="missing_required_parameter",
        )
    if item.output is None:
        raise InvalidInput(
            "a function_call_output needs its output",
            param="item.output",
            code="missing_required_parameter",
        )
    return AddToolOutput(item.call_id, item.output)


def _check_response_params(params: wire.ResponseParams | None) -> None:
    if params is None:
        return
    if params.conversation not in (None, "auto"):
        raise _unsupported("response.conversation", "responses are always in the conversation")
    for name in ("output_modalities", "modalities"):
        modalities = getattr(params, name)
        if modalities is not None and "audio" not in modalities:
            raise _unsupported(f"response.{name}", "this server always answers with audio")
    for name in ("instructions", "max_output_tokens", "temperature", "voice", "audio", "input"):
        if getattr(params, name) is not None:
            raise _unsupported(
                f"response.{name}", "per-response overrides are not supported: use session.update"
            )
    if params.tools is not None:
        raise _unsupported(
            "response.tools", "per-response tools are not supported: use session.update"
        )


def _unsupported(param: str, message: str) -> InvalidInput:
    return InvalidInput(message, param=param, code="unsupported_value")


def _invalid(exc: ValidationError, raw: dict[str, Any]) -> InvalidInput:
    first = exc.errors()[0]
    # pydantic's loc also names union members ("int", "literal['inf']"): keep the path that
    # exists in what the client sent
    path: list[str] = []
    node: Any = raw
    for part in first["loc"]:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif first["type"] == "missing" and isinstance(part, str) and isinstance(node, dict):
            pass  # the missing field itself
        else:
            break
        path.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    param = "".join(path).lstrip(".") or None
    missing = first["type"] == "missing"
    return InvalidInput(
        f"{param or 'event'}: {first['msg']}",
        param=param,
        code="missing_required_parameter" if missing else "invalid_value",
    )
