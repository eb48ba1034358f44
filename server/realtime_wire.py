"""The wire shapes of the OpenAI Realtime API's server events (GA names), as JSON-ready dicts.

Stateless builders: an event with its fresh ``event_id``, the ``error`` object, the session
object, and the items (messages, function calls and their outputs) as they appear in events
and responses. Which events one session event becomes, in which order, is decided in
``server.realtime_events``.
"""

from __future__ import annotations

from typing import Any

from pipeline.events import ConversationItem, ErrorEvent
from pipeline.file_search import FileSearch
from pipeline.listener import new_id
from pipeline.session_config import SessionConfig
from pipeline.types import ForcedTool, ToolChoice

Wire = dict[str, Any]
"""One server event, ready for ``json.dumps``."""


def pcm_format(rate: int | None) -> Wire:
    """The ``audio/pcm`` format object at ``rate`` (24 kHz when unset)."""
    return {"type": "audio/pcm", "rate": rate or 24_000}


def error_body(error: ErrorEvent, event_id: str | None = None) -> Wire:
    """The ``error`` object of OpenAI's error shape, with the client event at fault."""
    return {
        "type": error.type,
        "code": error.code,
        "message": error.message,
        "param": error.param,
        "event_id": event_id,
    }


def wire_event(kind: str, **fields: Any) -> Wire:
    """A server event of type ``kind`` with a fresh ``event_id``."""
    return {"type": kind, "event_id": new_id("event"), **fields}


def error_event(error: ErrorEvent, event_id: str | None = None) -> Wire:
    """An ``error`` event, echoing the ``event_id`` of the client event at fault."""
    return wire_event("error", error=error_body(error, event_id))


def session_object(
    config: SessionConfig,
    *,
    session_id: str,
    model: str,
    transcription_model: str,
    release: str | None,
) -> Wire:
    """The session object (GA ``RealtimeSessionCreateRequest`` shape) for ``config``.

    Args:
        config: The session's configuration.
        session_id: The session's id.
        model: The model the client asked for (shown unless an LLM tier is pinned).
        transcription_model: The STT backend's name, shown as the transcription model.
        release: The release serving the session.
    """
    td = config.turn_detection
    vad = None
    if td is not None:
        vad = {
            "type": "server_vad",
            "threshold": td.threshold,
            "silence_duration_ms": td.silence_duration_ms,
            "prefix_padding_ms": td.prefix_padding_ms,
            "create_response": td.create_response,
            "interrupt_response": td.interrupt_response,
            "idle_timeout_ms": None,
        }
    max_tokens = config.params.max_tokens
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": config.tier or model,  # a pinned LLM tier, else the model asked for
        "output_modalities": ["audio"],
        "instructions": config.instructions,
        "tools": [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.parameters),
            }
            for t in config.tools
        ],
        "tool_choice": tool_choice_json(config.tool_choice),
        "max_output_tokens": max_tokens if max_tokens is not None else "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "audio": {
            "input": {
                "format": pcm_format(config.input_sample_rate),
                "transcription": {
                    "model": transcription_model,
                    "language": config.language,
                    "prompt": None,
                },
                "noise_reduction": None,
                "turn_detection": vad,
            },
            "output": {
                "format": pcm_format(config.output_sample_rate),
                "voice": config.voice,
                "speed": config.speed,
            },
        },
        "voxline": {
            "temperature": config.params.temperature,
            "top_p": config.params.top_p,
            "release": release,
            # OpenAI's realtime sessions have no file_search tool type: it is reported here
            "file_search": file_search_tool(config.file_search),
        },
    }


def file_search_tool(search: FileSearch | None) -> Wire | None:
    """The session's ``file_search`` tool, as reported in ``voxline`` (``None``: none)."""
    if search is None:
        return None
    return {
        "type": "file_search",
        "vector_store_ids": list(search.vector_store_ids),
        "max_num_results": search.max_num_results,
        "ranking_options": {"score_threshold": search.score_threshold},
    }


def audio_part(transcript: str) -> Wire:
    """An assistant message's ``audio`` content part."""
    return {"type": "audio", "transcript": transcript}


def assistant_item(item_id: str, status: str, transcript: str | None) -> Wire:
    """The assistant message item of a response."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_audio", "transcript": transcript}],
    }


def tool_choice_json(choice: ToolChoice) -> Wire | str:
    """``tool_choice`` as the wire writes it."""
    if isinstance(choice, ForcedTool):
        return {"type": "function", "name": choice.name}
    return choice


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> Wire:
    """A ``function_call`` item."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def conversation_item(item: ConversationItem, status: str) -> Wire:
    """A conversation item (message, function call or its output) with ``status``."""
    if item.kind == "function_call":
        return call_item(item.item_id, item.call_id or "", item.name or "", item.text or "", status)
    if item.kind == "function_call_output":
        return {
            "id": item.item_id,
            "object": "realtime.item",
            "type": "function_call_output",
            "status": status,
            "call_id": item.call_id,
            "output": item.text or "",
        }
    content = (
        {"type": "input_audio", "transcript": item.text}
        if item.audio
        else {"type": "input_text", "text": item.text}
    )
    return {
        "id": item.item_id,
        "object": "realtime.item",
        "type": "message",
        "role": item.role,
        "status": status,
        "content": [content],
    }
