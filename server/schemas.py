"""Wire shapes of the chat and turn routes: pydantic request/response models and SSE framing.

Requests follow OpenAI's shapes closely enough that stock clients work unchanged, and no further:
fields we do not use are ignored (``extra="ignore"``), as OpenAI-compatible servers usually do, and
the models convert to the pipeline's own frozen values (``Message``, ``GenerationParams``) at
once, so nothing past the route sees a dict. Responses are models too, so a shape that drifts
from what clients parse fails in a test, not in a client.

The response plumbing both routes share lives here too: SSE framing, an SSE response that closes
its event generator and stops the work feeding it when the response ends for any reason (client
gone included), and ``cancel_on_disconnect`` for non-streamed answers. Stopping the work closes
the stages' async iterators, which stops their worker threads.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from typing import Annotated, Any, Literal, TypeVar, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from pipeline.audio import encode_wav
from pipeline.errors import InvalidInput
from pipeline.fallback_types import StageFallback
from pipeline.stages import validate_chat
from pipeline.turn import TurnResult
from pipeline.types import GenerationParams, Message, Role

T = TypeVar("T")

MAX_STOP_SEQUENCES = 4
"""OpenAI accepts up to four stop sequences; so do we."""

# -- chat completions: request ----------------------------------------------------------------


class TextPart(BaseModel):
    """One part of a message's content; only text parts are understood (others are a 400)."""

    model_config = ConfigDict(extra="ignore", strict=True)  # the document's types, no coercion

    type: Literal["text"]
    text: str


def _json_int(value: object) -> object:
    # JSON Schema's integers include 3.0; strict mode refuses it, lax mode also takes "3"
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_json_int)]
"""An integer as JSON Schema means it (``3`` or ``3.0``), never a string or a boolean."""
PositiveJsonInt = Annotated[int, Field(ge=1), BeforeValidator(_json_int)]
"""A ``JsonInt`` of at least 1."""


def _not_null(schema: dict[str, Any]) -> None:
    """Document a field that is optional in the model (so the route names it when missing)
    as never null."""
    schema["anyOf"] = [s for s in schema.get("anyOf", ()) if s.get("type") != "null"]
    schema.pop("default", None)


class ChatMessageIn(BaseModel):
    """A message as clients send it: ``content`` is a string or a list of text parts."""

    # what ``to_message`` and ``validate_chat`` accept, declared for the OpenAPI document
    model_config = ConfigDict(
        extra="ignore", strict=True, json_schema_extra={"required": ["role", "content"]}
    )

    role: str = Field(json_schema_extra={"enum": ["system", "developer", "user", "assistant"]})
    content: str | list[TextPart] | None = Field(default=None, json_schema_extra=_not_null)

    def to_message(self, index: int) -> Message:
        """The pipeline's message (roles are checked by ``validate_chat``)."""
        if self.content is None:
            raise InvalidInput("content is required", param=f"messages[{index}].content")
        if isinstance(self.content, str):
            text = self.content
        else:
            text = "".join(part.text for part in self.content)
        # "developer" is OpenAI's newer name for the system role; stock clients send it.
        role = "system" if self.role == "developer" else self.role
        return Message(cast(Role, role), text)


class StreamOptions(BaseModel):
    """``stream_options``: only ``include_usage`` has a meaning here."""

    model_config = ConfigDict(extra="ignore", strict=True)  # the document's types, no coercion

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body (OpenAI's shape; unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore", strict=True)  # the document's types, no coercion

    # Bounds checked by ``to_pipeline`` (with messages naming the field sent) are declared in
    # the JSON schema only, so the OpenAPI document says what is accepted.
    model: str | None = None
    messages: list[ChatMessageIn] = Field(json_schema_extra={"minItems": 1})
    max_tokens: PositiveJsonInt | None = None
    max_completion_tokens: PositiveJsonInt | None = None
    temperature: float | None = Field(
        default=None, json_schema_extra={"minimum": 0.0, "maximum": 2.0}
    )
    top_p: float | None = Field(
        default=None, json_schema_extra={"exclusiveMinimum": 0.0, "maximum": 1.0}
    )
    stop: str | list[str] | None = Field(
        default=None, json_schema_extra={"maxItems": MAX_STOP_SEQUENCES}
    )
    seed: JsonInt | None = None
    n: JsonInt | None = Field(default=None, json_schema_extra={"minimum": 1, "maximum": 1})
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage

    def to_pipeline(self) -> tuple[list[Message], GenerationParams]:
        """The conversation and sampling options, validated as every LLM would.

        Raises:
            InvalidInput: any field no engine should see (``param`` names it).
        """
        if self.n is not None and self.n != 1:
            raise InvalidInput("only n=1 is supported", param="n")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        if len(stops) > MAX_STOP_SEQUENCES:
            raise InvalidInput(
                f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed", param="stop"
            )
        messages = [m.to_message(i) for i, m in enumerate(self.messages)]
        # max_completion_tokens replaced max_tokens in OpenAI's API: when both are sent, it wins.
        max_tokens = self.max_completion_tokens
        param = "max_completion_tokens"
        if max_tokens is None:
            max_tokens, param = self.max_tokens, "max_tokens"
        if max_tokens is not None and max_tokens < 1:  # checked here to name the field sent
            raise InvalidInput(f"{param} must be at least 1", param=param)
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(stops),
            seed=self.seed,
        )
        validate_chat(messages, params)
        return messages, params


