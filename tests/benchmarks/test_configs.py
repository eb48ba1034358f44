"""``--config``: settings files, presets, their combination, and the server's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.configs import PRESETS, ConfigSpec, device_overrides, parse_config
from benchmarks.runner import plan_scenarios
from pipeline.errors import InvalidInput


def test_a_settings_file_and_a_preset_combine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VOXLINE_LLM__ENGINE", raising=False)
    monkeypatch.delenv("VOXLINE_LLM__MAX_TOKENS", raising=False)
    env = tmp_path / "small.env"
    env.write_text("VOXLINE_LLM__MAX_TOKENS=33\nVOXLINE_LLM__ENGINE=llamacpp\n")
    from_file = parse_config(str(env)).settings()
    assert (from_file.llm.engine, from_file.llm.max_tokens) == ("llamacpp", 33)

    both = parse_config(f"{env}+transformers")
    settings = both.settings()
    assert both.label == "small+transformers"
    # the preset wins over the file; the file's other values stay
    assert (settings.llm.engine, settings.llm.max_tokens) == ("transformers", 33)
    assert both.environ() == {
        "VOXLINE_LLM__MAX_TOKENS": "33",
        "VOXLINE_LLM__ENGINE": "transformers",
    }


def test_presets_and_device_overrides() -> None:
    spec = parse_config("llamacpp+whisper-base").with_overrides(device_overrides("cpu"))
    s = spec.settings()
    assert spec.label == "llamacpp+whisper-base"
    assert (s.llm.engine, s.stt.model) == ("llamacpp", "packaged:whisper-base")
    assert (s.stt.device, s.llm.device, s.tts.device) == ("cpu", "cpu", "cpu")
    assert device_overrides("cuda")["tts"] == {"device": "auto"}  # Piper: GPU only if it can
    assert ConfigSpec().settings().llm.engine in {"transformers", "llamacpp", "hosted"}
    assert set(PRESETS) >= {"transformers", "llamacpp"}


def test_unknown_configs_and_scenarios_are_refused() -> None:
    with pytest.raises(InvalidInput, match="neither a settings file nor a preset"):
        parse_config("no-such-thing")
    with pytest.raises(InvalidInput, match="unknown scenario 'sst'"):
        plan_scenarios(["sst"], 1, None)
    with pytest.raises(InvalidInput, match="two or more --config"):
        plan_scenarios(["compare"], 1, None)
    with pytest.raises(InvalidInput, match="drop --url"):
        plan_scenarios(["compare", "load"], 2, "ws://h")


def test_scenario_defaults() -> None:
    assert plan_scenarios([], 1, None) == ("stt", "llm", "tts", "turn")
    assert plan_scenarios(["compare"], 2, None) == ("turn",)
    assert plan_scenarios(["compare", "llm", "llm"], 2, None) == ("llm",)
    assert plan_scenarios(["turn"], 3, None) == ("turn",)  # several --config: a comparison
