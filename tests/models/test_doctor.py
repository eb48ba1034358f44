"""``voxline doctor`` on this CPU machine: the same path a GPU lease runs with ``--gpu``.

The STT and LLM are random-weight models built on the spot (no hub, no weights), the TTS is the
packaged Piper voice; the turns run through the real engines and ``pipeline.turn``. With
``--gpu`` on this machine every GPU check fails and the report says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from models.doctor import doctor_settings, report_lines, run_doctor
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def _settings() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]  # pydantic-settings keyword


async def test_the_doctor_runs_turns_on_random_weights_on_the_cpu(tmp_path: Path) -> None:
    report = await run_doctor(_settings(), turns=2, workdir=tmp_path)
    assert report.ok, "\n".join(report_lines(report))
    assert [load.stage for load in report.loads] == ["stt", "llm", "tts"]
    assert all(load.error is None for load in report.loads)
    assert [t["backends"] for t in report.turns] == [
        {"stt": "whisper:cpu", "llm": "transformers:cpu", "tts": "piper:cpu"}
    ] * 2
    for turn in report.turns:
        # random weights: the words are nonsense, but there are words, spoken
        assert turn["stt_ms"] > 0 and turn["llm_ttft_ms"] > 0 and turn["tts_ttfb_ms"] > 0
        assert turn["reply_words"] == 32 and turn["audio_s"] > 1.0
    assert report.turns[0]["warm_up"] and not report.turns[1]["warm_up"]
    lines = report_lines(report)
    assert lines[-1] == "ok" and any("median of 1 turn" in line for line in lines)
    assert not os.listdir(tmp_path)  # the random models were removed


async def test_with_gpu_on_a_cpu_machine_the_doctor_fails_and_says_why(tmp_path: Path) -> None:
    report = await run_doctor(_settings(), gpu=True, turns=1, workdir=tmp_path)
    assert not report.ok
    failed = {c.name for c in report.checks if c.ok is False}
    assert {"torch CUDA", "CTranslate2 CUDA"} <= failed
    loads = {load.stage: load for load in report.loads}
    assert "no CUDA device" in str(loads["stt"].error)
    assert "no CUDA device" in str(loads["llm"].error)
    # TTS falls back to the CPU there: GPT-SoVITS is not configured, Piper needs onnxruntime-gpu
    tts = loads["tts"]
    assert tts.error is None
    assert [b["started"] for b in tts.backends] == [False, True]
    # the turns still time what started, the others on CPU stand-ins, and the report fails
    assert [load.stage for load in report.loads][3:] == [
        "stt (CPU stand-in)",
        "llm (CPU stand-in)",
    ]
    assert [t["backends"] for t in report.turns] == [
        {"stt": "whisper:cpu", "llm": "transformers:cpu", "tts": "piper:cpu"}
    ]
    assert report_lines(report)[-1] == "FAILED"


def test_the_doctor_uses_the_chosen_backends_and_random_models(tmp_path: Path) -> None:
    models = (tmp_path / "whisper", tmp_path / "llm")
    gpu = doctor_settings(_settings(), gpu=True, models=models)
    assert (gpu.stt.chain, gpu.llm.chain, gpu.tts.chain) == (["gpu"], ["gpu"], ["gpu", "cpu"])
    assert gpu.stt.gpu.model == str(models[0]) and gpu.llm.gpu.model == str(models[1])
    assert gpu.llm.gpu.engine == "transformers" and gpu.hf_offline
    configured = doctor_settings(_settings(), gpu=True, models=None)
    assert configured.llm.gpu.model == "Qwen/Qwen2.5-7B-Instruct"


def test_the_device_entry_point_runs_without_the_server_and_without_pyav(tmp_path: Path) -> None:
    # What a GPU lease has: the pipeline and models packages and a few carried wheels, no PyAV
    # (hidden here by an import hook), nothing of server/ or cli/ (no FastAPI, no typer).
    script = textwrap.dedent(
        """
        import importlib.abc, json, sys

        class NoPyAV(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "av" or name.startswith("av."):
                    raise ModuleNotFoundError(name)
                return None

        sys.meta_path.insert(0, NoPyAV())
        from models.doctor import main

        code = main(["--turns", "1", "--json"])
        server = any(m.split(".")[0] in ("server", "cli") for m in sys.modules)
        print(json.dumps({"code": code, "server": server}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VOXLINE_LLM__ENGINE": "transformers"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=240,
        check=False,
    )
    *report_text, last = result.stdout.strip().splitlines()
    assert json.loads(last) == {"code": 0, "server": False}, result.stderr[-3000:]
    report = json.loads("\n".join(report_text))
    assert report["ok"] and any("PyAV is not installed" in note for note in report["notes"])


def test_voxline_doctor_is_a_cli_command(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VOXLINE_LLM__ENGINE": "transformers"}
    result = subprocess.run(
        [sys.executable, "-m", "cli", "doctor", "--turns", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "voxline doctor: cpu, random weights" in result.stdout
    assert result.stdout.strip().endswith("ok")
