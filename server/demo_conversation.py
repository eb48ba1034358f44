"""A realtime conversation as the demo page shows it: server events in, ``DemoView`` s out.

Kept apart from the socket (``server.demo_client``) because this is where the protocol is read:
which events make a chat line, a partial transcript, reply audio or a turn's timings, and when a
turn is over. It needs no connection, so it reads the same whether the events came from a live
server or a recording.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 24_000
"""Rate of the pcm16 audio both ways (OpenAI Realtime's)."""

Int16Array = npt.NDArray[np.int16]

# (label, timing key in response.done's ``voxline``, stage whose backend served it)
STAGES: tuple[tuple[str, str, str | None], ...] = (
    ("endpoint", "endpoint_ms", None),
    ("STT", "stt_ms", "stt"),
    ("LLM first phrase", "first_phrase_ms", "llm"),
    ("TTS first audio", "tts_ttfb_ms", "tts"),
    ("V2V", "v2v_ms", None),
)
_NO_BACKEND = {"endpoint": "server VAD", "V2V": "end to end"}


@dataclass(frozen=True, slots=True)
class StageTiming:
    """One bar of a turn's latency chart: a stage, its milliseconds, the backend that served it."""

    stage: str
    ms: float | None
    backend: str


@dataclass(frozen=True, slots=True)
class TurnStats:
    """One finished response, as ``response.done`` reported it.

    Attributes:
        number: 1 for the conversation's first response.
        status: ``completed``, ``cancelled``, ``failed`` or ``incomplete``.
        stages: The latency breakdown, in ``STAGES`` order (``ms`` is ``None`` where the server
            did not report it, e.g. no endpoint for a turn ended by hand).
        audio_s: Seconds of reply audio received.
    """

    number: int
    status: str
    stages: tuple[StageTiming, ...]
    audio_s: float


@dataclass(frozen=True, slots=True)
class ChatLine:
    """One message of the conversation as shown."""

    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True, slots=True)
class DemoView:
    """What the page shows now.

    Attributes:
        partial: The user's speech as transcribed so far (the final transcript once there).
        chat: The conversation, oldest first.
        audio: Reply audio (24 kHz int16) received since the previous view that took audio.
        turns: Every finished response of the conversation, oldest first.
        errors: What went wrong during the current turn.
        done: The current turn is over (answered, or nothing more will come).
    """

    partial: str
    chat: tuple[ChatLine, ...]
    audio: Int16Array
    turns: tuple[TurnStats, ...]
    errors: tuple[str, ...]
    done: bool = False


@dataclass(slots=True)
class TurnState:
    """What the current turn is waiting for.

    Attributes:
        heard: The server's VAD heard speech start.
        pending: The last user item committed.
        settled: That item was answered, or will not be (nothing intelligible in it).
        over: The client is done with this turn: the next audio starts a new one.
        errors: What went wrong so far.
    """

    heard: bool = False
    pending: str | None = None
    settled: bool = False
    over: bool = False
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Line:
    role: Literal["user", "assistant"]
    text: str
    audio_samples: int = 0


