"""``rag``: grounded answers from the knowledge base: accuracy, citations, "don't know".

The knowledge base is not part of this package (benchmarks import neither ``store`` nor
``server``), so the suite scores whatever implements ``KnowledgeBase``, built by a
``KnowledgeBaseFactory`` handed in by the composition root (the ``voxline`` CLI) or named with
``--rag-backend module:function``. The factory receives the settings and the golden corpus
folder and returns a knowledge base that has ingested it (every file under the folder: md, txt,
html, pdf). Without one the suite is ``skipped``.

Each golden question is spoken (``kb/audio``): it is transcribed by the configured STT, as a
voice turn would, and the transcript is asked. Scores:

- ``answer_accuracy``: answerable questions whose reply contains an accepted answer;
- ``semantic_match``: answerable questions whose reply means the reference answer;
- ``citation_accuracy``: answerable questions with a citation of the right file whose text
  holds the golden quote (``scoring.quote_supported``);
- ``citation_file_accuracy``: the same, the file alone;
- ``dont_know_rate``: unanswerable questions answered "I don't know";
- ``false_dont_know_rate``: answerable questions answered "I don't know" (lower is better).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from benchmarks.data import speech_end_seconds
from benchmarks.eval.context import EvalContext
from benchmarks.eval.golden import KbQuestion, load_audio_16k
from benchmarks.eval.scorecard import Direction, Metric, SuiteResult, latency, rate
from benchmarks.eval.scoring import (
    SEMANTIC_THRESHOLD,
    contains_match,
    quote_supported,
    says_dont_know,
    semantic_similarities,
)
from benchmarks.stats import percentile, wer
from pipeline.errors import InvalidInput
from pipeline.settings import Settings
from pipeline.types import AudioChunk

NAME = "rag"


@dataclass(frozen=True, slots=True)
class Citation:
    """A source an answer cites.

    Attributes:
        file: the cited file's name or path as ingested (matched on its path relative to the
            corpus, or on its base name).
        text: the cited chunk's text.
        score: the retrieval score, if any.
    """

    file: str
    text: str
    score: float | None = None


@dataclass(frozen=True, slots=True)
class GroundedAnswer:
    """A knowledge base's reply.

    Attributes:
        text: what it says.
        citations: its sources, best first.
        dont_know: whether it declined to answer; ``None``: judged from the text.
        v2v_ms: voice-to-voice of a spoken turn (``SpokenKnowledgeBase``), client clock.
        cost_usd: what the turn cost, as the server billed it.
        support: the server's support score of the answer against its sources.
    """

    text: str
    citations: tuple[Citation, ...] = field(default=())
    dont_know: bool | None = None
    v2v_ms: float | None = None
    cost_usd: float | None = None
    support: float | None = None


class KnowledgeBase(Protocol):
    """A retriever plus answerer over an ingested corpus."""

    async def answer(self, question: str) -> GroundedAnswer:
        """Answer ``question`` from the corpus, citing the passages used."""
        ...

    async def aclose(self) -> None:
        """Release what the knowledge base holds."""
        ...


class SpokenKnowledgeBase(KnowledgeBase, Protocol):
    """A knowledge base that also answers the spoken question itself (a real voice turn,
    timed voice to voice); the suite then scores that answer."""

    async def answer_spoken(self, audio: AudioChunk, speech_end_s: float) -> GroundedAnswer:
        """Answer the question spoken in ``audio`` (speech ending at ``speech_end_s``)."""
        ...


KnowledgeBaseFactory = Callable[[Settings, Path], Awaitable[KnowledgeBase]]
"""``factory(settings, corpus_dir)``: a knowledge base that has ingested ``corpus_dir``."""


def load_factory(spec: str) -> KnowledgeBaseFactory:
    """The factory named ``module:function`` (``--rag-backend``).

    Raises:
        InvalidInput: the module or the function cannot be found.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidInput(f"--rag-backend {spec!r}: expected module:function", param="rag")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidInput(f"--rag-backend {spec!r}: {exc}", param="rag_backend") from exc
    if not callable(factory):
        raise InvalidInput(f"--rag-backend {spec!r} is not callable", param="rag_backend")
    return factory  # type: ignore[no-any-return]


def _same_file(cited: str, expected: str) -> bool:
    a, b = PurePosixPath(cited.replace("\\", "/")), PurePosixPath(expected)
    return a == b or a.as_posix().endswith("/" + b.as_posix()) or a.name == b.name


@dataclass(frozen=True, slots=True)
class ItemScore:
    """How one grounded reply scored (``None``: does not apply to this question)."""

    answer_correct: bool | None
    citation_correct: bool | None
    citation_file_correct: bool | None
    dont_know: bool


