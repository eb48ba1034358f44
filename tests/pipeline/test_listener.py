"""The session's transcription jobs (``pipeline.listener.Transcriber``), on scripted STT and the
loop's virtual clock."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.errors import EngineBusy
from pipeline.listener import Transcriber, Utterance
from pipeline.priority import Priority, current
from tests.fakes import Plan, ScriptedSTT

pytestmark = pytest.mark.looptime

RATE = 16_000
FRAMES = 50  # 30 ms frames: 1.5 s of speech


class _Recorded(ScriptedSTT):
    """Notes the priority of each call (the scheduler's, had it one)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.priorities: list[Priority] = []

    def _transcribe(self, audio, *, language, prompt):  # type: ignore[no-untyped-def, override]
        self.priorities.append(current())
        return super()._transcribe(audio, language=language, prompt=prompt)


async def test_a_final_whose_speculative_job_is_refused_asks_again_as_interactive() -> None:
    """The job started at the pause runs at speculative priority; refused while the turn's end
    awaits it (displaced from the engine's queue, or past its wait), the final transcript is
    asked for again at interactive priority instead of failing the user's turn."""
    refused = EngineBusy("displaced by a more urgent call", stage="stt", backend="cpu")
    plans = [Plan(error=refused, first_delay_s=0.2)]
    stt = _Recorded(text="what is the capital of france", plans=plans)
    listener = Transcriber(
        stt,
        endpointer=None,  # type: ignore[arg-type]  # the final is asked for directly
        current=lambda: None,
        sample_rate=RATE,
        partial_interval_ms=0,
        language=lambda: "en",
        on_result=lambda _: None,
    )
    audio = np.zeros(RATE * 2, dtype=np.float32)
    utt = Utterance("item_1")
    speculative = listener._start(utt, audio, FRAMES, Priority.SPECULATIVE)
    utt.committed = True
    result = await listener.final(utt, audio, FRAMES)  # while the speculative job still waits
    assert speculative.done() and isinstance(speculative.exception(), EngineBusy)
    assert result.transcript.text == "what is the capital of france"
    assert stt.priorities == [Priority.SPECULATIVE, Priority.INTERACTIVE]
