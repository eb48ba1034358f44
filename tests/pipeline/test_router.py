"""The router: which LLM tier answers a turn, and why."""

from __future__ import annotations

import pytest

from pipeline.errors import InvalidInput
from pipeline.router import Route, Router, RouterPolicy, classify
from pipeline.types import FunctionTool, GenerationParams, Message, ToolCall
from tests.fakes import ScriptedLLM

TIERS = {"small": ScriptedLLM("s"), "large": ScriptedLLM("l"), "hosted": ScriptedLLM("h")}


def ask(text: str) -> list[Message]:
    return [Message("system", "Be brief."), Message("user", text)]


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Hello!", "small_talk"),
        ("thanks a lot", "small_talk"),
        ("How are you today?", "small_talk"),
        ("yes", "small_talk"),
        ("What is the capital of Japan?", "question"),
        ("Who painted the Mona Lisa", "question"),
        ("the boiling point of water?", "question"),
        ("Explain how a heat pump works", "long_answer"),
        ("Why is the sky blue?", "long_answer"),
        ("Compare electric and petrol cars for a family of four", "hard"),
        ("word " * 45, "hard"),
        ("I went to the shops this morning and bought bread", "default"),
    ],
)
def test_classifier_labels(text: str, label: str) -> None:
    assert classify(text) == label


def test_each_signal_picks_its_tier_and_names_the_reason() -> None:
    router = Router(TIERS)
    weather = FunctionTool("get_weather")
    assert router.route(ask("Hi there")) == Route("small", "small_talk")
    assert router.route(ask("What is the capital of Japan?")) == Route("large", "question")
    assert router.route(ask("Compare two laptops for me")) == Route("hosted", "hard")
    assert router.route(ask("Hi"), GenerationParams(tools=(weather,))) == Route("large", "tools")
    assert router.route(ask("Hi"), retrieval_hits=3) == Route("large", "retrieval")
    assert router.route(ask("Hi"), pinned="hosted") == Route("hosted", "pinned")
    long_reply = GenerationParams(max_tokens=400)
    assert router.route(ask("I like trains"), long_reply) == Route("large", "long_answer")
    # a function's result to read goes where calls go, even with the tools withdrawn
    call = ToolCall("call_1", "get_weather", "{}")
    answered = [*ask("Weather?"), Message("assistant", "", tool_calls=(call,))]
    answered.append(Message("tool", "sunny", tool_call_id="call_1"))
    assert router.route(answered, GenerationParams(tool_choice="none")) == Route("large", "tools")


def test_a_missing_tier_falls_back_to_the_default_and_says_so() -> None:
    router = Router({"small": TIERS["small"]}, RouterPolicy())
    assert router.route(ask("What is the capital of Japan?")) == Route("small", "single_tier")
    two = Router({"small": TIERS["small"], "large": TIERS["large"]})
    assert two.route(ask("Compare two laptops")) == Route("large", "hard")  # no hosted tier
    policy = RouterPolicy(question_tier="medium")
    assert Router(TIERS, policy).route(ask("Who are you?")) == Route("small", "question+fallback")


def test_an_unknown_pin_is_refused_and_the_default_must_exist() -> None:
    router = Router(TIERS)
    with pytest.raises(InvalidInput) as info:
        router.check_pin("huge", param="tier")
    assert info.value.param == "tier"
    assert router.route(ask("Hi"), pinned="gpt-4o") == Route("small", "small_talk")
    with pytest.raises(ValueError, match="default tier"):
        Router({"large": TIERS["large"]})
