"""LLM tiers in the registry: each tier's settings, chain and model listing."""

from __future__ import annotations

import pytest

from models.registry import build_tiers, describe_models, router_of, tier_settings
from pipeline.errors import InvalidInput
from pipeline.settings import HostedSettings, LLMSettings, LLMTierSettings, RouterSettings, Settings


def settings() -> Settings:
    tiers = {
        "large": LLMTierSettings(model="/models/large.gguf", max_tokens=200),
        "hosted": LLMTierSettings(
            engine="hosted", hosted=HostedSettings(base_url="http://127.0.0.1:9/v1")
        ),
    }
    llm = LLMSettings(engine="transformers", max_tokens=64, temperature=0.1, tiers=tiers)
    return Settings(_env_file=None, llm=llm)  # type: ignore[call-arg]


def test_a_tier_changes_only_the_fields_it_sets() -> None:
    base = settings()
    large = tier_settings(base, "large").llm
    assert (large.model, large.max_tokens) == ("/models/large.gguf", 200)
    assert (large.engine, large.temperature) == ("transformers", 0.1)  # inherited
    assert large.tiers == {}
    assert tier_settings(base, "small") is base
    hosted = tier_settings(base, "hosted").llm
    assert hosted.engine == "hosted" and hosted.hosted.base_url == "http://127.0.0.1:9/v1"
    with pytest.raises(InvalidInput):
        tier_settings(base, "huge")


def test_every_tier_is_a_chain_and_the_router_sees_them_all() -> None:
    tiers = build_tiers(settings())
    assert list(tiers) == ["small", "large", "hosted"]
    assert [b.name for b in tiers["hosted"].backends] == ["hosted:127.0.0.1:9"]
    assert tiers["small"] is not tiers["large"]
    router = router_of(settings().model_copy(update={"router": RouterSettings()}), tiers)
    assert router.names == ("small", "large", "hosted")


def test_models_lists_each_tier() -> None:
    infos = [i for i in describe_models(settings()) if i.stage == "llm"]
    assert [(i.tier, i.ref) for i in infos] == [
        (None, "packaged:smollm2-135m-instruct"),
        ("large", "/models/large.gguf"),
        ("hosted", "-"),
    ]
