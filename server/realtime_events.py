"""Session events -> server events of the OpenAI Realtime API (GA names and shapes).

A ``Session`` speaks in one value per thing that happened (``pipeline.events``); a Realtime
client expects the GA event sequence, in which one happening is often several events (a response
starting is ``response.created``, ``response.output_item.added``, ``conversation.item.added`` and
``response.content_part.added``). ``ServerEvents`` does that expansion for one connection, as
JSON-ready dicts, checked in the tests against the official ``openai`` SDK's models. The shapes
themselves (an event, the session object, items) are built in ``server.realtime_wire``.

It keeps the little state the wire needs and the session does not: the partial transcript sent
so far (the session reports the whole text, GA sends appended deltas), how long each user turn
was (for the transcription's ``usage``), and which responses still owe their closing events (a
cancelled response has no ``ResponseAudioDone``, but GA clients expect ``output_audio.done``,
``output_item.done`` and ``conversation.item.done`` before ``response.done`` all the same).

``response.done`` carries the turn's timings in a ``voxline`` object beside OpenAI's fields:
``endpoint_ms``, ``stt_ms``, ``llm_ttft_ms``, ``first_phrase_ms``, ``tts_ttfb_ms``, ``v2v_ms``
(the latency vocabulary of docs/architecture.md; ``null`` where a stage did not run),
``llm_total_ms``, ``tts_total_ms``, ``total_ms``, the ``backends`` that served each stage and
the ``release`` that served the session (docs/releases.md).
"""

from __future__ import annotations

import base64
from typing import Any

