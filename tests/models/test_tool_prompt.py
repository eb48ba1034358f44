"""How functions, calls and results reach a chat template (models._tool_prompt).

The native path is rendered by llama-cpp-python's own Jinja formatter with a template written
like Qwen2.5's tool section (no Qwen weights ship in a package; its template's fields are what
``chat_dicts`` must provide); the SmolLM2 path is also exercised by the real engine's tests.
"""

from __future__ import annotations

import json

import pytest

from models._tool_prompt import TOOL_OPEN, chat_dicts, native_tools
from pipeline.types import FunctionTool, Message, ToolCall

llama_chat_format = pytest.importorskip("llama_cpp.llama_chat_format")

QWEN_LIKE = (
    "{%- if tools %}<|im_start|>system\n{{ messages[0].content }}\n<tools>"
    "{%- for t in tools %}\n{{ t | tojson }}{%- endfor %}\n</tools><|im_end|>\n{%- endif %}"
    "{%- for m in messages %}{%- if m.role == 'system' and tools %}"
    "{%- elif m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n"
    "{%- for c in m.tool_calls %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}'
    "\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n"
    "</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "<|im_start|>assistant\n"
)
WEATHER = FunctionTool(
    "get_weather", "Weather.", {"type": "object", "properties": {"city": {"type": "string"}}}
)
CALL = ToolCall("call_1", "get_weather", '{"city": "Oslo"}')
CONVERSATION = [
    Message("system", "Be brief."),
    Message("user", "Weather in Oslo?"),
    Message("assistant", "", tool_calls=(CALL,)),
    Message("tool", "rain, 8 degrees", tool_call_id="call_1"),
]


def _render(template: str, messages: list[Message], native: bool) -> str:
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=template, eos_token="<|im_end|>", bos_token=""
    )
    chat, tools = chat_dicts(messages, (WEATHER,), native=native)
    prompt: str = formatter(messages=chat, tools=tools).prompt
    return prompt


def test_a_template_that_knows_tools_renders_them_its_own_way() -> None:
    assert native_tools(QWEN_LIKE)
    prompt = _render(QWEN_LIKE, CONVERSATION, native=True)
    assert '"name": "get_weather"' in prompt and '"parameters"' in prompt  # the tools section
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}' in prompt
    assert "<tool_response>\nrain, 8 degrees\n</tool_response>" in prompt


def test_a_template_without_tools_gets_them_in_the_system_message() -> None:
    plain = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endfor %}<|im_start|>assistant\n"
    )
    assert not native_tools(plain)
    prompt = _render(plain, CONVERSATION, native=False)
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.") and TOOL_OPEN in system
    assert json.dumps(WEATHER.parameters) in system
    assert f'{TOOL_OPEN}\n{{"name": "get_weather", "arguments": {{"city": "Oslo"}}}}' in prompt
    assert "<|im_start|>user\n<tool_response>\nrain, 8 degrees" in prompt
    assert "<|im_start|>tool" not in prompt  # a role this template's model never saw
