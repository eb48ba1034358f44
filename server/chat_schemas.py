"""Wire shapes of ``/v1/chat/completions``: pydantic request/response models.

Requests follow OpenAI's shapes closely enough that stock clients work unchanged, and no further:
fields we do not use are ignored (``extra="ignore"``), as OpenAI-compatible servers usually do, and
the models convert to the pipeline's own frozen values (``Message``, ``GenerationParams``) at
once, so nothing past the route sees a dict. Responses are models too, so a shape that drifts
from what clients parse fails in a test, not in a client. The SSE plumbing the routes share is in
``server.streaming``; the turn route's shapes in ``server.turn_schemas``.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, TypeVar, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from pydantic.json_schema import SkipJsonSchema

from pipeline.errors import InvalidInput
from pipeline.stages import validate_chat
from pipeline.tool_calls import parse_tool_choice, parse_tools
from pipeline.types import GenerationParams, Message, Role, ToolCall

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


class FunctionCallIn(BaseModel):
    """The function of a tool call in an assistant message."""

    model_config = ConfigDict(extra="ignore", strict=True)

    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(max_length=32_768)


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant message (``messages[i].tool_calls[j]``)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    """A message as clients send it: ``content`` is a string or a list of text parts; an
    assistant message may carry ``tool_calls`` (then ``content`` may be null), and a ``tool``
    message names the call it answers (``tool_call_id``)."""

    # what ``to_message`` and ``validate_chat`` accept, declared for the OpenAPI document
    model_config = ConfigDict(
        extra="ignore", strict=True, json_schema_extra={"required": ["role", "content"]}
    )

    role: str = Field(json_schema_extra={"enum": ["system", "developer", "user", "assistant"]})
    content: str | list[TextPart] | None = Field(default=None, json_schema_extra=_not_null)
    # Tools (docs/tools.md) are left out of the OpenAPI document: whether a call or a result is
    # accepted depends on other messages and on the tools offered, which a JSON schema of one
    # message cannot say (the document's generated requests would be refused).
    tool_calls: SkipJsonSchema[list[ToolCallIn] | None] = Field(default=None, max_length=32)
    tool_call_id: SkipJsonSchema[str | None] = Field(default=None, max_length=128)

    def to_message(self, index: int) -> Message:
        """The pipeline's message (roles and tool call ids are checked by ``validate_chat``)."""
        calls = tuple(
            ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ()
        )
        if self.content is None and not calls:
            raise InvalidInput("content is required", param=f"messages[{index}].content")
        if self.content is None:
            text = ""
        elif isinstance(self.content, str):
            text = self.content
        else:
            text = "".join(part.text for part in self.content)
        # "developer" is OpenAI's newer name for the system role; stock clients send it.
        role = "system" if self.role == "developer" else self.role
        if calls and role != "assistant":
            raise InvalidInput(
                "only assistant messages carry tool_calls", param=f"messages[{index}].tool_calls"
            )
        call_id = self.tool_call_id if role == "tool" else None
        if role == "tool" and not call_id:
            raise InvalidInput(
                "a tool message needs the tool_call_id it answers",
                param=f"messages[{index}].tool_call_id",
            )
        return Message(cast(Role, role), text, tool_calls=calls, tool_call_id=call_id)


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
    # left out of the OpenAPI document, as messages' tool calls are (see ``ChatMessageIn``)
    tools: SkipJsonSchema[list[Any] | None] = None
    tool_choice: SkipJsonSchema[Any] = None

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
        tools = parse_tools(self.tools, param="tools", nested=True)
        if self.tools is not None and len(tools) != len(self.tools):
            raise InvalidInput(
                "only tools of type 'function' are served here", param="tools", code="invalid_value"
            )
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(stops),
            seed=self.seed,
            tools=tools,
            tool_choice=parse_tool_choice(
                self.tool_choice, tools, param="tool_choice", nested=True
            ),
        )
        validate_chat(messages, params)
        return messages, params


# -- chat completions: response ---------------------------------------------------------------

FinishReason = Literal["stop", "length", "tool_calls"]


class ChatUsage(BaseModel):
    """Token accounting, OpenAI's ``usage`` object."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCallOut(BaseModel):
    """The function of a tool call the model made."""

    name: str | None = None
    arguments: str | None = None

    @model_serializer(mode="wrap")
    def _without_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ToolCallOut(BaseModel):
    """A tool call the model made (``message.tool_calls[i]``, or a piece of one in a chunk:
    then ``index`` says which, and only the first piece has ``id``, ``type`` and the name)."""

    index: int | None = None
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallOut

    @model_serializer(mode="wrap")
    def _without_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class AssistantMessage(BaseModel):
    """The reply in a non-streamed completion (``content`` is null when it only calls tools)."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None

    @model_serializer(mode="wrap")
    def _without_no_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if out.get("tool_calls") is None:
            out.pop("tool_calls", None)
        return cast(dict[str, Any], out)


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
    voxline: dict[str, str] | None = None
    """``llm_tier`` and ``route_reason``: the tier that answered and why (with LLM tiers)."""

    @model_serializer(mode="wrap")
    def _without_no_route(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if out.get("voxline") is None:
            out.pop("voxline", None)
        return cast(dict[str, Any], out)


class ChunkDelta(BaseModel):
    """What one streamed chunk adds to the reply (unset fields are left out, as OpenAI does)."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallOut] | None = None

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
    voxline: dict[str, str] | None = None
    """On the finish chunk: the LLM tier that answered and why (with LLM tiers)."""

    @model_serializer(mode="wrap")
    def _without_no_route(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if out.get("voxline") is None:
            out.pop("voxline", None)
        return cast(dict[str, Any], out)


def completion_id() -> str:
    """A fresh ``chatcmpl-`` id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    """Unix seconds, OpenAI's ``created``."""
    return int(time.time())