from pipeline.audio import to_pcm16
from pipeline.events import (
    ErrorEvent,
    Event,
    FunctionCallDelta,
    FunctionCallDone,
    FunctionCallStarted,
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
from pipeline.listener import new_id
from pipeline.session_config import SessionConfig
from server.realtime_wire import (
    Wire,
    assistant_item,
    audio_part,
    call_item,
    conversation_item,
    error_body,
    error_event,
    pcm_format,
    session_object,
    wire_event,
)
from server.turn_schemas import fallbacks_json, knowledge_json, route_json


class ServerEvents:
    """Builds one connection's server events.

    Args:
        model: The model the client asked for (``?model=``), echoed in the session.
        config: The session's configuration at connect time.
        transcription_model: The STT backend's name, shown as the transcription model.
    """

    def __init__(
        self,
        *,
        model: str,
        config: SessionConfig,
        transcription_model: str,
        release: str | None = None,
    ) -> None:
        self.model = model
        self.release = release
        """The release serving the session (in ``voxline`` of the session and responses)."""
        self.config = config
        self.transcription_model = transcription_model
        self.session_id = new_id("sess")
        self.conversation_id = new_id("conv")
        self.active_response: str | None = None
        """The response in progress as the client has been told (``None``: none)."""
        self._partials: dict[str, str] = {}  # item id -> partial transcript sent so far
        self._speech_start: dict[str, int] = {}  # item id -> audio_start_ms
        self._seconds: dict[str, float] = {}  # item id -> seconds of speech
        self._open: set[str] = set()  # responses announced whose audio is not done

    # ---------------------------------------------------------------- session

    def session(self) -> Wire:
        """The session object (GA ``RealtimeSessionCreateRequest`` shape) for ``config``."""
        return session_object(
            self.config,
            session_id=self.session_id,
            model=self.model,
            transcription_model=self.transcription_model,
            release=self.release,
        )

    def session_created(self) -> Wire:
        """``session.created``: the first event of every connection."""
        return wire_event("session.created", session=self.session())

    # ---------------------------------------------------------------- events

    def map(self, event: Event, cause: str | None = None) -> list[Wire]:
        """The server events for one session event, in order.

        Args:
            event: What the session said.
            cause: For an ``ErrorEvent``: the ``event_id`` of the client event that caused it.
        """
        match event:
            case ErrorEvent():
                return [error_event(event, cause)]
            case SessionUpdated(config=config):
                self.config = config
                return [wire_event("session.updated", session=self.session())]
            case SpeechStarted(item_id=item_id, audio_start_ms=start):
                self._speech_start[item_id] = start
                return [
                    wire_event(
                        "input_audio_buffer.speech_started", item_id=item_id, audio_start_ms=start
                    )
                ]
            case SpeechStopped(item_id=item_id, audio_end_ms=end):
                start = self._speech_start.pop(item_id, end)
                self._seconds[item_id] = max(0.0, (end - start) / 1000)
                return [
                    wire_event(
                        "input_audio_buffer.speech_stopped", item_id=item_id, audio_end_ms=end
                    )
                ]
            case InputCommitted(item_id=item_id, previous_item_id=previous):
                return [
                    wire_event(
                        "input_audio_buffer.committed", item_id=item_id, previous_item_id=previous
                    )
                ]
            case InputCleared():
                return [wire_event("input_audio_buffer.cleared")]
            case ItemAdded(item=item, previous_item_id=previous):
                if item.kind == "function_call":  # its .done comes with FunctionCallDone
                    wire = conversation_item(item, "in_progress")
                    return [
                        wire_event("conversation.item.added", previous_item_id=previous, item=wire)
                    ]
                wire = conversation_item(item, "completed")
                return [
                    wire_event("conversation.item.added", previous_item_id=previous, item=wire),
                    wire_event("conversation.item.done", previous_item_id=previous, item=wire),
                ]
            case TranscriptPartial(item_id=item_id, text=text):
                return [self._partial(item_id, text)]
            case TranscriptCompleted():
                return [self._completed(event)]
            case TranscriptFailed(item_id=item_id, error=error):
                self._partials.pop(item_id, None)
                return [
                    wire_event(
                        "conversation.item.input_audio_transcription.failed",
                        item_id=item_id,
                        content_index=0,
                        error=error_body(error),
                    )
                ]
            case ResponseCreated():
                return self._created(event)
            case ResponseTranscriptDelta(response_id=rid, item_id=item_id, text=text):
                return [
                    self._part("response.output_audio_transcript.delta", rid, item_id, delta=text)
                ]
            case ResponseAudioDelta(response_id=rid, item_id=item_id, audio=audio):
                pcm = to_pcm16(audio.samples).tobytes()
                delta = base64.b64encode(pcm).decode("ascii")
                return [self._part("response.output_audio.delta", rid, item_id, delta=delta)]
            case ResponseAudioDone(response_id=rid, item_id=item_id, transcript=transcript):
                self._open.discard(rid)
                return self._closing(rid, item_id, transcript, "completed")
            case FunctionCallStarted():
                added = call_item(event.item_id, event.call_id, event.name, "", "in_progress")
                return [
                    wire_event(
                        "response.output_item.added",
                        response_id=event.response_id,
                        output_index=event.output_index,
                        item=added,
                    )
                ]
            case FunctionCallDelta():
                return [
                    wire_event(
                        "response.function_call_arguments.delta",
                        response_id=event.response_id,
                        item_id=event.item_id,
                        output_index=event.output_index,
                        call_id=event.call_id,
                        delta=event.delta,
                    )
                ]
            case FunctionCallDone():
                done = call_item(
                    event.item_id, event.call_id, event.name, event.arguments, event.status
                )
                return [
                    wire_event(
                        "response.function_call_arguments.done",
                        response_id=event.response_id,
                        item_id=event.item_id,
                        output_index=event.output_index,
                        call_id=event.call_id,
                        name=event.name,
                        arguments=event.arguments,
                    ),
                    wire_event(
                        "response.output_item.done",
                        response_id=event.response_id,
                        output_index=event.output_index,
                        item=done,
                    ),
                    wire_event("conversation.item.done", item=done),
                ]
            case ResponseDone():
                return self._done(event)
            case ItemTruncated(item_id=item_id, audio_end_ms=end):
                return [
                    wire_event(
                        "conversation.item.truncated",
                        item_id=item_id,
                        content_index=0,
                        audio_end_ms=end,
                    )
                ]
        raise AssertionError(f"unmapped session event {type(event).__name__}")

    def _partial(self, item_id: str, text: str) -> Wire:
        # the session sends the whole transcript so far, GA appended deltas: send what was
        # appended, and the whole text beside it since a later partial may revise an earlier one
        sent = self._partials.get(item_id, "")
        delta = text[len(sent) :] if text.startswith(sent) else ""
        self._partials[item_id] = text
        return wire_event(
            "conversation.item.input_audio_transcription.delta",
            item_id=item_id,
            content_index=0,
            delta=delta,
            voxline={"transcript": text},
        )

    def _completed(self, event: TranscriptCompleted) -> Wire:
        self._partials.pop(event.item_id, None)
        seconds = self._seconds.pop(event.item_id, 0.0)
        return wire_event(
            "conversation.item.input_audio_transcription.completed",
            item_id=event.item_id,
            content_index=0,
            transcript=event.text,
            usage={"type": "duration", "seconds": round(seconds, 3)},
            voxline={
                "language": event.language,
                "speculative": event.speculative,
                "stt_compute_ms": event.compute_ms,
            },
        )

    def _created(self, event: ResponseCreated) -> list[Wire]:
        rid, item_id = event.response_id, event.item_id
        self.active_response = rid
        self._open.add(rid)
        item = assistant_item(item_id, "in_progress", None)
        return [
            wire_event("response.created", response=self._response(rid, "in_progress", [])),
            wire_event("response.output_item.added", response_id=rid, output_index=0, item=item),
            wire_event(
                "conversation.item.added", previous_item_id=event.previous_item_id, item=item
            ),
            self._part("response.content_part.added", rid, item_id, part=audio_part("")),
        ]

    def _closing(self, rid: str, item_id: str, transcript: str, status: str) -> list[Wire]:
        item = assistant_item(item_id, status, transcript)
        return [
            self._part("response.output_audio.done", rid, item_id),
            self._part(
                "response.output_audio_transcript.done", rid, item_id, transcript=transcript
            ),
            self._part("response.content_part.done", rid, item_id, part=audio_part(transcript)),
            wire_event("response.output_item.done", response_id=rid, output_index=0, item=item),
            wire_event("conversation.item.done", item=item),
        ]

    def _done(self, event: ResponseDone) -> list[Wire]:
        rid, item_id = event.response_id, event.item_id
        if self.active_response == rid:
            self.active_response = None
        item_status = "completed" if event.status == "completed" else "incomplete"
        out: list[Wire] = []
        if rid in self._open:  # cancelled or failed: its audio never finished
            self._open.discard(rid)
            out = self._closing(rid, item_id, event.transcript, item_status)
        details = None
        if event.status != "completed":
            details = {
                "type": event.status,
                "reason": event.reason,
                "error": error_body(event.error) if event.error is not None else None,
            }
        t, usage = event.timings, event.usage
        calls = [
            call_item(c.item_id, c.call_id, c.name, c.arguments, c.status) for c in event.calls
        ]
        response = self._response(
            rid, event.status, [assistant_item(item_id, item_status, event.transcript), *calls]
        )
        response["status_details"] = details
        response["usage"] = {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "input_token_details": {"text_tokens": usage.prompt_tokens, "audio_tokens": 0},
            "output_token_details": {"text_tokens": usage.completion_tokens, "audio_tokens": 0},
        }
        response["voxline"] = {
            "release": self.release,
            "endpoint_ms": t.endpoint_ms,
            "stt_ms": t.stt_ms,
            "llm_ttft_ms": t.llm_ttft_ms,
            "first_phrase_ms": t.llm_first_phrase_ms,
            "tts_ttfb_ms": t.tts_ttfb_ms,
            "v2v_ms": t.v2v_ms,
            "llm_total_ms": t.llm_total_ms,
            "tts_total_ms": t.tts_total_ms,
            "total_ms": t.total_ms,
            "backends": {
                "stt": event.backends.stt,
                "llm": event.backends.llm,
                "tts": event.backends.tts,
            },
            "fallbacks": fallbacks_json(event.fallbacks),
            **route_json(event.route),
            **knowledge_json(event.knowledge),
        }
        out.append(wire_event("response.done", response=response))
        return out

    def _response(self, rid: str, status: str, output: list[Wire]) -> Wire:
        cfg = self.config
        max_tokens = cfg.params.max_tokens
        return {
            "id": rid,
            "object": "realtime.response",
            "status": status,
            "status_details": None,
            "output": output,
            "conversation_id": self.conversation_id,
            "output_modalities": ["audio"],
            "max_output_tokens": max_tokens if max_tokens is not None else "inf",
            "audio": {"output": {"format": pcm_format(cfg.output_sample_rate), "voice": cfg.voice}},
            "usage": None,
            "metadata": None,
        }

    def _part(self, kind: str, rid: str, item_id: str, **fields: Any) -> Wire:
        return wire_event(
            kind, response_id=rid, item_id=item_id, output_index=0, content_index=0, **fields
        )
