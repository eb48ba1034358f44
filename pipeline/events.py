"""What a realtime session tells its client: one frozen value per event, in the order it happened.

The events follow OpenAI's Realtime API closely enough that the WebSocket layer maps each to one
or a few wire events (noted per class) without keeping state of its own, but they carry our
values (``AudioChunk``, ``TurnTimings``, ``Usage``) rather than JSON, so the session stays
testable without a socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.errors import InvalidInput, StageError, VoxlineError
from pipeline.fallback_types import StageFallback
from pipeline.knowledge import KnowledgeReport
from pipeline.router import Route
from pipeline.session_config import SessionConfig
from pipeline.stages import CallRecord
from pipeline.types import AudioChunk, Backends, Role, TurnTimings, Usage

ErrorType = Literal["invalid_request_error", "server_error"]
ResponseStatus = Literal["completed", "cancelled", "failed", "incomplete"]
ResponseReason = Literal["turn_detected", "client_cancelled", "max_output_tokens", "session_closed"]
UsageKind = Literal["transcription", "response", "speculation"]
ItemKind = Literal["message", "function_call", "function_call_output"]


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """Something went wrong; the session stays open (``error``).

    Attributes:
        message: What happened, for the client.
        type: ``invalid_request_error`` (the client's mistake) or ``server_error``.
        code: Machine-readable code, e.g. ``input_audio_buffer_commit_empty``.
        param: The request field at fault, if any.
        stage: For a stage failure, which stage (``stt``, ``llm``, ``tts``, ``vad``).
        backend: For a stage failure, the backend that failed.
    """

    message: str
    type: ErrorType
    code: str | None = None
    param: str | None = None
    stage: str | None = None
    backend: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorEvent:
        """The event for an exception (an unexpected one is reported by type name only)."""
        if isinstance(exc, InvalidInput):
            return cls(exc.message, "invalid_request_error", code=exc.code, param=exc.param)
        if isinstance(exc, StageError):
            return cls(
                exc.message,
                "server_error",
                code=type(exc).__name__,
                stage=exc.stage,
                backend=exc.backend,
            )
        if isinstance(exc, VoxlineError):
            return cls(str(exc), "server_error", code=type(exc).__name__)
        return cls(f"internal error ({type(exc).__name__})", "server_error", code="internal")


@dataclass(frozen=True, slots=True)
class ConversationItem:
    """One item of the conversation as the client sees it (``conversation.item``).

    Attributes:
        item_id: Its id.
        role: ``user`` or ``assistant`` (``tool`` for a function's result).
        text: Transcript or text; ``None`` while a user's audio is not transcribed yet. For a
            function call, its arguments; for a function's result, the output.
        audio: Whether the item is (or was) audio.
        kind: ``message``, ``function_call`` or ``function_call_output``.
        call_id: Function call and result: the call's id.
        name: Function call: the function's name.
    """

    item_id: str
    role: Role
    text: str | None
    audio: bool
    kind: ItemKind = "message"
    call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """The session's configuration changed (``session.updated``)."""

    config: SessionConfig


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Server VAD heard speech start (``input_audio_buffer.speech_started``).

    ``audio_start_ms`` counts from the first audio of the session and includes prefix padding.
    """

    item_id: str
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """Server VAD decided the turn ended (``input_audio_buffer.speech_stopped``).

    ``audio_end_ms`` includes the silence that decided it, as OpenAI's does.
    """

    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class InputCommitted:
    """The input audio became a user item (``input_audio_buffer.committed``)."""

    item_id: str
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class InputCleared:
    """The input audio buffer was dropped (``input_audio_buffer.cleared``)."""


@dataclass(frozen=True, slots=True)
class ItemAdded:
    """A user item joined the conversation (``conversation.item.created``).

    Assistant items are announced by ``ResponseCreated`` instead.
    """

    item: ConversationItem
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class TranscriptPartial:
    """The user's speech so far, while they speak
    (``conversation.item.input_audio_transcription.delta``).

    ``text`` is the whole transcript so far (a later partial may revise an earlier one), not an
    appended delta.
    """

    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class TranscriptCompleted:
    """The final transcript of a user item
    (``conversation.item.input_audio_transcription.completed``).

    Attributes:
        speculative: The transcription had started (or finished) before the end of the turn was
            confirmed, on audio that turned out to hold all of the speech.
        compute_ms: How long that transcription took, wherever it started.
    """

    item_id: str
    text: str
    language: str | None
    speculative: bool
    compute_ms: float


@dataclass(frozen=True, slots=True)
class TranscriptFailed:
    """A user item could not be transcribed
    (``conversation.item.input_audio_transcription.failed``)."""

    item_id: str
    error: ErrorEvent


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    """A response started; its assistant item is ``item_id`` (``response.created``,
    ``response.output_item.added``, ``conversation.item.created``, ``content_part.added``)."""

    response_id: str
    item_id: str
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class ResponseTranscriptDelta:
    """Text of the phrase whose audio starts next (``response.audio_transcript.delta``)."""

    response_id: str
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ResponseAudioDelta:
    """Assistant audio, mono float32 at the session's output rate (``response.audio.delta``)."""

    response_id: str
    item_id: str
    audio: AudioChunk


@dataclass(frozen=True, slots=True)
class ResponseAudioDone:
    """All audio of the response was sent (``response.audio.done``,
    ``response.audio_transcript.done``, ``content_part.done``, ``output_item.done``)."""

    response_id: str
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class FunctionCallStarted:
    """The model chose a function to call (``response.output_item.added`` and
    ``conversation.item.added`` of a ``function_call`` item).

    Attributes:
        output_index: The item's place among the response's outputs (the spoken message is 0).
    """

    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str


@dataclass(frozen=True, slots=True)
class FunctionCallDelta:
    """A piece of a call's arguments as the model writes them
    (``response.function_call_arguments.delta``)."""

    response_id: str
    item_id: str
    output_index: int
    call_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class FunctionCallDone:
    """A call is complete and checked against its schema
    (``response.function_call_arguments.done``, ``response.output_item.done``,
    ``conversation.item.done``). ``arguments`` is final: after a repair it differs from the
    deltas (docs/tools.md, "Checking and repair"); ``status`` is ``incomplete`` when the
    response ended (cancelled, failed) before the call was."""

    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str
    status: Literal["completed", "incomplete"] = "completed"


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """The response ended (``response.done``).

    Attributes:
        status: ``completed``, ``cancelled`` (barge-in or client), ``failed`` (a stage error, also
            sent as an ``ErrorEvent``) or ``incomplete`` (the token limit cut the reply).
        reason: Why it was cancelled or incomplete.
        transcript: The assistant text as it now stands in the history (truncated to what was
            heard when cancelled).
        usage: LLM token accounting.
        timings: The turn's latencies in ms (``pipeline.timing``); the speech-side fields
            are ``None`` for a response not triggered by speech.
        backends: Which backend served each stage.
        error: The failure, when ``status`` is ``failed``.
        fallbacks: Every switch to another backend while the reply was made.
        knowledge: Retrieval and groundedness, when the session searches vector stores.
    """

    response_id: str
    item_id: str
    status: ResponseStatus
    reason: ResponseReason | None
    transcript: str
    usage: Usage
    timings: TurnTimings
    backends: Backends
    error: ErrorEvent | None = None
    fallbacks: tuple[StageFallback, ...] = ()
    calls: tuple[FunctionCallDone, ...] = ()
    """The function calls of the response, in order (outputs after the spoken message)."""
    route: Route | None = None
    """The LLM tier that answered and why (``pipeline.router``), when the server has tiers."""
    knowledge: KnowledgeReport | None = None


@dataclass(frozen=True, slots=True)
class ItemTruncated:
    """An assistant item was cut to what the client played (``conversation.item.truncated``)."""

    item_id: str
    audio_end_ms: int
    text: str


@dataclass(frozen=True, slots=True)
class UsageReported:
    """Engine work the session did, for the server's accounting (no wire event of its own).

    Every piece of work is reported exactly once, when it ends, even while the session closes:

    - ``transcription``: one STT job (a partial, a speculative or a final transcription; a job
      cancelled midway reports what it had done);
    - ``response``: the LLM and TTS calls of an announced response, just before its
      ``ResponseDone`` (``failed`` when the response failed);
    - ``speculation``: a speculative reply that was dropped before anyone heard it.

    Attributes:
        calls: The engine calls, as the stage base class recorded them (``pipeline.metering``).
        kind: What the work was for.
        response_id: The response, for ``response`` and ``speculation``.
        failed: The response failed (its work is not billed).
    """

    calls: tuple[CallRecord, ...]
    kind: UsageKind
    response_id: str | None = None
    failed: bool = False


Event = (
    ErrorEvent
    | SessionUpdated
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | InputCleared
    | ItemAdded
    | TranscriptPartial
    | TranscriptCompleted
    | TranscriptFailed
    | ResponseCreated
    | ResponseTranscriptDelta
    | ResponseAudioDelta
    | ResponseAudioDone
    | FunctionCallStarted
    | FunctionCallDelta
    | FunctionCallDone
    | ResponseDone
    | ItemTruncated
    | UsageReported
)
"""Every event a session emits."""
