"""The realtime wire protocol without a socket: client events -> commands, session events -> the
GA server events, each checked against the official ``openai`` SDK's own models."""

from __future__ import annotations

import base64
import json
import typing
from typing import Any

import numpy as np
import pytest
from openai.types.realtime import RealtimeServerEvent

from pipeline.errors import EngineTimeout, InvalidInput
from pipeline.events import (
    ConversationItem,
    ErrorEvent,
    Event,
    InputCleared,
    InputCommitted,
    ItemAdded,
    ItemTruncated,
    ResponseAudioDelta,
    ResponseAudioDone,
    ResponseCreated,
    ResponseDone,
    ResponseTranscriptDelta,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TranscriptCompleted,
    TranscriptFailed,
    TranscriptPartial,
)
from pipeline.session_config import SessionConfig, TurnDetection
from pipeline.turn import Backends
from pipeline.types import AudioChunk, GenerationParams, TurnTimings, Usage
from server.realtime_commands import (
    AddUserText,
    AppendAudio,
    CancelResponse,
    ClearAudio,
    CommitAudio,
    CreateResponse,
    TruncateItem,
    UpdateSession,
)
from server.realtime_events import ServerEvents
from server.realtime_protocol import BadClientEvent, ClientEventParser
from server.realtime_wire import Wire

_SDK_EVENTS = {
    typing.get_args(cls.model_fields["type"].annotation)[0]: cls
    for cls in typing.get_args(typing.get_args(RealtimeServerEvent)[0])
}
DEFAULT_VAD = TurnDetection(silence_duration_ms=400)


def sdk_valid(wire: Wire) -> Wire:
    """``wire`` after checking it is valid JSON and parses as the SDK's model of its type."""
    assert isinstance(wire["event_id"], str) and wire["event_id"]
    _SDK_EVENTS[wire["type"]].model_validate(json.loads(json.dumps(wire)))
    return wire


def parse(event: dict[str, Any] | str, **options: Any) -> Any:
    parser = ClientEventParser(max_append_bytes=options.pop("max_append_bytes", 48_000), **options)
    data = event if isinstance(event, str) else json.dumps(event)
    return parser.parse(data)


def refused(event: dict[str, Any] | str | bytes, **options: Any) -> BadClientEvent:
    with pytest.raises(BadClientEvent) as info:
        parse(event, **options)  # type: ignore[arg-type]
    return info.value


# ---------------------------------------------------------------- client events


def test_simple_events_become_commands() -> None:
    pcm = np.arange(-5, 5, dtype="<i2").tobytes()
    audio = base64.b64encode(pcm).decode()
    assert parse({"type": "input_audio_buffer.append", "audio": audio, "event_id": "e1"}) == (
        "e1",
        AppendAudio(pcm),
    )
    assert parse({"type": "input_audio_buffer.commit"}) == (None, CommitAudio())
    assert parse({"type": "input_audio_buffer.clear"})[1] == ClearAudio()
    assert parse({"type": "response.create"})[1] == CreateResponse()
    assert (
        parse({"type": "response.create", "response": {"output_modalities": ["audio"]}})[1]
        == CreateResponse()
    )
    assert parse({"type": "response.cancel", "response_id": "resp_1"})[1] == CancelResponse(
        "resp_1"
    )
    truncate = {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0}
    assert parse({**truncate, "audio_end_ms": 1500})[1] == TruncateItem("item_1", 1500)
    item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "Hello"}, {"type": "input_text", "text": "You"}],
    }
    assert parse({"type": "conversation.item.create", "item": item})[1] == AddUserText("Hello\nYou")


