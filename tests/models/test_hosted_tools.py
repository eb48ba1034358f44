"""The hosted LLM engine's function calls against a real OpenAI-compatible server:
llama-cpp-python's own (its ``[server]`` extra, in the ``llama`` extra) on the packaged
SmolLM2, with its ``chatml-function-calling`` format.

That server streams a call only for a named function (``tool_choice`` ``auto`` and
``required`` are refused mid-stream: "Automatic streaming tool choice is not supported"), so the
test forces one; the scripted peer (tests/server/test_chat_tools.py) covers the rest.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import jsonschema
import pytest

pytest.importorskip("llama_cpp.server.app")

from models.llm_hosted import HostedLLM  # after the skip
from models.weights import packaged_path
from pipeline.settings import HostedSettings
from pipeline.types import ForcedTool, FunctionTool, GenerationParams, Message

pytestmark = pytest.mark.llama

WEATHER = FunctionTool(
    "get_weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    port = _free_port()
    model = packaged_path("smollm2-135m-instruct", stage="llm")
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model)]
    command += ["--chat_format", "chatml-function-calling", "--n_ctx", "2048"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("llama-cpp-python's server did not start")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_a_forced_call_comes_back_checked_from_llama_cpp_server(llama_server: str) -> None:
    llm = HostedLLM(HostedSettings(base_url=llama_server, max_retries=0, timeout_s=60))
    params = GenerationParams(
        max_tokens=60, temperature=0.0, tools=(WEATHER,), tool_choice=ForcedTool("get_weather")
    )
    try:
        deltas = [d async for d in llm.stream([Message("user", "Weather in Paris?")], params)]
    finally:
        await llm.aclose()
    last = deltas[-1]
    assert last.finish_reason == "tool_calls"
    [call] = last.tool_calls
    assert call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), dict(WEATHER.parameters))
    pieces = [d.tool_call for d in deltas if d.tool_call is not None]
    assert "".join(p.arguments for p in pieces) == call.arguments
