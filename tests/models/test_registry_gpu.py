"""The default chains of a CUDA machine, simulated on this CPU machine, and a GPU profile that
cannot start: every backend that cannot start is left out, and the server is ready on the rest.

The CUDA device count is patched where the registry (and faster-whisper) ask for it,
``ctranslate2.get_cuda_device_count``; everything else is real: torch still sees no CUDA, no
GPU weights are cached, GPT-SoVITS points at a folder that is not a checkout. The engines that
do start are the real packaged CPU ones, and the app is the real one.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import ctranslate2
import httpx
import pytest
import soundfile as sf

from models import registry
from models.registry import build_llm, build_stt, build_tts, chain_of, start_engines
from pipeline.errors import EngineUnavailable, ModelLoadError
from pipeline.settings import Settings
from server.app import create_app

pytestmark = pytest.mark.timeout(300)


def _settings(**env: str) -> Settings:
    return Settings(_env_file=None, hf_offline=True, demo_enabled=False, **env)  # type: ignore[call-arg]


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A machine where CTranslate2 sees one CUDA device and GPT-SoVITS is not configured."""
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    monkeypatch.delenv("GPT_SOVITS_HOME", raising=False)
    monkeypatch.delenv("GPT_SOVITS_PYTHON", raising=False)
    for name in ("STT", "LLM", "TTS"):
        monkeypatch.delenv(f"VOXLINE_{name}__CHAIN", raising=False)
    yield


def _names(chain: object) -> list[str]:
    return [b.name for b in chain.backends]  # type: ignore[attr-defined]


def test_a_cuda_machine_puts_the_gpu_first_and_tts_on_piper_without_gpt_sovits(
    cuda: None,
) -> None:
    settings = _settings()
    assert _names(build_stt(settings)) == ["whisper:cuda", "whisper:cpu"]
    assert _names(build_llm(settings)) == ["transformers:cuda", "transformers:cpu"]
    # GPT-SoVITS is not configured and Piper on CUDA needs onnxruntime-gpu, which is not here:
    # a gpu Piper would only be the cpu backend again
    assert registry.gpu_tts_engine(settings.tts) == "piper"
    assert _names(build_tts(settings)) == ["piper:cpu"]


def test_without_cuda_every_chain_is_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    settings = _settings()
    assert [chain_of(s) for s in (settings.stt, settings.llm, settings.tts)] == [["cpu"]] * 3


def test_the_gpu_tts_is_gpt_sovits_once_it_is_configured(
    cuda: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GPT_SOVITS_HOME", str(tmp_path / "checkout"))
    monkeypatch.setenv("GPT_SOVITS_PYTHON", str(tmp_path / "python"))
    # nothing there: building still works, start() will say what is missing
    assert _names(build_tts(_settings())) == ["gpt_sovits:cuda", "piper:cpu"]


def test_piper_on_the_gpu_only_with_onnxruntime_gpu(
    cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "onnxruntime_cuda", lambda: True)
    assert _names(build_tts(_settings())) == ["piper:cuda", "piper:cpu"]


def test_a_hosted_backend_comes_last(cuda: None) -> None:
    settings = _settings()
    settings.llm.hosted.base_url = "http://127.0.0.1:9/v1"
    assert chain_of(settings.llm) == ["gpu", "cpu", "hosted"]


async def test_gpu_backends_that_cannot_start_are_left_out_and_the_server_is_ready(
    cuda: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Each GPU backend fails in its own way: whisper large-v3-turbo is not cached (offline),
    # torch sees no CUDA device, the GPT-SoVITS "checkout" is an empty folder.
    monkeypatch.setenv("GPT_SOVITS_HOME", str(tmp_path))
    monkeypatch.setenv("GPT_SOVITS_PYTHON", str(tmp_path / "python"))
    settings = _settings()
    engines = await start_engines(settings)
    try:
        app = create_app(settings, engines=engines)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://voxline") as client:
            ready = await client.get("/readyz")
            speech = await client.post(
                "/v1/audio/speech",
                json={
                    "model": "tts-1",
                    "voice": "alloy",
                    "input": "Still here.",
                    "response_format": "wav",
                },
            )
        # the chain speaks at the rate of the backend that serves (Piper's), not at that of
        # GPT-SoVITS (32 kHz), which would resample every phrase for nothing
        rate = engines.tts.capabilities.sample_rate  # type: ignore[attr-defined]
    finally:
        await engines.aclose()
    assert rate == 22_050
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    expected = {
        "stt": ("whisper:cuda", "ModelLoadError", "large-v3-turbo"),
        "llm": ("transformers:cuda", "EngineUnavailable", "no CUDA device"),
        "tts": ("gpt_sovits:cuda", "ModelLoadError", "is not a GPT-SoVITS checkout"),
    }
    for stage, (name, error, why) in expected.items():
        gpu, cpu = body["stages"][stage]["backends"]
        assert gpu["name"] == name and gpu["started"] is False and gpu["state"] == "open"
        assert gpu["start_error"].startswith(error) and why in gpu["start_error"]
        assert cpu["started"] is True and cpu["start_error"] is None
        assert body["stages"][stage]["usable"] is True
    assert speech.status_code == 200, speech.text
    assert sf.info(io.BytesIO(speech.content)).duration > 0.3


async def test_a_stage_whose_every_backend_fails_fails_the_start(cuda: None) -> None:
    settings = _settings()
    settings.llm.chain = ["gpu"]
    settings.tts.chain = ["gpu"]  # Piper on CUDA without onnxruntime-gpu
    with pytest.raises((EngineUnavailable, ModelLoadError)):
        await start_engines(settings)