def test_ga_session_update() -> None:
    session = {
        "type": "realtime",
        "instructions": "Be brief.",
        "output_modalities": ["audio"],
        "max_output_tokens": 40,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 16000},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.6,
                    "silence_duration_ms": 300,
                    "prefix_padding_ms": 200,
                    "create_response": True,
                    "interrupt_response": False,
                },
                "transcription": {"model": "whisper-1", "language": "en"},
                "noise_reduction": None,
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"},
        },
        "tracing": "auto",
    }
    voices = lambda: ("joe", "alloy")  # noqa: E731
    _, update = parse({"type": "session.update", "session": session}, voices=voices)
    changes = update.changes(SessionConfig(), DEFAULT_VAD)
    assert changes["instructions"] == "Be brief."
    assert changes["voice"] == "alloy"
    assert changes["input_sample_rate"] == 16_000 and changes["output_sample_rate"] == 24_000
    assert changes["language"] == "en"
    assert changes["params"] == GenerationParams(max_tokens=40)
    assert changes["turn_detection"] == TurnDetection(0.6, 300, 200, 100, True, False)


def test_beta_flat_session_fields() -> None:
    session = {
        "modalities": ["text", "audio"],
        "voice": "joe",
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 600},
        "instructions": "Speak slowly.",
        "temperature": 0.7,
        "max_response_output_tokens": "inf",
        "input_audio_transcription": {"model": "whisper-1"},
    }
    _, update = parse({"type": "session.update", "session": session}, voices=lambda: ("joe",))
    current = SessionConfig(params=GenerationParams(max_tokens=96, top_p=0.9))
    changes = update.changes(current, DEFAULT_VAD)
    assert changes["voice"] == "joe" and changes["instructions"] == "Speak slowly."
    assert changes["input_sample_rate"] == changes["output_sample_rate"] == 24_000
    # "inf" is the server's default cap; fields not sent keep their values
    assert changes["params"] == GenerationParams(max_tokens=None, temperature=0.7, top_p=0.9)
    assert changes["turn_detection"] == TurnDetection(silence_duration_ms=600)
    assert "language" not in changes and "speed" not in changes


def test_turn_detection_off_and_back_on() -> None:
    off = parse(
        {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}
    )
    assert off[1].changes(SessionConfig(), DEFAULT_VAD) == {"turn_detection": None}
    beta_off = parse({"type": "session.update", "session": {"turn_detection": None}})
    assert beta_off[1].changes(SessionConfig(), DEFAULT_VAD) == {"turn_detection": None}
    on = parse({"type": "session.update", "session": {"turn_detection": {"type": "server_vad"}}})
    manual = SessionConfig(turn_detection=None)
    assert on[1].changes(manual, DEFAULT_VAD) == {"turn_detection": DEFAULT_VAD}
    # semantic_vad is served by server VAD (no semantic model here)
    semantic = {"type": "semantic_vad", "eagerness": "high", "create_response": False}
    _, update = parse({"type": "session.update", "session": {"turn_detection": semantic}})
    td = update.changes(SessionConfig(), DEFAULT_VAD)["turn_detection"]
    assert isinstance(td, TurnDetection) and not td.create_response
    # an empty update changes nothing (the session still answers session.updated)
    assert parse({"type": "session.update", "session": {"type": "realtime"}})[1] == UpdateSession()


