"""Function tools: what the client offers, and checking what the model calls.

A tool enters the turn where knowledge does, between the transcript and the LLM (docs/tools.md):
the offered functions ride in ``GenerationParams.tools``, and the model's calls come back on the
LLM's own stream (``TextDelta.tool_call`` pieces, then the complete calls on the last delta), so
the reply path stays one path and engines that know nothing of tools keep working.

This module holds what every engine and route shares:

- **parsing** OpenAI's two tool shapes, the Chat one (``{"type": "function", "function":
  {"name", "description", "parameters"}}``) and the Realtime one (the same fields flat), and
  ``tool_choice`` (``"auto"``, ``"none"``, ``"required"`` or a function by name). Bad input is an
  ``InvalidInput`` naming the field, before any engine work; a parameters schema that is not a
  valid JSON schema is refused too. Entries of another type (``file_search``, served by the
  knowledge base) are left to their own parser;
- **checking** a call: the function was offered, the arguments are a JSON object valid against
  its schema (``jsonschema``, Draft 2020-12 unless the schema says otherwise);
- **repairing** it once (:func:`checked_calls`): an invalid call is sent back to the same model
  with the validation error as the tool's result and that function forced; a call still invalid
  is an ``InvalidToolCall``. A reply that was required to call a function and did not gets the
  same one repair attempt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, cast

import jsonschema

from pipeline.errors import InvalidInput, InvalidToolCall
from pipeline.types import (
    ForcedTool,
    FunctionTool,
    GenerationParams,
    Message,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)

MAX_TOOLS = 32
"""Most functions offered at once: each one's schema is prompt the model reads every turn."""
MAX_SCHEMA_CHARS = 8_192
"""Largest parameters schema (as JSON) of one function."""
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

REPAIR_PROMPT = (
    "Error: the arguments of {name} do not match its parameters schema ({error}). "
    "Call {name} again with arguments that match the schema."
)
"""The tool result a model gets for an invalid call, before its one repair attempt."""
MISSING_CALL_PROMPT = "You must call one of the functions now."
"""The user message of a repair attempt when a required call was not made."""


def parse_tools(tools: object, *, param: str, nested: bool) -> tuple[FunctionTool, ...]:
    """The function tools of an OpenAI ``tools`` list; entries of other types are skipped.

    Args:
        tools: The list as the client sent it (``None``: no tools).
        param: The field's name for errors (``tools``, ``session.tools``).
        nested: Chat's shape (fields under ``"function"``) rather than Realtime's (flat).

    Raises:
        InvalidInput: not a list of objects, a function without a valid name, a duplicate
            name, a description that is not text, or parameters that are not a JSON schema
            of an object.
    """
    if tools is None:
        return ()
    if not isinstance(tools, list):
        raise InvalidInput(f"{param} must be a list of tools", param=param, code="invalid_value")
    out: list[FunctionTool] = []
    for i, tool in enumerate(tools):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise InvalidInput(
                f"{where} must be an object with a type", param=where, code="invalid_value"
            )
        if tool["type"] != "function":
            continue  # another parser's (file_search: the knowledge base)
        body: object = tool.get("function") if nested else tool
        if nested:
            where += ".function"
        if not isinstance(body, dict):
            raise InvalidInput(f"{where} must be an object", param=where, code="invalid_value")
        out.append(_function(body, where))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise InvalidInput("function names must be unique", param=param, code="invalid_value")
    if len(out) > MAX_TOOLS:
        raise InvalidInput(
            f"at most {MAX_TOOLS} functions may be offered", param=param, code="invalid_value"
        )
    return tuple(out)


def _function(body: Mapping[str, Any], where: str) -> FunctionTool:
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"{where}.name must be 1-64 letters, digits, '_' or '-'",
            param=f"{where}.name",
            code="invalid_value",
        )
    description = body.get("description") or ""
    if not isinstance(description, str) or len(description) > 4_096:
        raise InvalidInput(
            f"{where}.description must be text of at most 4096 characters",
            param=f"{where}.description",
            code="invalid_value",
        )
    schema = body.get("parameters")
    schema = {"type": "object", "properties": {}} if schema is None else schema
    check_schema(schema, f"{where}.parameters")
    return FunctionTool(name, description, schema)


