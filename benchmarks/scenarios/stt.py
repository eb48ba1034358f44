"""``stt``: latency, real-time factor and word error rate of the final transcript of each clip.

Latency is the whole ``transcribe`` call (partials included: that is what a caller waits for
before it has the final text); real-time factor is that latency over the clip's duration.
"""

from __future__ import annotations

import time

from benchmarks.context import BenchContext, Sample, ScenarioResult, ms_since, repeat
from benchmarks.data import Clip
from benchmarks.stats import corpus_wer, wer

STAGES = ("stt",)


async def transcribe(ctx: BenchContext, clip: Clip) -> tuple[str, float]:
    """The final transcript of ``clip`` and the milliseconds it took."""
    start = time.perf_counter()
    text = ""
    async for transcript in ctx.stt.transcribe(clip.audio, language=ctx.settings.stt.language):
        if transcript.final:
            text = transcript.text.strip()
    return text, ms_since(start)


async def run(ctx: BenchContext, name: str = "stt") -> ScenarioResult:
    """Transcribe every clip ``runs`` times."""
    await ctx.ensure(*STAGES)
    heard: dict[str, str] = {}

    async def once(clip: Clip, _: int) -> Sample:
        text, latency = await transcribe(ctx, clip)
        heard[clip.name] = text
        return {
            "stt_ms": latency,
            "rtf": latency / 1000 / clip.audio.duration,
            "wer": wer(clip.reference, text),
        }

    result = await repeat(ctx, ScenarioResult(name), ctx.clips, once)
    result.details = {
        "corpus_wer": corpus_wer((c.reference, heard.get(c.name, "")) for c in ctx.clips),
        "audio_seconds": [round(c.audio.duration, 3) for c in ctx.clips],
        "transcripts": {
            c.name: {"reference": c.reference, "heard": heard.get(c.name)} for c in ctx.clips
        },
    }
    return result