BAD_EVENTS: list[tuple[str | dict[str, Any], str, str | None]] = [
    ("{not json", "invalid_json", None),
    ('["a list"]', "invalid_event", None),
    ({}, "missing_required_parameter", "type"),
    ({"type": "conversation.item.delete", "item_id": "x"}, "unknown_event_type", "type"),
    ({"type": "input_audio_buffer.append"}, "missing_required_parameter", "audio"),
    ({"type": "input_audio_buffer.append", "audio": 12}, "invalid_value", "audio"),
    ({"type": "input_audio_buffer.append", "audio": "%%%%"}, "invalid_audio", "audio"),
    ({"type": "input_audio_buffer.append", "audio": "AAAA"}, "invalid_audio", "audio"),
    (
        {
            "type": "conversation.item.truncate",
            "item_id": "i",
            "content_index": 0,
            "audio_end_ms": "10",
        },
        "invalid_value",
        "audio_end_ms",
    ),
    (
        {
            "type": "conversation.item.truncate",
            "item_id": "i",
            "content_index": 0,
            "audio_end_ms": -1,
        },
        "invalid_value",
        "audio_end_ms",
    ),
    (
        {
            "type": "session.update",
            "session": {
                "audio": {
                    "input": {
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": "500"}
                    }
                }
            },
        },
        "invalid_value",
        "session.audio.input.turn_detection.silence_duration_ms",
    ),
    (
        {
            "type": "session.update",
            "session": {"turn_detection": {"type": "server_vad", "threshold": 1.5}},
        },
        "invalid_value",
        "session.turn_detection.threshold",
    ),
    (
        {"type": "session.update", "session": {"max_output_tokens": 0}},
        "invalid_value",
        "session.max_output_tokens",
    ),
    (
        {"type": "session.update", "session": {"max_output_tokens": "lots"}},
        "invalid_value",
        "session.max_output_tokens",
    ),
    (
        {"type": "session.update", "session": {"output_modalities": ["text"]}},
        "unsupported_value",
        "session.output_modalities",
    ),
    (
        {"type": "session.update", "session": {"tools": [{"type": "mcp", "server_label": "x"}]}},
        "unsupported_value",
        "session.tools",
    ),
    (
        {"type": "session.update", "session": {"tools": [{"type": "function", "name": "a b"}]}},
        "invalid_value",
        "session.tools[0].name",
    ),
    (
        {"type": "session.update", "session": {"tool_choice": "sometimes"}},
        "invalid_value",
        "session.tool_choice",
    ),
    (
        {"type": "conversation.item.create", "item": {"type": "function_call_output"}},
        "missing_required_parameter",
        "item.call_id",
    ),
    (
        {"type": "session.update", "session": {"type": "transcription"}},
        "unsupported_value",
        "session.type",
    ),
    (
        {
            "type": "session.update",
            "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
        },
        "unsupported_value",
        "session.audio.input.format.type",
    ),
    (
        {"type": "session.update", "session": {"input_audio_format": "g711_alaw"}},
        "unsupported_value",
        "session.input_audio_format",
    ),
    (
        {"type": "session.update", "session": {"audio": {"output": {"voice": "nobody"}}}},
        "invalid_value",
        "session.audio.output.voice",
    ),
    (
        {
            "type": "session.update",
            "session": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}},
        },
        "unsupported_value",
        "session.turn_detection.idle_timeout_ms",
    ),
    ({"type": "session.update", "session": "realtime"}, "invalid_value", "session"),
    (
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "system",
                "content": [{"type": "input_text", "text": "x"}],
            },
        },
        "unsupported_value",
        "item",
    ),
    (
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_audio", "audio": "AAAA"}],
            },
        },
        "unsupported_value",
        "item.content[0]",
    ),
    (
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "  "}],
            },
        },
        "invalid_value",
        "item.content",
    ),
    (
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": 5}],
            },
        },
        "invalid_value",
        "item.content[0].text",
    ),
    (
        {
            "type": "conversation.item.create",
            "previous_item_id": "item_1",
            "item": {"type": "message", "role": "user", "content": []},
        },
        "unsupported_value",
        "previous_item_id",
    ),
    (
        {"type": "response.create", "response": {"instructions": "Shout."}},
        "unsupported_value",
        "response.instructions",
    ),
    (
        {"type": "response.create", "response": {"conversation": "none"}},
        "unsupported_value",
        "response.conversation",
    ),
    (
        {
            "type": "conversation.item.truncate",
            "item_id": "i",
            "content_index": 1,
            "audio_end_ms": 5,
        },
        "invalid_value",
        "content_index",
    ),
]
"""Events refused by the parser (``event_id`` e9 is added to the objects), with the code
and param of the error."""


@pytest.mark.parametrize(("data", "code", "param"), BAD_EVENTS)
def test_bad_events_are_refused_with_a_code_a_param_and_the_event_id(
    data: str | dict[str, Any], code: str, param: str | None
) -> None:
    event = data if isinstance(data, str) else {**data, "event_id": "e9"}
    bad = refused(event, voices=lambda: ("joe", "alloy"))
    assert isinstance(bad.error, InvalidInput)
    assert (bad.error.code, bad.error.param) == (code, param), bad.error.message
    assert bad.event_id == (None if isinstance(data, str) else "e9")