def check_schema(schema: object, param: str) -> None:
    """Refuse a parameters schema that is not a JSON schema of an object.

    Raises:
        InvalidInput: not an object schema, too large, or not a valid JSON schema.
    """
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise InvalidInput(
            f'{param} must be a JSON schema with "type": "object"',
            param=param,
            code="invalid_value",
        )
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise InvalidInput(
            f"{param} is larger than {MAX_SCHEMA_CHARS} characters",
            param=param,
            code="invalid_value",
        )
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidInput(
            f"{param} is not a valid JSON schema: {exc.message}", param=param, code="invalid_value"
        ) from exc


def parse_tool_choice(
    choice: object, tools: Sequence[FunctionTool] | None, *, param: str, nested: bool
) -> ToolChoice:
    """``tool_choice`` as the client sent it (``None``: ``auto``).

    Args:
        choice: The field as sent.
        tools: The functions offered (``None``: not known here, e.g. a realtime update that
            changes only ``tool_choice``: the session checks it against its tools).
        param: The field's name for errors.
        nested: Chat's shape (``{"type": "function", "function": {"name"}}``).

    Raises:
        InvalidInput: an unknown mode, a function that is not offered, or a call required
            with no function offered.
    """
    if choice is None:
        return "auto"
    if choice in ("auto", "none", "required"):
        if choice == "required" and tools is not None and not tools:
            raise InvalidInput(
                "tool_choice 'required' needs at least one function in tools",
                param=param,
                code="invalid_value",
            )
        return cast(ToolChoice, choice)
    if isinstance(choice, dict) and choice.get("type") == "function":
        body = choice.get("function") if nested else choice
        name = body.get("name") if isinstance(body, dict) else None
        known = {t.name for t in tools} if tools is not None else None
        if not isinstance(name, str) or (known is not None and name not in known):
            raise InvalidInput(
                f"{param} names a function that is not in tools: {str(name)[:64]!r}",
                param=param,
                code="invalid_value",
            )
        return ForcedTool(name)
    raise InvalidInput(
        f"{param} must be 'auto', 'none', 'required' or a function",
        param=param,
        code="invalid_value",
    )


def offered(params: GenerationParams) -> tuple[FunctionTool, ...]:
    """The functions the model may call in this call (none when ``tool_choice`` is ``none``)."""
    return () if params.tool_choice == "none" else params.tools


def must_call(params: GenerationParams) -> bool:
    """Whether the reply has to be a function call."""
    return bool(offered(params)) and params.tool_choice != "auto"


def call_error(call: ToolCall, tools: Sequence[FunctionTool]) -> str | None:
    """What is wrong with ``call`` (``None``: it is valid)."""
    tool = next((t for t in tools if t.name == call.name), None)
    if tool is None:
        return f"there is no function {call.name[:64]!r}"
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        return "the arguments are not valid JSON"
    if not isinstance(arguments, dict):
        return "the arguments must be a JSON object"
    validator = jsonschema.validators.validator_for(tool.parameters)(tool.parameters)
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "arguments"
    return f"{where}: {error.message}"[:300]


class _Call:
    """One call being assembled from its deltas."""

    def __init__(self, first: ToolCallDelta) -> None:
        self.call_id, self.name = first.call_id, first.name
        self.parts: list[str] = []

    def done(self) -> ToolCall:
        return ToolCall(self.call_id, self.name, "".join(self.parts))


Stream = Callable[[list[Message], GenerationParams], AsyncIterator[TextDelta]]
"""An engine's own stream (``LLM._stream``): what a repair attempt is asked of."""


