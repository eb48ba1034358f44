"""A GPU-first configuration on a machine without a GPU, from the outside (issue 12).

``voxline serve`` runs in its own process with every chain set to ``["gpu","cpu"]`` on this
CPU-only machine. No GPU backend can start (CTranslate2 and torch see no CUDA device; the gpu TTS
is Piper, as GPT-SoVITS is not configured, and Piper on CUDA needs onnxruntime-gpu), and the
server must still come up ready on its CPU backends, say in ``/readyz`` which backends did not
start and why, and answer a voice turn over real HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from pipeline.audio import encode_wav
from tests.conftest import speak
from tests.server.test_fallback_servers import Server, _base_env, _free_port

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = _base_env()
    for name in ("GPT_SOVITS_HOME", "GPT_SOVITS_PYTHON"):
        env.pop(name, None)
    for stage in ("STT", "LLM", "TTS"):
        env[f"VOXLINE_{stage}__CHAIN"] = '["gpu","cpu"]'
    log = tmp_path_factory.mktemp("logs") / "server.log"
    server = Server(_free_port(), env, log)
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_gpu_first_chains_start_on_the_cpu_and_say_why(server: Server) -> None:
    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    why = {
        "stt": ("whisper:cuda", "EngineUnavailable", "CTranslate2 sees no CUDA device"),
        "llm": ("transformers:cuda", "EngineUnavailable", "torch sees no CUDA device"),
        "tts": ("piper:cuda", "EngineUnavailable", "onnxruntime-gpu"),
    }
    for stage, (name, error, reason) in why.items():
        gpu, cpu = body["stages"][stage]["backends"]
        assert (gpu["name"], gpu["started"]) == (name, False)
        assert gpu["start_error"].startswith(error) and reason in gpu["start_error"]
        assert cpu["name"].endswith(":cpu") and cpu["started"] is True
        assert body["stages"][stage]["usable"] is True


def test_a_turn_is_answered_on_the_cpu(server: Server) -> None:
    question = encode_wav(speak("What is the capital of France?"))
    files = {"file": ("q.wav", question, "audio/wav")}
    response = httpx.post(f"{server.url}/v1/turns", files=files, timeout=120)
    assert response.status_code == 200, response.text
    turn = response.json()
    assert turn["backends"] == {"stt": "whisper:cpu", "llm": "transformers:cpu", "tts": "piper:cpu"}
    assert "france" in turn["transcript"].lower()
    assert turn["reply"].strip() and turn["audio"]["seconds"] > 0.3
    # the gpu backends never started, so no call tried them: nothing to fall back from
    assert all(f["reason"] == "circuit_open" for f in turn["fallbacks"])
