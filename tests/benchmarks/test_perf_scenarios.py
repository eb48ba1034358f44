"""The measuring parts of ``endpoint``, ``phrasing`` and ``turn``'s per-length ratio.

``endpoint.listen`` runs the real listener (real Silero VAD on a shipped clip with a pause) with a
scripted STT, paced on the loop's virtual clock (``looptime``), so what it counts as a false end
of turn and an endpoint delay is checked exactly.
"""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.context import ScenarioResult
from benchmarks.data import load_dir
from benchmarks.scenarios.endpoint import listen
from benchmarks.scenarios.phrasing import first_phrase
from benchmarks.scenarios.turn import _ratios_by_length
from benchmarks.speech_sets import SETS
from models.vad_silero import SileroVAD
from pipeline.phrases import PhrasePolicy
from pipeline.settings import AudioLimits, Settings
from tests.fakes import WHISPER_TINY_PACE, ScriptedSTT, loop_time
from tests.pipeline.test_session import _InlineExecutor


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    model = SileroVAD()
    model.load()
    return model


@pytest.mark.looptime
@pytest.mark.parametrize("mode", ["fixed", "smart"])
async def test_listen_counts_a_false_end_at_a_mid_sentence_pause(vad: SileroVAD, mode: str) -> None:
    asyncio.get_running_loop().set_default_executor(_InlineExecutor())
    clip = next(c for c in load_dir(SETS["pauses"], AudioLimits()) if c.name == "piper-joe_01")
    fragment, whole = "I'd like to book a table for", clip.reference
    # before the 600 ms pause it heard the fragment, after it the whole request
    stt = ScriptedSTT(
        script=lambda s: fragment if s < clip.speech_end_s - 0.3 else whole,
        partials=False,
        **WHISPER_TINY_PACE,
    )
    settings = Settings(session={"partial_interval_ms": 0})
    outcome = await listen(stt, vad, clip, settings, mode, clock=loop_time)  # type: ignore[arg-type]
    assert outcome.false_end is (mode == "fixed")
    assert outcome.turns == (2 if mode == "fixed" else 1)
    assert outcome.endpoint_ms is not None and outcome.ready_ms is not None
    if mode == "fixed":
        assert 400 <= outcome.endpoint_ms <= 470
    else:  # Whisper tiny's pace: the transcript of the end lands after ~0.55 s, reads complete
        assert outcome.heard[-1][1:] == (whole, "complete")
        assert outcome.heard[-1][0] <= outcome.endpoint_ms <= outcome.heard[-1][0] + 40
    assert outcome.ready_ms >= outcome.endpoint_ms


def test_first_phrase_replays_the_chunker_on_timed_deltas() -> None:
    deltas = [(100.0, "The"), (120.0, " capital"), (140.0, " of"), (160.0, " France"),
              (180.0, " is"), (200.0, " Paris"), (220.0, "."), (240.0, " It")]  # fmt: skip
    four = PhrasePolicy(first_max_words=4)
    assert first_phrase(deltas, four) == ("The capital of France", 180.0, False)
    assert first_phrase(deltas, PhrasePolicy(first_max_words=0)) == (
        "The capital of France is Paris.",
        240.0,  # a sentence end counts once the next character shows it is one
        False,
    )
    whole = ("The capital of", 140.0, True)  # the reply ended there
    assert first_phrase(deltas[:3], PhrasePolicy(first_max_words=0)) == whole


def test_streaming_naive_ratio_per_answer_length() -> None:
    result = ScenarioResult("turn")
    for length, v2v, naive in [("short", 500, 800), ("short", 700, 1000), ("long", 600, 4000)]:
        result.add(
            {"v2v_ms": v2v, "naive_total_ms": naive, f"v2v_naive_ratio_{length}": v2v / naive}
        )
    assert _ratios_by_length(result) == {"short": pytest.approx(0.667, abs=1e-3), "long": 0.15}