async def checked_calls(
    stream: Stream,
    messages: list[Message],
    params: GenerationParams,
    *,
    backend: str,
) -> AsyncIterator[TextDelta]:
    """``stream(messages, params)`` with its function calls checked and repaired once.

    Text and tool-call deltas pass through as they come (a call's arguments stream live); the
    last delta is held until every call is checked, and then carries the complete calls (a
    repaired call's arguments replace the streamed ones: see docs/tools.md, "Checking and
    repair") and the usage of every attempt.

    Raises:
        InvalidToolCall: a call still invalid after its repair attempt.
    """
    tools = offered(params)
    calls: dict[int, _Call] = {}
    last: TextDelta | None = None
    first = stream(messages, params)
    async with _closing(first):  # a consumer gone (barge-in) stops the engine now
        async for delta in first:
            if delta.tool_call is not None:
                piece = delta.tool_call
                if piece.index not in calls:
                    calls[piece.index] = _Call(piece)
                calls[piece.index].parts.append(piece.arguments)
                yield delta
            elif delta.finish_reason is not None or delta.usage is not None:
                last = delta
            elif delta.text:
                yield delta
    usage = last.usage if last is not None else None
    done = [c.done() for _, c in sorted(calls.items())]
    if last is not None and last.tool_calls:
        # checked (and maybe repaired) already, by the backend a fallback chain called: its
        # calls are final, the pieces streamed were their first attempt's
        done = list(last.tool_calls)
    if not done and not must_call(params):
        if last is not None:
            yield last
        return
    final: list[ToolCall] = []
    pending = done or [ToolCall("", "", "")]  # a required call that was not made
    for call in pending:
        error = call_error(call, tools) if call.name else "no function was called"
        if error is not None:
            repaired, extra = await _repair(stream, messages, params, call, error)
            usage = _add(usage, extra)
            error = call_error(repaired, tools) if repaired.name else "no function was called"
            if error is not None:
                raise InvalidToolCall(
                    f"the model's call of {repaired.name or 'a function'} is invalid after a "
                    f"repair attempt: {error}",
                    backend=backend,
                    call_id=repaired.call_id,
                    name=repaired.name,
                )
            # a repair keeps the streamed call's id: the client already knows the call by it
            call = dataclasses.replace(repaired, call_id=call.call_id or repaired.call_id)
        final.append(call)
    yield TextDelta("", usage=usage, finish_reason="tool_calls", tool_calls=tuple(final))


async def _repair(
    stream: Stream,
    messages: list[Message],
    params: GenerationParams,
    call: ToolCall,
    error: str,
) -> tuple[ToolCall, Usage | None]:
    """One more attempt at ``call``: the model sees its invalid call and the error."""
    if call.name and any(t.name == call.name for t in params.tools):
        retry = [
            *messages,
            Message("assistant", "", tool_calls=(call,)),
            Message(
                "tool",
                REPAIR_PROMPT.format(name=call.name, error=error),
                tool_call_id=call.call_id,
            ),
        ]
        choice: ToolChoice = ForcedTool(call.name)
    else:
        retry = [*messages, Message("user", MISSING_CALL_PROMPT)]
        choice = "required"
    repaired: dict[int, _Call] = {}
    usage: Usage | None = None
    again = stream(retry, dataclasses.replace(params, tool_choice=choice))
    async with _closing(again):
        async for delta in again:
            if delta.tool_call is not None:
                piece = delta.tool_call
                repaired.setdefault(piece.index, _Call(piece)).parts.append(piece.arguments)
            usage = delta.usage or usage
    if not repaired:
        return ToolCall(call.call_id, call.name, call.arguments), usage
    return repaired[min(repaired)].done(), usage


@contextlib.asynccontextmanager
async def _closing(items: AsyncIterator[TextDelta]) -> AsyncIterator[AsyncIterator[TextDelta]]:
    """``contextlib.aclosing`` for any async iterator (an engine's generator has ``aclose``)."""
    try:
        yield items
    finally:
        close = getattr(items, "aclose", None)
        if close is not None:
            await close()


def _add(a: Usage | None, b: Usage | None) -> Usage | None:
    if a is None or b is None:
        return a or b
    return Usage(a.prompt_tokens + b.prompt_tokens, a.completion_tokens + b.completion_tokens)


def new_call_id() -> str:
    """A fresh ``call_`` id."""
    import uuid

    return f"call_{uuid.uuid4().hex[:24]}"