# -- chat completions: response ---------------------------------------------------------------

FinishReason = Literal["stop", "length"]


class ChatUsage(BaseModel):
    """Token accounting, OpenAI's ``usage`` object."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The reply in a non-streamed completion."""

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    """The one choice of a non-streamed completion."""

    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    """A ``chat.completion`` object."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: ChatUsage


class ChunkDelta(BaseModel):
    """What one streamed chunk adds to the reply (unset fields are left out, as OpenAI does)."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _without_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(BaseModel):
    """The one choice of a streamed chunk."""

    index: int = 0
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """A ``chat.completion.chunk`` object (``choices`` is empty in the usage chunk)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: ChatUsage | None = None


def completion_id() -> str:
    """A fresh ``chatcmpl-`` id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    """Unix seconds, OpenAI's ``created``."""
    return int(time.time())


# -- voice turns ------------------------------------------------------------------------------


class TurnTimingsOut(BaseModel):
    """Milliseconds of the turn (docs/architecture.md's vocabulary); absent when not measured."""

    model_config = ConfigDict(extra="forbid")

    stt_ms: float | None = None
    llm_ttft_ms: float | None = None
    llm_first_phrase_ms: float | None = None
    llm_total_ms: float | None = None
    tts_ttfb_ms: float | None = None
    tts_total_ms: float | None = None
    total_ms: float | None = None
    endpoint_ms: float | None = None
    v2v_ms: float | None = None


class BackendsOut(BaseModel):
    """The backend that served each stage."""

    model_config = ConfigDict(extra="forbid")

    stt: str
    llm: str
    tts: str


class TurnUsage(BaseModel):
    """The LLM's token accounting for the turn."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class TurnAudio(BaseModel):
    """The spoken reply: ``data`` is a base64 wav file (absent in the CLI's JSON)."""

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0)
    sample_rate: int = Field(gt=0)
    format: Literal["wav"] | None = None
    data: str | None = None


class FallbackOut(BaseModel):
    """One switch to another backend during the turn."""

    stage: str
    from_backend: str
    to_backend: str | None
    reason: str
    error: str | None = None
    after_output: bool = False


class TurnResponse(BaseModel):
    """``POST /v1/turns`` result (and, without audio data, ``voxline turn --json``)."""

    model_config = ConfigDict(extra="forbid")

    transcript: str
    reply: str
    timings: TurnTimingsOut
    backends: BackendsOut
    fallbacks: list[FallbackOut] = []
    usage: TurnUsage
    cost_usd: float | None = None
    audio: TurnAudio
    release: str | None = None
    """The release that answered (docs/releases.md); absent from ``voxline turn --json``."""


def turn_json(result: TurnResult) -> dict[str, object]:
    """The JSON object of one turn, without the audio itself (``voxline turn --json``)."""
    return {
        "transcript": result.transcript,
        "reply": result.reply,
        "timings": {k: v for k, v in asdict(result.timings).items() if v is not None},
        "backends": asdict(result.backends),
        "fallbacks": fallbacks_json(result.fallbacks),
        "cost_usd": result.cost_usd,
        "audio": {
            "seconds": round(result.audio.duration, 3),
            "sample_rate": result.audio.sample_rate,
        },
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "total_tokens": result.usage.total_tokens,
        },
    }


def fallbacks_json(switches: Sequence[StageFallback]) -> list[dict[str, object]]:
    """Switches to another backend, for a JSON result (stage, from, to, reason, error type)."""
    return [{"stage": s.stage, **asdict(s.fallback)} for s in switches]


def turn_response(result: TurnResult, *, release: str | None = None) -> TurnResponse:
    """The HTTP result of one turn: ``turn_json`` plus the reply as a base64 wav file, and the
    release that answered."""
    body = turn_json(result)
    audio = cast(dict[str, object], body["audio"])
    data = base64.b64encode(encode_wav(result.audio)).decode("ascii")
    body["audio"] = {**audio, "format": "wav", "data": data}
    body["release"] = release
    return TurnResponse.model_validate(body)