def score_item(question: KbQuestion, reply: GroundedAnswer) -> ItemScore:
    """Score one reply against its golden question (the semantic match is scored apart)."""
    dont_know = says_dont_know(reply.text) if reply.dont_know is None else reply.dont_know
    if not question.answerable:
        return ItemScore(None, None, None, dont_know)
    files = [
        c for c in reply.citations if any(_same_file(c.file, s.file) for s in question.support)
    ]
    supported = any(
        _same_file(c.file, s.file) and quote_supported(c.text, s.quote)
        for c in files
        for s in question.support
    )
    correct = not dont_know and contains_match(reply.text, question.answers)
    return ItemScore(correct, supported, bool(files), dont_know)


def metrics_of(scores: list[ItemScore], semantic: list[bool | None]) -> dict[str, Metric]:
    """The suite's metrics from per-question scores (a metric with no question is left out)."""
    answerable = [s for s in scores if s.answer_correct is not None]
    unanswerable = [s for s in scores if s.answer_correct is None]
    flags: dict[str, tuple[list[bool | None], Direction]] = {
        "answer_accuracy": ([s.answer_correct for s in answerable], "higher"),
        "semantic_match": (semantic, "higher"),
        "citation_accuracy": ([s.citation_correct for s in answerable], "higher"),
        "citation_file_accuracy": ([s.citation_file_correct for s in answerable], "higher"),
        "dont_know_rate": ([s.dont_know for s in unanswerable], "higher"),
        "false_dont_know_rate": ([s.dont_know for s in answerable], "lower"),
    }
    out: dict[str, Metric] = {}
    for name, (values, direction) in flags.items():
        kept = [v for v in values if v is not None]
        if kept:
            out[name] = rate(sum(kept) / len(kept), len(kept), direction)
    return out


def turn_metrics(answers: list[GroundedAnswer]) -> dict[str, Metric]:
    """V2V p50/p95 and the mean cost per turn, when the knowledge base measured them."""
    out: dict[str, Metric] = {}
    v2v = [a.v2v_ms for a in answers if a.v2v_ms is not None]
    if v2v:
        out["v2v_p50_ms"] = latency(percentile(v2v, 50), len(v2v))
        out["v2v_p95_ms"] = latency(percentile(v2v, 95), len(v2v))
    costs = [a.cost_usd for a in answers if a.cost_usd is not None]
    if costs:
        mean = sum(costs) / len(costs)
        out["cost_per_turn_usd"] = Metric(
            round(mean, 8), "lower", round(max(mean * 0.2, 1e-7), 8), len(costs), "USD"
        )
    return out


async def run(ctx: EvalContext) -> SuiteResult:
    """Ask every spoken question of the knowledge base; skip without a knowledge base."""
    start = time.perf_counter()
    factory = ctx.options.knowledge_base
    if factory is None:
        return SuiteResult(
            NAME,
            status="skipped",
            reason="no knowledge base: pass --rag-backend module:function (issue 13)",
        )
    questions = ctx.golden.kb_questions(ctx.options.quick)
    kb = await factory(ctx.settings, ctx.golden.corpus)
    rows: list[tuple[KbQuestion, str, GroundedAnswer]] = []
    try:
        spoken = getattr(kb, "answer_spoken", None)
        for i, q in enumerate(questions):
            ctx.tick(NAME, i, len(questions))
            audio = load_audio_16k(q.audio)
            heard, _ = await ctx.transcribe(audio)
            if spoken is not None:
                answer = await spoken(audio, speech_end_seconds(audio))
            else:
                answer = await kb.answer(heard or q.question)
            rows.append((q, heard, answer))
    finally:
        await kb.aclose()
    ctx.tick(NAME, len(questions), len(questions))
    scores = [score_item(q, a) for q, _, a in rows]
    answerable = [(q.question, a.text, q.reference) for q, _, a in rows if q.answerable]
    sims = iter(await semantic_similarities(await ctx.embedder(), answerable))
    semantic = [next(sims) >= SEMANTIC_THRESHOLD if q.answerable else None for q, _, _ in rows]
    details: dict[str, Any] = {
        "items": [
            {
                "id": q.id,
                "question": q.question,
                "heard": heard,
                "question_wer": round(wer(q.question, heard), 4),
                "answerable": q.answerable,
                "reply": a.text,
                "citations": [{"file": c.file, "score": c.score} for c in a.citations],
                "v2v_ms": a.v2v_ms,
                "cost_usd": a.cost_usd,
                "support": a.support,
                "answer_correct": s.answer_correct,
                "citation_correct": s.citation_correct,
                "dont_know": s.dont_know,
            }
            for (q, heard, a), s in zip(rows, scores, strict=True)
        ]
    }
    metrics = metrics_of(scores, semantic)
    metrics.update(turn_metrics([a for _, _, a in rows]))
    return SuiteResult(
        NAME,
        metrics=metrics,
        details=details,
        seconds=time.perf_counter() - start,
    )
