"""The settings tree: environment variables, validation, secrets and field documentation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from pipeline.settings import (
    AudioLimits,
    FallbackSettings,
    GptSovitsVoice,
    LLMSettings,
    Settings,
    STTSettings,
    TTSSettings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No VOXLINE_ variable of the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.upper().startswith("VOXLINE_"):
            monkeypatch.delenv(key)


def settings() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]  # pydantic-settings init kwarg


def test_defaults_without_environment() -> None:
    s = settings()

    assert s.stt.engine == "whisper"
    assert s.llm.engine == "auto"  # llama.cpp when installed, else transformers
    assert s.tts.engine == "piper"
    assert s.stt.hosted.base_url is None
    assert s.tts.gpt_sovits.voices == {}
    assert s.audio == AudioLimits()


def test_env_vars_reach_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLINE_LLM__MAX_TOKENS", "64")
    monkeypatch.setenv("VOXLINE_STT__BEAM_SIZE", "5")
    monkeypatch.setenv("VOXLINE_STT__LANGUAGE", "de")
    monkeypatch.setenv("VOXLINE_STT__HOSTED__BASE_URL", "http://127.0.0.1:8001/v1")
    monkeypatch.setenv("VOXLINE_TTS__GPT_SOVITS__POOL_SIZE", "2")
    monkeypatch.setenv("VOXLINE_TTS__GPT_SOVITS__STREAMING_MODE", "3")
    monkeypatch.setenv("VOXLINE_AUDIO__MAX_SECONDS", "30.5")
    monkeypatch.setenv("VOXLINE_HF_OFFLINE", "true")
    monkeypatch.setenv("VOXLINE_CACHE_DIR", "/tmp/voxline-cache")

    s = settings()

    assert s.llm.max_tokens == 64
    assert s.stt.beam_size == 5
    assert s.stt.language == "de"
    assert s.stt.hosted.base_url == "http://127.0.0.1:8001/v1"
    assert s.llm.hosted.base_url is None  # the same field in another section is untouched
    assert s.tts.gpt_sovits.pool_size == 2
    assert s.tts.gpt_sovits.streaming_mode == 3
    assert s.audio.max_seconds == 30.5
    assert s.audio.max_bytes == AudioLimits().max_bytes  # siblings keep their defaults
    assert s.hf_offline is True
    assert s.cache_dir == Path("/tmp/voxline-cache")


def test_voices_are_read_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "VOXLINE_TTS__GPT_SOVITS__VOICES",
        '{"anna": {"ref_audio": "/voices/anna.wav", "prompt_text": "Hello there."},'
        ' "li": {"ref_audio": "li.wav", "prompt_text": "ni hao", "prompt_lang": "zh"}}',
    )
    monkeypatch.setenv("VOXLINE_TTS__GPT_SOVITS__DEFAULT_VOICE", "li")

    voices = settings().tts.gpt_sovits.voices

    assert set(voices) == {"anna", "li"}
    assert voices["anna"] == GptSovitsVoice(
        ref_audio=Path("/voices/anna.wav"), prompt_text="Hello there."
    )
    assert isinstance(voices["anna"].ref_audio, Path)
    assert voices["li"].prompt_lang == "zh"
    assert voices["li"].text_lang == "en"
    assert settings().tts.gpt_sovits.default_voice == "li"


def test_variables_without_the_prefix_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM__MAX_TOKENS", "7")
    monkeypatch.setenv("VOXLINE_LLM_MAX_TOKENS", "7")  # single underscore: not nested

    assert settings().llm.max_tokens == LLMSettings().max_tokens


def test_dotenv_file_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("VOXLINE_LLM__MAX_TOKENS=12\nVOXLINE_STT__BEAM_SIZE=3\n")
    monkeypatch.setenv("VOXLINE_STT__BEAM_SIZE", "4")

    s = Settings(_env_file=env_file)  # type: ignore[call-arg]

    assert s.llm.max_tokens == 12
    assert s.stt.beam_size == 4


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VOXLINE_STT__BEAM_SIZE", "0"),
        ("VOXLINE_STT__BEAM_SIZE", "11"),
        ("VOXLINE_LLM__TEMPERATURE", "5"),
        ("VOXLINE_LLM__TOP_P", "0"),
        ("VOXLINE_LLM__MAX_TOKENS", "0"),
        ("VOXLINE_LLM__ENGINE", "vllm"),
        ("VOXLINE_TTS__SPEED", "0.1"),
        ("VOXLINE_TTS__GPT_SOVITS__POOL_SIZE", "-1"),
        ("VOXLINE_TTS__GPT_SOVITS__STREAMING_MODE", "7"),
        ("VOXLINE_TTS__GPT_SOVITS__VOICES", '{"anna": {"ref_audio": "a.wav"}}'),
        ("VOXLINE_STT__DEVICE", "tpu"),
    ],
)
def test_invalid_env_values_raise(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ValidationError):
        settings()


def test_invalid_values_raise_when_built_in_code() -> None:
    with pytest.raises(ValidationError):
        STTSettings(beam_size=0)
    with pytest.raises(ValidationError):
        LLMSettings(temperature=5)
    with pytest.raises(ValidationError):
        TTSSettings(speed=5)
    assert STTSettings(beam_size=10).beam_size == 10
    assert LLMSettings(temperature=2.0).temperature == 2.0


def test_api_keys_are_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-test-very-secret-0123456789"
    monkeypatch.setenv("VOXLINE_LLM__HOSTED__API_KEY", key)

    s = settings()

    api_key = s.llm.hosted.api_key
    assert isinstance(api_key, SecretStr)
    assert api_key.get_secret_value() == key
    for shown in (repr(s), str(s), repr(s.llm.hosted), s.model_dump_json(), str(s.model_dump())):
        assert key not in shown


def _reachable_models(model: type[BaseModel]) -> set[type[BaseModel]]:
    found = {model}
    for field in model.model_fields.values():
        for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found |= _reachable_models(candidate)
    return found


SECTIONS: list[type[BaseModel]] = sorted(_reachable_models(Settings), key=lambda m: m.__name__)
"""Every model reachable from the tree: a section added later is checked without a list to edit."""


def test_the_tree_is_walked() -> None:
    assert {Settings, STTSettings, GptSovitsVoice, FallbackSettings} <= set(SECTIONS)


@pytest.mark.parametrize("model", SECTIONS, ids=lambda m: m.__name__)
def test_every_field_has_a_description(model: type[BaseModel]) -> None:
    # field docstrings become descriptions (use_attribute_docstrings): the README table's source
    missing = [name for name, f in model.model_fields.items() if not (f.description or "").strip()]

    assert missing == []
    assert model.__doc__
