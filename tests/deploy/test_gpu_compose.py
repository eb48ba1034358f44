"""deploy/docker-compose.gpu.yml: voxline with vLLM serving its LLM through the hosted backend.

Docker cannot run here, so the stack is not started; what is checked is the file's structure
and its wiring: it parses, voxline's hosted LLM points at the vLLM service's port and served
model name, both services get the GPU and the same weights volume, voxline waits for vLLM to be
healthy, and every ``VOXLINE_`` variable it sets is a real setting whose value validates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from pipeline.settings import Settings
from tests.deploy.settings_names import is_setting

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.gpu.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _flags(service: dict[str, Any]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in service["command"] if "=" in arg)


def test_voxlines_llm_is_served_by_the_vllm_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    vllm, voxline = services["vllm"], services["voxline"]
    env = voxline["environment"]
    assert json.loads(env["VOXLINE_LLM__CHAIN"])[0] == "hosted"
    url = urlsplit(env["VOXLINE_LLM__HOSTED__BASE_URL"])
    flags = _flags(vllm)
    assert (url.hostname, url.port, url.path) == ("vllm", int(flags["port"]), "/v1")
    assert env["VOXLINE_LLM__HOSTED__MODEL"] == flags["served-model-name"]
    assert vllm["entrypoint"] == ["vllm", "serve"]
    assert vllm["command"][0].startswith("/models/")  # the weights come from the volume
    assert voxline["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert str(flags["port"]) in " ".join(vllm["healthcheck"]["test"])


def test_both_services_get_the_gpu_and_the_weights_volume(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert "models:/models:ro" in service["volumes"]
    assert compose["volumes"]["models"]["name"] == "voxline-models"
    build = compose["services"]["voxline"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == (
        ROOT / "Dockerfile.gpu"
    )


def test_every_voxline_variable_is_a_setting_and_validates(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = compose["services"]["voxline"]["environment"]
    names = [name for name in env if name.startswith("VOXLINE_")]
    assert names and all(is_setting(name) for name in names), names
    for name in names:
        assert "${" not in str(env[name])  # nothing left to the shell
        monkeypatch.setenv(name, str(env[name]))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]  # pydantic-settings keyword
    assert settings.llm.hosted.base_url == "http://vllm:8001/v1"
    assert settings.tts.gpt_sovits.memory_reserve_gib == 6.0