def test_binary_frames_and_undecodable_bytes() -> None:
    parser = ClientEventParser(max_append_bytes=100)
    assert parser.parse(b'{"type": "input_audio_buffer.clear"}')[1] == ClearAudio()
    with pytest.raises(BadClientEvent) as info:
        parser.parse(b"\xff\xfe\x00garbage")
    assert info.value.error.code == "invalid_json"
    with pytest.raises(BadClientEvent) as info:
        parser.parse("[" * 100_000)  # deeper than the JSON parser recurses
    assert info.value.error.code == "invalid_json"


def test_append_size_is_capped_before_decoding() -> None:
    limit = 4_800
    just = base64.b64encode(bytes(limit)).decode()
    assert parse({"type": "input_audio_buffer.append", "audio": just}, max_append_bytes=limit)
    over = base64.b64encode(bytes(limit + 2)).decode()
    bad = refused(
        {"type": "input_audio_buffer.append", "audio": over, "event_id": "big"},
        max_append_bytes=limit,
    )
    assert (bad.error.code, bad.event_id) == ("audio_too_large", "big")


# ---------------------------------------------------------------- server events


def events_for(config: SessionConfig | None = None) -> ServerEvents:
    return ServerEvents(
        model="gpt-realtime", config=config or SessionConfig(), transcription_model="whisper"
    )


def test_session_created_and_updated_follow_the_ga_session_shape() -> None:
    mapper = events_for()
    created = sdk_valid(mapper.session_created())
    session = created["session"]
    assert session["model"] == "gpt-realtime" and session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24_000}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    manual = SessionConfig(turn_detection=None, instructions="Hi.", voice="joe")
    (updated,) = mapper.map(SessionUpdated(manual))
    sdk_valid(updated)
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    assert updated["session"]["instructions"] == "Hi."
    assert updated["session"]["audio"]["output"]["voice"] == "joe"
    assert updated["session"]["id"] == session["id"]


