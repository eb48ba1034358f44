"""``turn``: the in-process pipeline, one turn at a time, beside the naive baseline.

Each clip is answered twice, by the streaming pipeline (``pipeline.turn.run_turn``) and by the
naive sequential one, in alternating order so neither always runs on warmer caches. In process
there is no client and no VAD, so the whole clip is handed over at once and

- ``v2v_ms`` is the in-process voice-to-voice: first reply audio - the moment the finished input
  was handed over. It has no endpoint delay and no network; the ``realtime`` scenario measures
  the real one on a client's clock.
- ``overhead_ms`` is ``v2v_ms - (stt_ms + first_phrase_ms + tts_ttfb_ms)``: queueing and glue.
- ``naive_total_ms`` is the naive pipeline's first audio (its whole turn), and
  ``v2v_naive_ratio`` the streaming V2V over it, per clip (lower is better);
  ``v2v_naive_ratio_<length>`` the same over the questions asking for a ``short``, ``medium`` or
  ``long`` answer (``benchmarks.data.PROMPTS``), and ``reply_words_<length>`` how long the
  replies were: the longer the reply, the more the naive pipeline waits for.
"""

from __future__ import annotations

import time

from benchmarks.context import BenchContext, Sample, ScenarioResult, ms_since, repeat
from benchmarks.data import Clip
from benchmarks.scenarios.naive import NaiveTurn, naive_turn
from benchmarks.stats import summarize
from pipeline.phrases import PhrasePolicy
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
        phrase_policy=PhrasePolicy.from_settings(ctx.settings.reply),
        on_event=on_event,
    )
    return result, None if first_audio is None else ms_since(start, first_audio)


LENGTHS = ("short", "medium", "long")


def _sample(clip: Clip, streamed: TurnResult, v2v: float | None, naive: NaiveTurn) -> Sample:
    t = streamed.timings
    parts = (t.stt_ms, t.llm_first_phrase_ms, t.tts_ttfb_ms)
    overhead = None
    if v2v is not None and all(p is not None for p in parts):
        overhead = round(v2v - sum(p for p in parts if p is not None), 1)
    ratio = None if v2v is None else round(v2v / naive.total_ms, 4)
    by_length: Sample = {}
    for length in LENGTHS:
        mine = clip.answer_length == length
        by_length[f"v2v_naive_ratio_{length}"] = ratio if mine else None
        by_length[f"reply_words_{length}"] = float(len(naive.reply.split())) if mine else None
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
        "v2v_naive_ratio": ratio,
        **by_length,
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
        return _sample(clip, streamed, v2v, naive)

    result = await repeat(ctx, ScenarioResult(name), ctx.clips, once)
    v2v, naive = (
        summarize(result.samples.get("v2v_ms", [])),
        summarize(result.samples.get("naive_total_ms", [])),
    )
    result.details = {
        "v2v_definition": "in-process: first reply audio - input handed over (no VAD, no network)",
        "streaming_naive_ratio_p50": None if not (v2v and naive) else round(v2v.p50 / naive.p50, 3),
        "streaming_naive_ratio_p50_by_length": _ratios_by_length(result),
        "turns": said,
    }
    return result


def _ratios_by_length(result: ScenarioResult) -> dict[str, float]:
    """p50 of streaming V2V over p50 of the naive total, per answer length (where measured)."""
    streamed: dict[str, list[float]] = {length: [] for length in LENGTHS}
    naive: dict[str, list[float]] = {length: [] for length in LENGTHS}
    for row in result.rows:
        length = next((n for n in LENGTHS if row.get(f"v2v_naive_ratio_{n}") is not None), None)
        v2v, total = row.get("v2v_ms"), row.get("naive_total_ms")
        if length is not None and v2v is not None and total is not None:
            streamed[length].append(v2v)
            naive[length].append(total)
    out: dict[str, float] = {}
    for length in LENGTHS:
        a, b = summarize(streamed[length]), summarize(naive[length])
        if a is not None and b is not None:
            out[length] = round(a.p50 / b.p50, 3)
    return out
