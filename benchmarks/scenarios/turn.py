"""``turn``: the in-process pipeline, one turn at a time, beside the naive baseline.

Each clip is answered twice, by the streaming pipeline (``pipeline.turn.run_turn``) and by the
naive sequential one, in alternating order so neither always runs on warmer caches. In process
there is no client and no VAD, so the whole clip is handed over at once and

- ``v2v_ms`` is the in-process voice-to-voice: first reply audio - the moment the finished input
  was handed over. It has no endpoint delay and no network; the ``realtime`` scenario measures
  the real one on a client's clock.
- ``overhead_ms`` is ``v2v_ms - (stt_ms + first_phrase_ms + tts_ttfb_ms)``: queueing and glue.
- ``naive_total_ms`` is the naive pipeline's first audio (its whole turn), and
  ``v2v_naive_ratio`` the streaming V2V over it, per clip (lower is better).
"""

from __future__ import annotations

import time

from benchmarks.context import BenchContext, Sample, ScenarioResult, ms_since, repeat
from benchmarks.data import Clip
from benchmarks.scenarios.naive import NaiveTurn, naive_turn
from benchmarks.stats import summarize
from pipeline.turn import ReplyAudio, TurnEvent, TurnResult, run_turn

STAGES = ("stt", "llm", "tts")


async def streaming_turn(ctx: BenchContext, clip: Clip) -> tuple[TurnResult, float | None]:
    """One streamed turn and its in-process V2V (ms to the first reply audio)."""
    first_audio: float | None = None

    def on_event(event: TurnEvent) -> None:
        nonlocal first_audio
        if isinstance(event, ReplyAudio) and first_audio is None:
            first_audio = time.perf_counter()

    start = time.perf_counter()
    result = await run_turn(
        clip.audio,
        stt=ctx.stt,
        llm=ctx.llm,
        tts=ctx.tts,
        system_prompt=ctx.settings.llm.system_prompt,
        params=ctx.params(),
        voice=ctx.settings.tts.voice,
        language=ctx.settings.stt.language,
        on_event=on_event,
    )
    return result, None if first_audio is None else ms_since(start, first_audio)


def _sample(streamed: TurnResult, v2v: float | None, naive: NaiveTurn) -> Sample:
    t = streamed.timings
    parts = (t.stt_ms, t.llm_first_phrase_ms, t.tts_ttfb_ms)
    overhead = None
    if v2v is not None and all(p is not None for p in parts):
        overhead = round(v2v - sum(p for p in parts if p is not None), 1)
    return {
        "v2v_ms": v2v,
        "stt_ms": t.stt_ms,
        "llm_ttft_ms": t.llm_ttft_ms,
        "first_phrase_ms": t.llm_first_phrase_ms,
        "tts_ttfb_ms": t.tts_ttfb_ms,
        "overhead_ms": overhead,
        "total_ms": t.total_ms,
        "naive_total_ms": naive.total_ms,
        "naive_stt_ms": naive.stt_ms,
        "naive_llm_ms": naive.llm_ms,
        "naive_tts_ms": naive.tts_ms,
        "v2v_naive_ratio": None if v2v is None else round(v2v / naive.total_ms, 4),
    }


async def run(ctx: BenchContext, name: str = "turn") -> ScenarioResult:
    """Answer every clip ``runs`` times with both pipelines."""
    await ctx.ensure(*STAGES)
    said: dict[str, dict[str, str]] = {}

    async def once(clip: Clip, i: int) -> Sample:
        if i % 2 == 0:
            streamed, v2v = await streaming_turn(ctx, clip)
            naive = await naive_turn(ctx, clip.audio)
        else:
            naive = await naive_turn(ctx, clip.audio)
            streamed, v2v = await streaming_turn(ctx, clip)
        said[clip.name] = {
            "transcript": streamed.transcript,
            "reply": streamed.reply,
            "naive_reply": naive.reply,
        }
        return _sample(streamed, v2v, naive)

    result = await repeat(ctx, ScenarioResult(name), ctx.clips, once)
    v2v, naive = (
        summarize(result.samples.get("v2v_ms", [])),
        summarize(result.samples.get("naive_total_ms", [])),
    )
    result.details = {
        "v2v_definition": "in-process: first reply audio - input handed over (no VAD, no network)",
        "streaming_naive_ratio_p50": None if not (v2v and naive) else round(v2v.p50 / naive.p50, 3),
        "turns": said,
    }
    return result
