"""``stt``: word and character error rates of the configured STT on the golden clips, per condition.

Every clip counts in its conditions (``real``, ``synthetic``, ``voice=...``, ``speed=...``,
``noise=...``; see ``golden/README.md``), and the rates are corpus-level (total edits over total
reference words or characters). The clean, normal-speed clips of the two voices that are also
slowed, sped up and put in noise belong to ``speed=1`` and ``noise=clean``, so each condition
has its own reference within the same sentences.
"""

from __future__ import annotations

import time

from benchmarks.eval.context import EvalContext
from benchmarks.eval.golden import load_audio_16k
from benchmarks.eval.scorecard import Metric, SuiteResult, error_rate
from benchmarks.eval.scoring import error_rates, rates_by_condition
from benchmarks.stats import summarize, wer

NAME = "stt"


async def run(ctx: EvalContext) -> SuiteResult:
    """Transcribe every clip once; score WER and CER overall and per condition."""
    start = time.perf_counter()
    clips = ctx.golden.stt(ctx.options.quick)
    await ctx.bench.ensure("stt")
    heard: list[str] = []
    latencies: list[float] = []
    for i, clip in enumerate(clips):
        ctx.tick(NAME, i, len(clips))
        text, ms = await ctx.transcribe(load_audio_16k(clip.audio))
        heard.append(text)
        latencies.append(ms)
    ctx.tick(NAME, len(clips), len(clips))
    overall = error_rates((c.text, h) for c, h in zip(clips, heard, strict=True))
    groups = rates_by_condition(
        (c.conditions, c.text, h) for c, h in zip(clips, heard, strict=True)
    )
    metrics: dict[str, Metric] = {
        "wer": error_rate(overall.wer, overall.utterances, overall.words, overall=True),
        "cer": error_rate(overall.cer, overall.utterances, overall.words, overall=True),
    }
    for condition, rates in groups.items():
        metrics[f"wer:{condition}"] = error_rate(
            rates.wer, rates.utterances, rates.words, overall=False
        )
        metrics[f"cer:{condition}"] = error_rate(
            rates.cer, rates.utterances, rates.words, overall=False
        )
    latency = summarize(latencies)
    return SuiteResult(
        NAME,
        metrics=metrics,
        details={
            "backend": ctx.bench.backends().get("stt"),
            "stt_ms": None if latency is None else latency.as_dict(),
            "clips": [
                {
                    "id": c.id,
                    "conditions": list(c.conditions),
                    "reference": c.text,
                    "heard": h,
                    "wer": round(wer(c.text, h), 4),
                }
                for c, h in zip(clips, heard, strict=True)
            ],
        },
        seconds=time.perf_counter() - start,
    )