def test_a_voice_turn_maps_to_the_ga_event_sequence() -> None:
    mapper = events_for()
    user = ConversationItem("item_u", "user", None, audio=True)
    samples = np.linspace(-1, 1, 480, dtype=np.float32)
    timings = TurnTimings(
        stt_ms=20.0,
        llm_ttft_ms=90.0,
        llm_first_phrase_ms=150.0,
        llm_total_ms=900.0,
        tts_ttfb_ms=60.0,
        tts_total_ms=400.0,
        total_ms=1200.0,
        endpoint_ms=400.0,
        v2v_ms=450.0,
    )
    session_events: list[Event] = [
        SpeechStarted("item_u", 300),
        TranscriptPartial("item_u", "What is"),
        TranscriptPartial("item_u", "What is the capital"),
        SpeechStopped("item_u", 2300),
        InputCommitted("item_u", None),
        ItemAdded(user, None),
        TranscriptCompleted("item_u", "What is the capital?", "en", True, 120.0),
        ResponseCreated("resp_1", "item_a", "item_u"),
        ResponseTranscriptDelta("resp_1", "item_a", "Paris."),
        ResponseAudioDelta("resp_1", "item_a", AudioChunk(samples, 24_000)),
        ResponseAudioDone("resp_1", "item_a", "Paris."),
        ResponseDone(
            "resp_1",
            "item_a",
            "completed",
            None,
            "Paris.",
            Usage(30, 4),
            timings,
            Backends("whisper", "smollm2", "piper"),
        ),
    ]
    wires = [sdk_valid(w) for e in session_events for w in mapper.map(e)]
    assert [w["type"] for w in wires] == [
        "input_audio_buffer.speech_started",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.delta",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    by_type = {w["type"]: w for w in wires}
    deltas = [w["delta"] for w in wires if w["type"].endswith("transcription.delta")]
    assert "".join(deltas) == "What is the capital"  # appended deltas, GA style
    completed = by_type["conversation.item.input_audio_transcription.completed"]
    assert completed["transcript"] == "What is the capital?"
    assert completed["usage"] == {"type": "duration", "seconds": 2.0}
    audio = base64.b64decode(by_type["response.output_audio.delta"]["delta"])
    assert len(audio) == 2 * 480 and np.frombuffer(audio, "<i2")[-1] == 32767
    done = by_type["response.done"]["response"]
    assert done["status"] == "completed" and done["status_details"] is None
    assert done["usage"]["total_tokens"] == 34
    assert done["output"][0]["content"][0]["transcript"] == "Paris."
    vox = done["voxline"]
    assert vox["v2v_ms"] == 450.0 and vox["first_phrase_ms"] == 150.0
    assert vox["backends"] == {"stt": "whisper", "llm": "smollm2", "tts": "piper"}
    assert mapper.active_response is None


def test_a_cancelled_response_still_closes_its_item_before_response_done() -> None:
    mapper = events_for()
    mapper.map(ResponseCreated("resp_1", "item_a", None))
    assert mapper.active_response == "resp_1"
    wires = mapper.map(
        ResponseDone(
            "resp_1",
            "item_a",
            "cancelled",
            "turn_detected",
            "The first",
            Usage(10, 3),
            TurnTimings(),
            Backends("s", "l", "t"),
        )
    )
    for wire in wires:
        sdk_valid(wire)
    assert [w["type"] for w in wires] == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    assert wires[1]["transcript"] == "The first"
    response = wires[-1]["response"]
    assert response["status"] == "cancelled"
    assert response["status_details"] == {
        "type": "cancelled",
        "reason": "turn_detected",
        "error": None,
    }
    assert response["output"][0]["status"] == "incomplete"
    assert response["voxline"]["v2v_ms"] is None
    assert mapper.active_response is None


def test_errors_failures_and_the_rest() -> None:
    mapper = events_for()
    error = ErrorEvent.from_exception(InvalidInput("nothing", param="x", code="c"))
    (wire,) = mapper.map(error, cause="evt_7")
    assert sdk_valid(wire)["error"] == {
        "type": "invalid_request_error",
        "code": "c",
        "message": "nothing",
        "param": "x",
        "event_id": "evt_7",
    }
    stage = ErrorEvent.from_exception(EngineTimeout("slow", stage="stt", backend="whisper"))
    (failed,) = mapper.map(TranscriptFailed("item_u", stage))
    assert sdk_valid(failed)["error"]["type"] == "server_error"
    mapper.map(ResponseCreated("resp_2", "item_b", None))
    wires = mapper.map(
        ResponseDone(
            "resp_2",
            "item_b",
            "failed",
            None,
            "",
            Usage(),
            TurnTimings(),
            Backends("s", "l", "t"),
            stage,
        )
    )
    assert wires[-1]["response"]["status_details"]["error"]["code"] == "EngineTimeout"
    checks: list[tuple[Event, str]] = [
        (InputCleared(), "input_audio_buffer.cleared"),
        (ItemTruncated("item_b", 500, "The"), "conversation.item.truncated"),
        (
            ItemAdded(ConversationItem("i", "user", "Hi", False), "item_b"),
            "conversation.item.added",
        ),
    ]
    for event, kind in checks:
        first = mapper.map(event)[0]
        assert sdk_valid(first)["type"] == kind
    revised = [
        mapper.map(TranscriptPartial("item_x", t))[0] for t in ("Whats", "What is", "What is it")
    ]
    assert [w["delta"] for w in revised] == ["Whats", "", " it"]
    assert revised[1]["voxline"]["transcript"] == "What is"  # the revision, for who wants it


def test_an_odd_length_append_says_what_is_wrong() -> None:
    parser = ClientEventParser(max_append_bytes=100)
    event = {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}
    with pytest.raises(BadClientEvent) as info:
        parser.parse(json.dumps(event))
    assert "must have an even number of bytes" in info.value.error.message
    assert "has 3" in info.value.error.message
