"""Knowledge in the reply path: the prompt, the "don't know" policy, support and its safe reply,
in ``run_turn`` and the realtime session (scripted stages and retriever: tests/fakes)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import numpy as np
import pytest

from models.vad_silero import SileroVAD
from pipeline.errors import InvalidInput
from pipeline.events import ErrorEvent, ResponseDone
from pipeline.file_search import FileSearch, file_search_of
from pipeline.grounding import DONT_KNOW_INSTRUCTION, grounded_messages, keyword_coverage
from pipeline.knowledge import Grounder, KnowledgePolicy
from pipeline.reply import Reply
from pipeline.session import Session
from pipeline.session_config import SessionConfig
from pipeline.settings import KBSettings
from pipeline.turn import run_turn
from pipeline.types import AudioChunk, Message
from tests.fakes import (
    ScriptedLLM,
    ScriptedRetriever,
    ScriptedSTT,
    ScriptedSupport,
    ScriptedTTS,
    passage,
)

pytestmark = pytest.mark.looptime

QUESTION = AudioChunk(np.full(16_000, 0.1, np.float32), 16_000)
SEARCH = FileSearch(("vs_test",))
FILTER = passage("Replace the 3-in-1 filter every 6 months.", 0.71, chunk=4)
WEAK = passage("The Aero 5 has a carry handle.", 0.22, file="warranty.txt")


def test_passages_go_before_the_question_best_first_within_the_budget() -> None:
    history = [Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hey")]
    messages = [*history, Message("user", "How often do I change the filter?")]
    long = passage("word " * 400, 0.5, file="long.md")
    out = grounded_messages(messages, [FILTER, long, WEAK], max_chars=300)
    assert out[:3] == history  # the system prompt and history are untouched
    last = out[-1]
    assert last.role == "user" and last.content.endswith(
        "Question: How often do I change the filter?"
    )
    assert "[1] (manual.md) Replace the 3-in-1 filter every 6 months." in last.content
    assert "long.md" not in last.content  # over the budget: left out, and the later one too
    assert "[2]" not in last.content
    alone = grounded_messages(messages, [long], max_chars=100)
    assert "[1] (long.md)" in alone[-1].content  # the best one always goes in, cut
    assert len(alone[-1].content) < 400
    nothing = grounded_messages(messages, [], max_chars=300)
    assert nothing[-1].content.startswith(DONT_KNOW_INSTRUCTION)
    with pytest.raises(InvalidInput):
        grounded_messages([Message("system", "x")], [FILTER], max_chars=300)


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ("nope", "tools"),
        ([{"type": "mcp", "server_label": "x"}], "tools"),
        ([{"type": "file_search"}], "tools[0].vector_store_ids"),
        ([{"type": "file_search", "vector_store_ids": [1]}], "tools[0].vector_store_ids"),
        (
            [{"type": "file_search", "vector_store_ids": ["vs"], "max_num_results": 99}],
            "tools[0].max_num_results",
        ),
        (
            [{"type": "file_search", "vector_store_ids": ["vs"], "filters": {"type": "eq"}}],
            "tools[0].filters",
        ),
        (
            [
                {"type": "file_search", "vector_store_ids": ["a"]},
                {"type": "file_search", "vector_store_ids": ["b"]},
            ],
            "tools[1]",
        ),
    ],
)
def test_bad_file_search_tools_name_the_field(tools: Any, param: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        file_search_of(tools)
    assert refused.value.param == param


def test_function_tools_are_left_to_their_own_parser() -> None:
    function = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    assert file_search_of([function]) is None
    found = file_search_of([function, {"type": "file_search", "vector_store_ids": ["vs_1"]}])
    assert found is not None and found.vector_store_ids == ("vs_1",)


def test_a_file_search_tool_is_read_in_openais_shape() -> None:
    tool = {
        "type": "file_search",
        "vector_store_ids": ["vs_a", "vs_b", "vs_a"],
        "max_num_results": 5,
        "ranking_options": {"score_threshold": 0.6, "ranker": "auto"},
    }
    assert file_search_of([tool]) == FileSearch(("vs_a", "vs_b"), 5, 0.6)
    assert file_search_of(None) is None and file_search_of([]) is None


def test_the_policy_comes_from_the_settings() -> None:
    policy = KnowledgePolicy.from_settings(KBSettings(top_k=5, dont_know="llm"))
    assert policy.top_k == 5 and policy.dont_know == "llm"
    assert policy.relevance_threshold == KBSettings().relevance_threshold


async def test_a_grounded_turn_cites_what_it_was_given_and_scores_support() -> None:
    retriever = ScriptedRetriever([FILTER, WEAK])
    scorer = ScriptedSupport(0.8)
    llm = ScriptedLLM(reply=["Every", " 6", " months", "."])
    result = await run_turn(
        QUESTION,
        stt=ScriptedSTT(text="How often do I change the filter?"),
        llm=llm,
        tts=ScriptedTTS(),
        system_prompt="Be brief.",
        grounder=Grounder(retriever, KnowledgePolicy(top_k=4, relevance_threshold=0.4), scorer),
        file_search=SEARCH,
    )
    assert retriever.queries == [("How often do I change the filter?", ("vs_test",), 4)]
    prompt = llm.calls[0].input[-1].content
    assert "6 months" in prompt and "carry handle" not in prompt  # below the threshold
    k = result.knowledge
    assert k is not None and k.scores == (0.71, 0.22) and k.top_score == 0.71
    assert [c.file_id for c in k.citations] == ["file-manual.md"] and k.citations[0].chunk == 4
    assert k.llm_called and not k.dont_know
    assert k.support is not None and k.support.score == 0.8 and not k.support.flagged
    assert scorer.asked == [("Every 6 months.", (FILTER.text,))]


async def test_nothing_relevant_speaks_the_fixed_reply_without_the_llm() -> None:
    llm = ScriptedLLM()
    tts = ScriptedTTS()
    policy = KnowledgePolicy(relevance_threshold=0.5, dont_know_reply="I don't know that.")
    result = await run_turn(
        QUESTION,
        stt=ScriptedSTT(text="Who is the CEO?"),
        llm=llm,
        tts=tts,
        system_prompt="Be brief.",
        grounder=Grounder(ScriptedRetriever([WEAK]), policy, ScriptedSupport()),
        file_search=SEARCH,
    )
    assert result.reply == "I don't know that." and llm.calls == []
    assert tts.calls and len(result.audio.samples) > 0
    assert result.usage.total_tokens == 0
    k = result.knowledge
    assert k is not None and k.dont_know and not k.llm_called and k.citations == ()
    assert k.support is None  # nothing was claimed


async def test_the_llm_mode_tells_the_llm_there_is_nothing() -> None:
    llm = ScriptedLLM(reply=["I", " don't", " know", "."])
    policy = KnowledgePolicy(relevance_threshold=0.5, dont_know="llm")
    result = await run_turn(
        QUESTION,
        stt=ScriptedSTT(text="Who is the CEO?"),
        llm=llm,
        tts=ScriptedTTS(),
        system_prompt="Be brief.",
        grounder=Grounder(ScriptedRetriever([WEAK]), policy),
        file_search=SEARCH,
    )
    assert llm.calls[0].input[-1].content.startswith(DONT_KNOW_INSTRUCTION)
    assert result.knowledge is not None and result.knowledge.dont_know
    assert result.knowledge.llm_called


@pytest.mark.parametrize("replace", [False, True])
async def test_an_unsupported_answer_is_flagged_and_replaced_by_setting(replace: bool) -> None:
    policy = KnowledgePolicy(
        support_threshold=0.5, replace_unsupported=replace, safe_reply="Unsure."
    )
    tts = ScriptedTTS()
    result = await run_turn(
        QUESTION,
        stt=ScriptedSTT(text="How often do I change the filter?"),
        llm=ScriptedLLM(reply=["Every", " 12", " years", "."]),
        tts=tts,
        system_prompt="Be brief.",
        grounder=Grounder(ScriptedRetriever([FILTER]), policy, ScriptedSupport(0.2)),
        file_search=SEARCH,
    )
    support = result.knowledge.support if result.knowledge else None
    assert support is not None and support.flagged and support.replaced == replace
    spoken = [call.input for call in tts.calls]
    if replace:
        assert result.reply == "Unsure." and spoken == ["Unsure."]
    else:
        assert result.reply == "Every 12 years." and "".join(spoken) == "Every 12 years."


async def test_a_reply_with_a_fixed_text_never_calls_the_llm() -> None:
    llm, tts = ScriptedLLM(), ScriptedTTS()
    reply = Reply(llm, tts, [Message("user", "x")], text="Fixed. Two phrases here.")
    chunks = [c async for c in reply.chunks()]
    await reply.aclose()
    assert llm.calls == [] and reply.text == "Fixed. Two phrases here."
    assert [c.input for c in tts.calls] == reply.phrases and len(reply.phrases) == 2
    assert chunks and reply.times.first_token is not None


async def test_an_unknown_store_fails_the_turn_before_the_llm() -> None:
    llm = ScriptedLLM()
    with pytest.raises(InvalidInput):
        await run_turn(
            QUESTION,
            stt=ScriptedSTT(text="Hello?"),
            llm=llm,
            tts=ScriptedTTS(),
            system_prompt="x",
            grounder=Grounder(ScriptedRetriever([FILTER])),
            file_search=FileSearch(("vs_other",)),
        )
    assert llm.calls == []
    with pytest.raises(InvalidInput):  # and a file_search with no knowledge base at all
        await run_turn(
            QUESTION,
            stt=ScriptedSTT(text="Hello?"),
            llm=llm,
            tts=ScriptedTTS(),
            system_prompt="x",
            file_search=SEARCH,
        )


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    model = SileroVAD()
    model.load()
    return model


async def _session_events(session: Session, until: type, n: int = 1) -> list[Any]:
    events: list[Any] = []
    async with asyncio.timeout(30):
        async for event in session:
            events.append(event)
            if sum(isinstance(e, until) for e in events) >= n:
                return events
    return events


async def test_a_session_grounds_its_responses_when_told_to(vad: SileroVAD) -> None:
    retriever = ScriptedRetriever([FILTER])
    llm = ScriptedLLM(reply=["Every", " 6", " months", "."])
    session = Session(
        ScriptedSTT(),
        llm,
        ScriptedTTS(),
        vad.fork(),
        config=SessionConfig(turn_detection=None),
        grounder=Grounder(retriever, scorer=ScriptedSupport(0.9)),
    )
    await session.update(file_search=SEARCH)
    await session.add_user_text("How often do I change the filter?")
    await session.create_response()
    events = await _session_events(session, ResponseDone)
    done = events[-1]
    assert done.status == "completed" and done.knowledge is not None
    assert done.knowledge.citations[0].text == FILTER.text
    assert "6 months" in llm.calls[0].input[-1].content
    # the history keeps the question as asked, not the prompt with passages
    assert session.messages()[-2].content == "How often do I change the filter?"
    await session.update(file_search=None)
    await session.create_response()
    events = await _session_events(session, ResponseDone)
    assert events[-1].knowledge is None and len(retriever.queries) == 1
    await session.aclose()


async def test_a_session_without_a_knowledge_base_refuses_file_search(vad: SileroVAD) -> None:
    session = Session(
        ScriptedSTT(), ScriptedLLM(), ScriptedTTS(), vad.fork(), config=SessionConfig()
    )
    await session.update(file_search=SEARCH)
    events = await _session_events(session, ErrorEvent)
    assert events[-1].param == "session.tools" and session.config.file_search is None
    await session.aclose()


def test_keyword_coverage_counts_the_questions_content_words() -> None:
    assert (
        keyword_coverage("How do I lock the control panel?", "hold the Lock key: panels") == 2 / 3
    )
    assert keyword_coverage("What is it?", "anything") == 0.0  # stop words only
    assert keyword_coverage("replacement filters", "Replace the filter.") == 1.0


async def test_keywords_make_a_passage_relevant() -> None:
    lock = passage("To lock the control panel, hold the Lock key.", 0.33)
    other = passage("The warranty lasts two years.", 0.36)
    policy = KnowledgePolicy(relevance_threshold=0.45, keyword_weight=0.3)
    grounder = Grounder(ScriptedRetriever([lock, other]), policy)
    grounded = await grounder.ground([Message("user", "How do I lock the control panel?")], SEARCH)
    assert grounded.passages == (lock,)  # 0.33 + 0.3 x 3/3 beats 0.36 + 0
    assert grounded.relevance == (0.36, 0.63)
    alone = Grounder(ScriptedRetriever([lock]), dataclasses.replace(policy, keyword_weight=0.0))
    assert (await alone.ground([Message("user", "lock the panel")], SEARCH)).passages == ()
