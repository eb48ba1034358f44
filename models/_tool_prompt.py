"""How a local model sees functions, its own calls and their results.

One format for every local engine: the model calls a function by writing ``<tool_call>``, then
``{"name": ..., "arguments": {...}}``, then ``</tool_call>`` (Qwen2.5's and Hermes' format, which
the largest family of small open instruct models was trained on). A chat template that knows
tools (its Jinja source renders ``tools`` and ``tool_calls``, as Qwen2.5's does) gets them in its
own way; for one that does not (SmolLM2's), the functions are described at the end of the
system message, a past call is written into the assistant's text in the same format, and a
function's result is a user message in ``<tool_response>`` tags.

The engine (``models.llm_llamacpp``) watches for ``TOOL_OPEN`` in the reply and then generates the
call under a grammar, so the JSON itself never depends on the model following instructions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pipeline.types import FunctionTool, Message, ToolCall

TOOL_OPEN = "<tool_call>"
"""What starts a call in the model's reply."""

CALL_PREFIX = '\n{"name": "'
"""What follows ``TOOL_OPEN``, up to the function's name."""

_INSTRUCTIONS = (
    "You can call these functions (JSON schemas of their parameters):\n{tools}\n"
    "To call one, reply with only this, and nothing after it:\n"
    '<tool_call>\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n</tool_call>'
)


def native_tools(template: str) -> bool:
    """Whether a chat template renders functions and calls itself."""
    return "tools" in template and "tool_call" in template


def _arguments(call: ToolCall) -> object:
    try:
        return json.loads(call.arguments)
    except ValueError:  # a past call's arguments are shown as sent, even when broken
        return call.arguments


def _call_text(call: ToolCall) -> str:
    body = json.dumps({"name": call.name, "arguments": _arguments(call)}, ensure_ascii=False)
    return f"{TOOL_OPEN}\n{body}\n</tool_call>"


def tool_specs(tools: Sequence[FunctionTool]) -> list[dict[str, Any]]:
    """The functions in OpenAI's Chat shape (what templates and hosted peers expect)."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.parameters),
            },
        }
        for t in tools
    ]


def chat_dicts(
    messages: Sequence[Message], tools: Sequence[FunctionTool], *, native: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages for a chat template, and its ``tools`` argument (``None``: no tools).

    Args:
        messages: The conversation (calls and results included).
        tools: The functions offered now (may be empty while the history holds calls).
        native: The template renders tools itself (``native_tools``).
    """
    if native:
        out: list[dict[str, Any]] = []
        for m in messages:
            d: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.tool_calls:
                d["tool_calls"] = [
                    {
                        "type": "function",
                        "id": c.call_id,
                        "function": {"name": c.name, "arguments": _arguments(c)},
                    }
                    for c in m.tool_calls
                ]
            if m.tool_call_id is not None:
                d["tool_call_id"] = m.tool_call_id
            out.append(d)
        return out, (tool_specs(tools) or None)
    out = []
    for m in messages:
        if m.role == "tool":
            result = f"<tool_response>\n{m.content}\n</tool_response>"
            out.append({"role": "user", "content": result})
            continue
        content = m.content
        if m.tool_calls:
            calls = "\n".join(_call_text(c) for c in m.tool_calls)
            content = f"{content}\n{calls}".strip()
        out.append({"role": m.role, "content": content})
    if tools:
        specs = "\n".join(
            json.dumps(
                {"name": t.name, "description": t.description, "parameters": t.parameters},
                ensure_ascii=False,
            )
            for t in tools
        )
        instructions = _INSTRUCTIONS.format(tools=specs)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instructions}"}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out, None


def name_grammar(tools: Sequence[FunctionTool]) -> str:
    """GBNF for a function's name and its closing quote (names are ``[A-Za-z0-9_-]``)."""
    return "root ::= " + " | ".join(f'"{t.name}\\""' for t in tools) + "\n"


def arguments_prefix(name: str) -> str:
    """What follows the name, up to the arguments object."""
    return f'{name}", "arguments": '
