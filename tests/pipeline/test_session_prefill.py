"""After a response the session warms the LLM's prompt cache with the conversation so far
(``SessionSettings.prefill``): the next turn's prompt must start with exactly what was read."""

from __future__ import annotations

import pytest

from models.vad_silero import SileroVAD
from pipeline.events import ResponseDone
from pipeline.history import History, Item
from tests.pipeline.test_session import Recorder, make, smollm_llm

pytestmark = pytest.mark.looptime


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    model = SileroVAD()
    model.load()
    return model


async def _turn(rec: Recorder, session: object, text: str, n: int) -> None:
    await session.add_user_text(text)  # type: ignore[attr-defined]
    await session.create_response()  # type: ignore[attr-defined]
    await rec.wait_for(ResponseDone, count=n)
    await rec.settle()


async def test_the_next_prompt_starts_with_what_was_prefilled(vad: SileroVAD) -> None:
    llm = smollm_llm()
    session, rec = make(vad, llm=llm)
    await _turn(rec, session, "What is the capital of France?", 1)
    assert len(llm.prefills) == 1
    warmed = llm.prefills[0]
    assert [m.role for m in warmed] == ["system", "user", "assistant"]
    assert warmed[-1].content == "Paris is the capital of France."
    await _turn(rec, session, "And of Spain?", 2)
    await session.aclose()
    second = llm.calls[1].input
    assert second[: len(warmed)] == warmed and second[-1].content == "And of Spain?"


async def test_a_trim_the_next_message_would_cause_happens_before_the_prefill(
    vad: SileroVAD,
) -> None:
    # estimated tokens (4 characters each, +4 a message): the two turns fill 46 of 50, within
    # the budget; the third message (7) would push it over, and adding it would then drop the
    # oldest items: the prompt would no longer start with what was prefilled
    llm = smollm_llm()
    session, rec = make(vad, llm=llm, history_max_tokens=50)
    await _turn(rec, session, "What is the capital of France?", 1)
    await _turn(rec, session, "Tell me again please.", 2)
    warmed = llm.prefills[-1]
    assert len(warmed) < 5  # the early trim (room for 50 // 8 tokens) dropped the first turn
    await _turn(rec, session, "Once more.", 3)
    await session.aclose()
    third = llm.calls[2].input
    assert third[: len(warmed)] == warmed
    assert len(third) == len(warmed) + 1


async def test_prefill_off_reads_nothing_ahead(vad: SileroVAD) -> None:
    llm = smollm_llm()
    session, rec = make(vad, llm=llm, prefill=False)
    await _turn(rec, session, "What is the capital of France?", 1)
    await session.aclose()
    assert llm.prefills == []


def test_make_room_trims_only_when_the_next_message_would_not_fit() -> None:
    history = History(max_tokens=40)
    for n in range(3):
        history.add(Item(f"i{n}", "user", "x" * 36))  # 13 tokens each with the template's 4
    assert len(history.items) == 3  # 39 <= 40
    version = history.version
    history.make_room(1)
    assert len(history.items) == 3 and history.version == version  # 40: fits
    history.make_room(5)
    assert len(history.items) == 1 and history.version == version + 1  # trimmed to half
