"""``answers``: does the configured LLM, with its system prompt, answer the golden questions?

Each question is asked as a fresh conversation (the settings' system prompt, then the question,
as text: this suite scores the model and the prompt, not the ears), with the settings' sampling
options and a fixed seed, so a card is reproducible on one machine. Scores: ``exact_match``,
``contains_match`` and ``semantic_match`` (see ``benchmarks.eval.scoring``), and the mean
answer-focused similarity to the reference answer. With LLM tiers in the settings
(``llm.tiers``) each question goes to the tier the router picks, and the card's details count
the tiers (``tiers``) and name each item's tier and reason.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from benchmarks.eval.context import EvalContext
from benchmarks.eval.scorecard import Metric, SuiteResult, rate
from benchmarks.eval.scoring import (
    SEMANTIC_THRESHOLD,
    contains_match,
    exact_match,
    semantic_similarities,
)
from pipeline.router import Route
from pipeline.types import Message

NAME = "answers"
SIMILARITY_TOLERANCE = 0.03
"""How far the mean similarity may fall: a prompt that makes replies longer moves it ~0.01."""


async def ask(ctx: EvalContext, question: str) -> str:
    """The configured LLM's whole reply to ``question`` after the system prompt."""
    return (await ask_routed(ctx, question))[0]


async def ask_routed(ctx: EvalContext, question: str) -> tuple[str, Route | None]:
    """The reply to ``question``, by the tier the router picks when the settings have LLM
    tiers (``llm.tiers``), and that route."""
    await ctx.bench.ensure("llm")
    messages = [Message("system", ctx.settings.llm.system_prompt), Message("user", question)]
    params = ctx.bench.params()
    router = await ctx.bench.router()
    llm, route = ctx.bench.llm, None
    if router is not None:
        route = router.route(messages, params)
        llm = router.llm(route)
    parts = [d.text async for d in llm.stream(messages, params)]
    return "".join(parts).strip(), route


async def run(ctx: EvalContext) -> SuiteResult:
    """Ask every question once; score the replies."""
    start = time.perf_counter()
    pairs = ctx.golden.answers(ctx.options.quick)
    replies, routes = [], []
    for i, pair in enumerate(pairs):
        ctx.tick(NAME, i, len(pairs))
        reply, route = await ask_routed(ctx, pair.question)
        replies.append(reply)
        routes.append(route)
    ctx.tick(NAME, len(pairs), len(pairs))
    items = [(p.question, r, p.reference) for p, r in zip(pairs, replies, strict=True)]
    sims = await semantic_similarities(await ctx.embedder(), items)
    exact = [exact_match(r, p.answers) for p, r in zip(pairs, replies, strict=True)]
    contains = [contains_match(r, p.answers) for p, r in zip(pairs, replies, strict=True)]
    semantic = [s >= SEMANTIC_THRESHOLD for s in sims]
    n = len(pairs)
    metrics: dict[str, Metric] = {
        "exact_match": rate(sum(exact) / n, n, "higher"),
        "contains_match": rate(sum(contains) / n, n, "higher"),
        "semantic_match": rate(sum(semantic) / n, n, "higher"),
        "semantic_similarity": Metric(
            round(float(np.mean(sims)), 4), "higher", SIMILARITY_TOLERANCE, n
        ),
    }
    return SuiteResult(
        NAME,
        metrics=metrics,
        details={
            "backend": ctx.bench.backends().get("llm"),
            "tiers": dict(Counter(r.tier for r in routes if r is not None)) or None,
            "semantic_threshold": SEMANTIC_THRESHOLD,
            "items": [
                {
                    "id": p.id,
                    "question": p.question,
                    "answer": p.answer,
                    "reply": r,
                    "exact": e,
                    "contains": c,
                    "similarity": s,
                    "tier": route.tier if route is not None else None,
                    "route_reason": route.reason if route is not None else None,
                }
                for p, r, e, c, s, route in zip(
                    pairs, replies, exact, contains, sims, routes, strict=True
                )
            ],
        },
        seconds=time.perf_counter() - start,
    )
