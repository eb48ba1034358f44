"""``voxline turn`` answers with the LLM tiers and the router of the settings, as ``/v1/turns``
does: a question goes to the tier ``VOXLINE_ROUTER__QUESTION_TIER`` names, on the real packaged
models (the extra tier is the same small model with a thread count of its own: the routing,
not the weights, is under test)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from pipeline.audio import encode_wav
from tests.conftest import speak

runner = CliRunner()


def test_a_turn_is_routed_to_the_tier_the_router_picks(tmp_path: Path) -> None:
    question = tmp_path / "question.wav"
    question.write_bytes(encode_wav(speak("What is the capital of France?")))
    env = {
        "VOXLINE_LLM__TIERS": json.dumps({"large": {"threads": 1, "max_tokens": 8}}),
        "VOXLINE_ROUTER__QUESTION_TIER": "large",
        "VOXLINE_LLM__MAX_TOKENS": "8",
    }
    result = runner.invoke(app, ["turn", str(question), "--json"], env=env)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert (answer["llm_tier"], answer["route_reason"]) == ("large", "question")
    assert "france" in answer["transcript"].lower()
