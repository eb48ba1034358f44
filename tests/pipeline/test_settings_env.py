"""Release env files: parsed, checked against the settings tree, laid over a base."""

from __future__ import annotations

import pytest

from pipeline.errors import InvalidInput
from pipeline.settings import LLMSettings, Settings
from pipeline.settings_env import apply, parse_env, to_tree


def _base(**sections: object) -> Settings:
    return Settings(_env_file=None, **sections)  # type: ignore[call-arg]  # pydantic-settings kw


def test_lines_become_nested_overrides_laid_over_the_base() -> None:
    env = parse_env(
        "# a comment\n"
        "export VOXLINE_LLM__SYSTEM_PROMPT='Answer in one word.'\n"
        "voxline_llm__max_tokens=24\n"
        'VOXLINE_LLM__CHAIN=["cpu"]\n'
        "VOXLINE_TTS__SPEED=1.25\n"
    )
    tree = to_tree(env)
    assert tree == {
        "llm": {"system_prompt": "Answer in one word.", "max_tokens": "24", "chain": ["cpu"]},
        "tts": {"speed": "1.25"},
    }
    base = _base(llm=LLMSettings(temperature=0.7))
    settings = apply(base, tree)
    assert settings.llm.system_prompt == "Answer in one word."
    assert settings.llm.max_tokens == 24 and settings.llm.chain == ["cpu"]
    assert settings.tts.speed == 1.25
    assert settings.llm.temperature == 0.7  # the base's, not the default's
    assert base.llm.max_tokens == 96  # the base is untouched


def test_the_process_environment_does_not_override_a_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = _base()
    monkeypatch.setenv("VOXLINE_LLM__MAX_TOKENS", "7")
    monkeypatch.setenv("VOXLINE_TTS__SPEED", "2.0")
    settings = apply(base, {"llm": {"max_tokens": "30"}})
    assert settings.llm.max_tokens == 30
    assert settings.tts.speed == base.tts.speed == 1.0


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("VOXLINE_LLM__MAX_TOKEN=4", "VOXLINE_LLM__MAX_TOKEN: unknown setting 'MAX_TOKEN'"),
        ("VOXLINE_NOPE=1", "VOXLINE_NOPE: unknown setting 'NOPE'"),
        ("LLM__MAX_TOKENS=4", "LLM__MAX_TOKENS: not a voxline setting"),
        ("VOXLINE_LLM__HOSTED__API_KEY=sk-abc", "VOXLINE_LLM__HOSTED__API_KEY: a secret"),
        ("VOXLINE_LLM__CHAIN=cpu", "VOXLINE_LLM__CHAIN: not JSON"),
        ("VOXLINE_LLM__MAX_TOKENS__X=1", "VOXLINE_LLM__MAX_TOKENS has no fields"),
        ("VOXLINE_STATE__URL=sqlite:///x", "VOXLINE_STATE__URL: not in a release"),
        ("VOXLINE_KB__EMBEDDING_MODEL=x", "VOXLINE_KB__EMBEDDING_MODEL: the store's"),
        # a section or a dict set whole as JSON: its secrets and refused fields still are
        (
            'VOXLINE_KB={"top_k": 2, "embedding_model": "x"}',
            "VOXLINE_KB: embedding_model: the store's",
        ),
        (
            'VOXLINE_LLM__HOSTED={"base_url": "http://h/v1", "api_key": "sk-abc"}',
            "VOXLINE_LLM__HOSTED: holds a secret (api_key)",
        ),
        (
            'VOXLINE_LLM__TIERS={"big": {"engine": "hosted", "hosted": {"api_key": "sk-abc"}}}',
            "VOXLINE_LLM__TIERS: holds a secret (big.hosted.api_key)",
        ),
    ],
)
def test_unknown_keys_secrets_and_refused_sections_are_named(line: str, named: str) -> None:
    refused = {"state": "not in a release", "kb.embedding_model": "the store's"}
    with pytest.raises(InvalidInput) as caught:
        to_tree(parse_env(line), refused=refused)
    assert named in str(caught.value)
    assert "sk-abc" not in str(caught.value)


def test_tiers_router_and_retrieval_knobs_are_a_releases_own() -> None:
    env = parse_env(
        'VOXLINE_LLM__TIERS={"large": {"model": "/models/qwen2.5-1.5b.gguf"}}\n'
        "VOXLINE_ROUTER__QUESTION_TIER=large\n"
        "VOXLINE_KB__TOP_K=5\n"
    )
    tree = to_tree(env, refused={"kb.embedding_model": "the store's"})
    settings = apply(_base(), tree)
    assert settings.llm.tiers["large"].model == "/models/qwen2.5-1.5b.gguf"
    assert settings.router.question_tier == "large" and settings.kb.top_k == 5


@pytest.mark.parametrize(
    ("line", "named"),
    [
        (
            "VOXLINE_LLM__MAX_TOKENS=lots",
            "VOXLINE_LLM__MAX_TOKENS: Input should be a valid integer",
        ),
        ("VOXLINE_LLM__TEMPERATURE=3", "VOXLINE_LLM__TEMPERATURE: Input should be less than"),
        ("VOXLINE_TTS__ENGINE=espeak", "VOXLINE_TTS__ENGINE: Input should be"),
        ('VOXLINE_LLM__CHAIN=["tpu"]', "VOXLINE_LLM__CHAIN: Input should be"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(line: str, named: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        apply(_base(), to_tree(parse_env(line)))
    assert named in str(caught.value)


def test_a_key_without_a_value_or_set_twice_is_refused() -> None:
    with pytest.raises(InvalidInput, match="VOXLINE_LLM__MAX_TOKENS: no value"):
        parse_env("VOXLINE_LLM__MAX_TOKENS\n")
    with pytest.raises(InvalidInput, match="set twice"):
        to_tree({"VOXLINE_LLM__MAX_TOKENS": "4", "voxline_llm__max_tokens": "5"})
