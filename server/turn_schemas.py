"""Wire shapes of ``/v1/turns``: the turn result as a pydantic model, and its JSON pieces.

A response model, so a shape that drifts from what clients parse fails in a test, not in a
client. ``turn_json`` is the same result without the audio (``voxline turn --json``); its
pieces (``fallbacks_json``, ``route_json``, ``knowledge_json``) also go into the realtime
``response.done`` (``server.realtime_events``), and ``route_json`` into the chat route's finish
chunk.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import asdict
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from pipeline.audio import encode_wav
from pipeline.fallback_types import StageFallback
from pipeline.knowledge import KnowledgeReport
from pipeline.router import Route
from pipeline.turn import TurnResult


class TurnTimingsOut(BaseModel):
    """Milliseconds of the turn (docs/architecture.md's vocabulary); absent when not measured."""

    model_config = ConfigDict(extra="forbid")

    stt_ms: float | None = None
    llm_ttft_ms: float | None = None
    llm_first_phrase_ms: float | None = None
    llm_total_ms: float | None = None
    tts_ttfb_ms: float | None = None
    tts_total_ms: float | None = None
    total_ms: float | None = None
    endpoint_ms: float | None = None
    v2v_ms: float | None = None


class BackendsOut(BaseModel):
    """The backend that served each stage."""

    model_config = ConfigDict(extra="forbid")

    stt: str
    llm: str
    tts: str


class TurnUsage(BaseModel):
    """The LLM's token accounting for the turn."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class TurnAudio(BaseModel):
    """The spoken reply: ``data`` is a base64 wav file (absent in the CLI's JSON)."""

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0)
    sample_rate: int = Field(gt=0)
    format: Literal["wav"] | None = None
    data: str | None = None


class FallbackOut(BaseModel):
    """One switch to another backend during the turn."""

    stage: str
    from_backend: str
    to_backend: str | None
    reason: str
    error: str | None = None
    after_output: bool = False


class CitationOut(BaseModel):
    """A source the answer was given: a chunk of a file in a vector store."""

    model_config = ConfigDict(extra="forbid")

    file_id: str
    filename: str
    chunk: int = Field(ge=0)
    score: float
    text: str


class SupportOut(BaseModel):
    """How well the answer is supported by its sources."""

    model_config = ConfigDict(extra="forbid")

    score: float = Field(ge=0, le=1)
    threshold: float
    flagged: bool
    replaced: bool
    scorer: str
    ms: float


class KnowledgeOut(BaseModel):
    """Retrieval and groundedness of a turn that searched vector stores."""

    model_config = ConfigDict(extra="forbid")

    vector_store_ids: list[str]
    retrieval_ms: float
    scores: list[float]
    relevance: list[float]
    top_score: float | None
    dont_know: bool
    llm_called: bool
    support: SupportOut | None


class TurnResponse(BaseModel):
    """``POST /v1/turns`` result (and, without audio data, ``voxline turn --json``)."""

    model_config = ConfigDict(extra="forbid")

    transcript: str
    reply: str
    timings: TurnTimingsOut
    backends: BackendsOut
    fallbacks: list[FallbackOut] = []
    usage: TurnUsage
    cost_usd: float | None = None
    audio: TurnAudio
    release: str | None = None
    """The release that answered (docs/releases.md); absent from ``voxline turn --json``."""
    llm_tier: str | None = None
    """The LLM tier that answered (``pipeline.router``)."""
    route_reason: str | None = None
    """Why the router picked it."""
    citations: list[CitationOut] | None = None
    knowledge: KnowledgeOut | None = None


def turn_json(result: TurnResult) -> dict[str, object]:
    """The JSON object of one turn, without the audio itself (``voxline turn --json``)."""
    return {
        "transcript": result.transcript,
        "reply": result.reply,
        "timings": {k: v for k, v in asdict(result.timings).items() if v is not None},
        "backends": asdict(result.backends),
        "fallbacks": fallbacks_json(result.fallbacks),
        "cost_usd": result.cost_usd,
        **route_json(result.route),
        "audio": {
            "seconds": round(result.audio.duration, 3),
            "sample_rate": result.audio.sample_rate,
        },
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "total_tokens": result.usage.total_tokens,
        },
        **knowledge_json(result.knowledge),
    }


def knowledge_json(report: KnowledgeReport | None) -> dict[str, object]:
    """``citations`` and ``knowledge`` of a grounded turn or response (nothing without one)."""
    if report is None:
        return {}
    support = report.support
    return {
        "citations": [
            {
                "file_id": c.file_id,
                "filename": c.filename,
                "chunk": c.chunk,
                "score": c.score,
                "text": c.text,
            }
            for c in report.citations
        ],
        "knowledge": {
            "vector_store_ids": list(report.vector_store_ids),
            "retrieval_ms": report.retrieval_ms,
            "scores": list(report.scores),
            "relevance": list(report.relevance),
            "top_score": report.top_score,
            "dont_know": report.dont_know,
            "llm_called": report.llm_called,
            "support": None
            if support is None
            else {
                "score": support.score,
                "threshold": support.threshold,
                "flagged": support.flagged,
                "replaced": support.replaced,
                "scorer": support.scorer,
                "ms": support.ms,
            },
        },
    }


def route_json(route: Route | None) -> dict[str, str]:
    """The LLM tier that answered and why, for a JSON result (nothing without a router)."""
    if route is None:
        return {}
    return {"llm_tier": route.tier, "route_reason": route.reason}


def fallbacks_json(switches: Sequence[StageFallback]) -> list[dict[str, object]]:
    """Switches to another backend, for a JSON result (stage, from, to, reason, error type)."""
    return [{"stage": s.stage, **asdict(s.fallback)} for s in switches]


def turn_response(result: TurnResult, *, release: str | None = None) -> TurnResponse:
    """The HTTP result of one turn: ``turn_json`` plus the reply as a base64 wav file, and the
    release that answered."""
    body = turn_json(result)
    audio = cast(dict[str, object], body["audio"])
    data = base64.b64encode(encode_wav(result.audio)).decode("ascii")
    body["audio"] = {**audio, "format": "wav", "data": data}
    body["release"] = release
    return TurnResponse.model_validate(body)
