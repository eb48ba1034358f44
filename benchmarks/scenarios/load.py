"""``load``: N concurrent realtime sessions for N = 1, 2, 4, ...: where does V2V give out?

Each level opens N sessions whose starts are spread over one second (real users do not start in
the same millisecond) and has each speak ``turns`` clips. A level meets the SLO when its V2V p95
is within ``--slo-v2v-p95-ms``, every turn got audio back and no error came; the report names the
largest N that does. Levels stop at the first that fails: more sessions will not do better.
"""

from __future__ import annotations

import asyncio
import logging

from benchmarks.context import BenchContext, Sample, ScenarioResult
from benchmarks.data import Clip
from benchmarks.realtime_measure import RealtimeSession
from benchmarks.scenarios.realtime import measurement_sample, require_url
from benchmarks.stats import summarize
from pipeline.errors import EngineUnavailable

log = logging.getLogger("voxline.bench")

STAGES: tuple[str, ...] = ()


def levels(max_sessions: int) -> list[int]:
    """1, 2, 4, ... up to ``max_sessions`` (which is included even if not a power of two)."""
    out, n = [], 1
    while n < max_sessions:
        out.append(n)
        n *= 2
    return [*out, max(1, max_sessions)]


async def _session(
    url: str, clips: list[Clip], delay_s: float, api_key: str | None
) -> list[Sample]:
    await asyncio.sleep(delay_s)
    samples: list[Sample] = []
    try:
        async with RealtimeSession(url, api_key=api_key) as session:
            for clip in clips:
                m = await session.play(clip.audio, clip.speech_end_s)
                samples.append(measurement_sample(m, clip))
    except EngineUnavailable as exc:  # refused, or no session.created in time: a failed session
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
        answered = len(v2v) == n * turns
        ok = (
            summary is not None
            and answered
            and errors == 0
            and (summary.p95 <= ctx.options.slo_v2v_p95_ms)
        )
        level_rows.append(
            {
                "sessions": n,
                "turns": len(samples),
                "v2v_p50_ms": None if summary is None else round(summary.p50, 1),
                "v2v_p95_ms": None if summary is None else round(summary.p95, 1),
                "errors": errors,
                "underruns": underruns,
                "meets_slo": ok,
            }
        )
        if not ok:
            break
        best = n
    if ctx.progress is not None:
        ctx.progress(name, len(ns), len(ns))
    result.details = {
        "url": url,
        "slo_v2v_p95_ms": ctx.options.slo_v2v_p95_ms,
        "turns_per_session": turns,
        "levels": level_rows,
        "max_sessions_within_slo": best,
    }
    return result
