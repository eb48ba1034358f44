"""``tts``: intelligibility by round trip, and sanity checks of every synthesized clip.

Each golden sentence is synthesized by the configured TTS; the clip is checked (duration per
character, clipping, silence: ``benchmarks.eval.audio_checks``) and transcribed back by the
configured STT, whose transcript is compared with the sentence (round-trip WER and CER). The
STT is the judge here, so a scorecard whose STT changed says so in its producer: compare
round-trip numbers between cards with the same STT.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.eval.audio_checks import ClipLimits, check_clip
from benchmarks.eval.context import EvalContext
from benchmarks.eval.scorecard import Metric, SuiteResult, error_rate, rate
from benchmarks.eval.scoring import error_rates
from benchmarks.stats import summarize, wer
from pipeline.types import AudioChunk

NAME = "tts"
CHECKS = ("duration", "clipping", "silence")


async def synthesize(ctx: EvalContext, text: str) -> tuple[AudioChunk, float | None]:
    """The configured TTS's whole clip for ``text`` and its time to first audio (ms)."""
    chunks: list[AudioChunk] = []
    first = None
    start = time.perf_counter()
    async for chunk in ctx.bench.tts.synthesize(text, ctx.settings.tts.voice):
        first = first or round((time.perf_counter() - start) * 1000, 1)
        chunks.append(chunk)
    if not chunks:
        return AudioChunk(np.zeros(0, dtype=np.float32), 16_000), first
    samples = np.concatenate([c.samples for c in chunks]).astype(np.float32)
    return AudioChunk(samples, chunks[0].sample_rate), first


async def run(ctx: EvalContext) -> SuiteResult:
    """Synthesize, check and transcribe back every sentence once."""
    start = time.perf_counter()
    sentences = ctx.golden.tts(ctx.options.quick)
    limits = ClipLimits.from_json(ctx.golden.tts_checks())
    await ctx.bench.ensure("stt", "tts")
    rows = []
    ttfb: list[float | None] = []
    for i, sentence in enumerate(sentences):
        ctx.tick(NAME, i, len(sentences))
        audio, first = await synthesize(ctx, sentence.text)
        ttfb.append(first)
        check = check_clip(audio, sentence.text, limits)
        back = (await ctx.transcribe(audio))[0] if len(audio.samples) else ""
        rows.append((sentence, check, back))
    ctx.tick(NAME, len(sentences), len(sentences))
    n = len(rows)
    rates = error_rates((s.text, back) for s, _, back in rows)
    metrics: dict[str, Metric] = {
        "roundtrip_wer": error_rate(rates.wer, n, rates.words, overall=True),
        "roundtrip_cer": error_rate(rates.cer, n, rates.words, overall=True),
        "checks_passed": rate(sum(c.passed for _, c, _ in rows) / n, n, "higher"),
    }
    for name in CHECKS:
        failed = sum(name in c.failures for _, c, _ in rows)
        metrics[f"{name}_failures"] = rate(failed / n, n, "lower")
    first_audio = summarize(ttfb)
    return SuiteResult(
        NAME,
        metrics=metrics,
        details={
            "backend": ctx.bench.backends().get("tts"),
            "judge_stt": ctx.bench.backends().get("stt"),
            "tts_ttfb_ms": None if first_audio is None else first_audio.as_dict(),
            "limits": {
                "seconds_per_char": [limits.seconds_per_char_min, limits.seconds_per_char_max],
                "max_clipped_fraction": limits.max_clipped_fraction,
                "max_edge_silence_s": limits.max_edge_silence_s,
                "max_pause_s": limits.max_pause_s,
                "min_voiced_fraction": limits.min_voiced_fraction,
            },
            "sentences": [
                {
                    "id": s.id,
                    "text": s.text,
                    "heard": back,
                    "wer": round(wer(s.text, back), 4),
                    "seconds": c.seconds,
                    "seconds_per_char": c.seconds_per_char,
                    "clipped_fraction": c.clipped_fraction,
                    "lead_silence_s": c.lead_silence_s,
                    "trail_silence_s": c.trail_silence_s,
                    "longest_pause_s": c.longest_pause_s,
                    "voiced_fraction": c.voiced_fraction,
                    "failures": list(c.failures),
                }
                for s, c, back in rows
            ],
        },
        seconds=time.perf_counter() - start,
    )