class Conversation:
    """The page's state, updated one server event at a time (``apply``)."""

    def __init__(self) -> None:
        self.turn = TurnState()
        self.speaking = False
        """Speech started and has not stopped (server VAD)."""
        self._lines: list[_Line] = []
        self._line_of: dict[str, int] = {}  # item id / response id -> index in _lines
        self._partial = ""
        self._active: set[str] = set()  # responses in progress
        self._audio: list[Int16Array] = []
        self._turns: list[TurnStats] = []

    def settled(self) -> bool:
        """The current turn's answer is over and nothing else is in progress."""
        return self.turn.settled and not self.speaking and not self._active

    def view(self, *, take_audio: bool = True, done: bool = False) -> DemoView:
        """A snapshot; ``take_audio`` hands over the reply audio received since the last one."""
        audio = np.zeros(0, dtype=np.int16)
        if take_audio and self._audio:
            audio, self._audio = np.concatenate(self._audio), []
        return DemoView(
            partial=self._partial,
            chat=tuple(ChatLine(line.role, line.text) for line in self._lines),
            audio=audio,
            turns=tuple(self._turns),
            errors=tuple(self.turn.errors),
            done=done,
        )

    def apply(self, event: dict[str, Any]) -> None:
        """Take one server event (unknown ones are ignored)."""
        kind, turn = event.get("type"), self.turn
        item_id = str(event.get("item_id") or "")
        if kind == "input_audio_buffer.speech_started":
            self.speaking, turn.heard, self._partial = True, True, ""
        elif kind == "input_audio_buffer.speech_stopped":
            self.speaking = False
        elif kind == "input_audio_buffer.committed":
            turn.pending, turn.settled = item_id, False
            self._line(item_id, "user").text = "…"
        elif kind == "conversation.item.input_audio_transcription.delta":
            # voxline sends the whole text so far beside the delta: a partial may revise one
            whole = (event.get("voxline") or {}).get("transcript")
            delta = str(event.get("delta", ""))
            self._partial = str(whole) if whole is not None else self._partial + delta
        elif kind == "conversation.item.input_audio_transcription.completed":
            self._partial = text = str(event.get("transcript", "")).strip()
            self._line(item_id, "user").text = text or "(nothing intelligible)"
            if item_id == turn.pending and not text:
                turn.settled = True  # the server does not answer silence
        elif kind == "conversation.item.input_audio_transcription.failed":
            self._line(item_id, "user").text = "(not transcribed)"
            turn.errors.append(_message(event))
            turn.settled = turn.settled or item_id == turn.pending
        elif kind == "response.created":
            response_id = str((event.get("response") or {}).get("id", ""))
            self._active.add(response_id)
            self._line(response_id, "assistant")
        elif kind == "response.output_audio_transcript.delta":
            line = self._line(str(event.get("response_id", "")), "assistant")
            line.text += str(event.get("delta", ""))
        elif kind == "response.output_audio.delta":
            pcm = np.frombuffer(base64.b64decode(event.get("delta", "")), dtype="<i2")
            self._audio.append(pcm.astype(np.int16))
            self._line(str(event.get("response_id", "")), "assistant").audio_samples += len(pcm)
        elif kind == "response.done":
            self._response_done(event.get("response") or {})
        elif kind == "error":
            turn.errors.append(_message(event))

    def _line(self, key: str, role: Literal["user", "assistant"]) -> _Line:
        if key not in self._line_of:
            self._line_of[key] = len(self._lines)
            self._lines.append(_Line(role, ""))
        return self._lines[self._line_of[key]]

    def _response_done(self, response: dict[str, Any]) -> None:
        response_id = str(response.get("id", ""))
        self._active.discard(response_id)
        status = str(response.get("status", "completed"))
        line = self._line(response_id, "assistant")
        kept = _transcript(response)  # what the history kept (cut to what was heard if cancelled)
        if kept is not None:
            line.text = kept
        if status == "cancelled":
            line.text += " (interrupted)"
            return  # new speech cut it: the turn that follows gets the answer
        if status == "failed":
            error = (response.get("status_details") or {}).get("error") or {}
            self.turn.errors.append(str(error.get("message") or "the response failed"))
        self.turn.settled = self.turn.pending is not None
        voxline = response.get("voxline") or {}
        backends = voxline.get("backends") or {}
        stages = tuple(
            StageTiming(
                label,
                _ms(voxline.get(key)),
                str(backends.get(stage, "?")) if stage else _NO_BACKEND[label],
            )
            for label, key, stage in STAGES
        )
        audio_s = round(line.audio_samples / SAMPLE_RATE, 3)
        self._turns.append(TurnStats(len(self._turns) + 1, status, stages, audio_s))


def _ms(value: object) -> float | None:
    return round(float(value), 1) if isinstance(value, int | float) else None


def _message(event: dict[str, Any]) -> str:
    error = event.get("error") or {}
    return str(error.get("message") or error.get("code") or "error")


def _transcript(response: dict[str, Any]) -> str | None:
    for item in response.get("output") or []:
        for part in item.get("content") or []:
            if isinstance(part, dict) and isinstance(part.get("transcript"), str):
                return str(part["transcript"])
    return None
