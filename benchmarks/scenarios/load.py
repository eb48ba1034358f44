"""``load``: N concurrent realtime sessions for N = 1, 2, 4, ...: where does V2V give out?

Each level opens N sessions whose starts are spread over one second (real users do not start in
the same millisecond) and has each speak ``turns`` clips. A server with admission control refuses
sessions past its limit (503 at the handshake, or close code 1013): those are counted apart
(``refused``, with how long the refusal took on the client's clock, ``refusal_ms``), and the
level is judged on the sessions it accepted. A level meets the SLO when the accepted sessions'
V2V p95 is within ``--slo-v2v-p95-ms``, every accepted turn got audio back, no error came and
every refusal came within ``REFUSAL_SLO_MS``; the report names the largest N up to which every
level does. Every level runs, also past the first that fails: with admission control the excess
is refused, and how the accepted sessions fare then is what the curve is for.
"""

from __future__ import annotations

import asyncio
import logging
import time

from benchmarks.context import BenchContext, Sample, ScenarioResult
from benchmarks.data import Clip
from benchmarks.realtime_measure import RealtimeSession
from benchmarks.scenarios.realtime import measurement_sample, require_url
from benchmarks.stats import summarize
from pipeline.errors import EngineBusy, EngineUnavailable

log = logging.getLogger("voxline.bench")

STAGES: tuple[str, ...] = ()
REFUSAL_SLO_MS = 100.0
"""A refused session must hear so within this (issue 10: never left to time out)."""


def levels(max_sessions: int) -> list[int]:
    """1, 2, then every even number up to ``max_sessions`` (which is included even if odd): the
    steps past 2 are where a 2-core machine gives out, so none is skipped there."""
    out = [n for n in (1, 2) if n < max_sessions]
    out += range(4, max_sessions, 2)
    return [*out, max(1, max_sessions)]


async def _session(
    url: str, clips: list[Clip], delay_s: float, api_key: str | None
) -> list[Sample]:
    await asyncio.sleep(delay_s)
    samples: list[Sample] = []
    start = time.perf_counter()
    try:
        async with RealtimeSession(url, api_key=api_key) as session:
            for clip in clips:
                m = await session.play(clip.audio, clip.speech_end_s)
                samples.append(measurement_sample(m, clip))
    except EngineBusy as exc:  # refused by admission control: not an error, if it was quick
        refusal_ms = round((time.perf_counter() - start) * 1000, 1)
        log.info("load: refused in %.0f ms: %s", refusal_ms, exc)
        samples.append({"refused": 1.0, "refusal_ms": refusal_ms, "v2v_ms": None})
    except EngineUnavailable as exc:  # no session.created in time: a failed session
        log.warning("load: %s", exc)
        samples.append({"errors": 1.0, "v2v_ms": None})
    return samples


async def run(ctx: BenchContext, name: str = "load") -> ScenarioResult:
    """Run the levels; ``details.levels`` holds one summary per N."""
    url = require_url(ctx)
    turns = 1 if ctx.options.quick else 2
    result = ScenarioResult(name)
    if ctx.options.warmup and ctx.clips:
        warm = await _session(url, ctx.clips[:1], 0.0, ctx.options.api_key)
        result.first_call = warm[0] if warm else None
    level_rows: list[dict[str, float | int | bool | None]] = []
    best: int | None = None
    previous: int | None = None  # the level before this one
    ns = levels(ctx.options.max_sessions)
    for done, n in enumerate(ns):
        if ctx.progress is not None:
            ctx.progress(name, done, len(ns))
        plans = [[ctx.clips[(i + k) % len(ctx.clips)] for k in range(turns)] for i in range(n)]
        per_session = await asyncio.gather(
            *(_session(url, plan, i / n, ctx.options.api_key) for i, plan in enumerate(plans))
        )
        samples = [s for session in per_session for s in session]
        v2v = [s["v2v_ms"] for s in samples if s.get("v2v_ms") is not None]
        for s in samples:
            if s.get("v2v_ms") is not None:
                result.samples.setdefault(f"v2v_n{n}_ms", []).append(float(s["v2v_ms"] or 0))
            result.rows.append({**s, "sessions": float(n)})
        summary = summarize(v2v)
        errors = int(sum(s.get("errors") or 0 for s in samples))
        underruns = int(sum(s.get("underruns") or 0 for s in samples))
        refusals = [float(s["refusal_ms"] or 0) for s in samples if s.get("refused")]
        refused = summarize(refusals)
        accepted = n - len(refusals)
        answered = len(v2v) == accepted * turns
        ok = (
            summary is not None
            and answered
            and errors == 0
            and (summary.p95 <= ctx.options.slo_v2v_p95_ms)
            and (refused is None or refused.p95 <= REFUSAL_SLO_MS)
        )
        level_rows.append(
            {
                "sessions": n,
                "accepted": accepted,
                "refused": len(refusals),
                "turns": len(samples) - len(refusals),
                "v2v_p50_ms": None if summary is None else round(summary.p50, 1),
                "v2v_p95_ms": None if summary is None else round(summary.p95, 1),
                "refusal_p95_ms": None if refused is None else round(refused.p95, 1),
                "errors": errors,
                "underruns": underruns,
                "meets_slo": ok,
            }
        )
        if ok and best == previous:
            best = n
        previous = n
    if ctx.progress is not None:
        ctx.progress(name, len(ns), len(ns))
    result.details = {
        "url": url,
        "slo_v2v_p95_ms": ctx.options.slo_v2v_p95_ms,
        "refusal_slo_ms": REFUSAL_SLO_MS,
        "turns_per_session": turns,
        "levels": level_rows,
        "max_sessions_within_slo": best,
        # with admission control the excess of a level is refused (fast): how many of the
        # sessions offered at that level the server actually served
        "max_served_within_slo": next(
            (row["accepted"] for row in level_rows if row["sessions"] == best), 0
        ),
    }
    return result
