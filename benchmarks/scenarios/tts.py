"""``tts``: time to first audio, real-time factor, and intelligibility as round-trip WER.

Round trip: each synthesized reply is transcribed by the configured STT and compared with the
text it was asked to say. The transcription is not part of any TTS latency.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.context import BenchContext, Sample, ScenarioResult, ms_since, repeat
from benchmarks.stats import corpus_wer, wer
from pipeline.types import AudioChunk

STAGES = ("stt", "tts")


async def run(ctx: BenchContext, name: str = "tts") -> ScenarioResult:
    """Synthesize every reply ``runs`` times; transcribe each back."""
    await ctx.ensure(*STAGES)
    heard: dict[str, str] = {}

    async def once(text: str, _: int) -> Sample:
        chunks: list[AudioChunk] = []
        first = None
        start = time.perf_counter()
        async for chunk in ctx.tts.synthesize(text, ctx.settings.tts.voice):
            first = first or ms_since(start)
            chunks.append(chunk)
        total = ms_since(start)
        audio = AudioChunk(np.concatenate([c.samples for c in chunks]), chunks[0].sample_rate)
        back = ""
        async for transcript in ctx.stt.transcribe(audio, language=ctx.settings.stt.language):
            if transcript.final:
                back = transcript.text.strip()
        heard[text] = back
        return {
            "tts_ttfb_ms": first,
            "tts_total_ms": total,
            "rtf": total / 1000 / audio.duration,
            "audio_s": audio.duration,
            "wer": wer(text, back),
        }

    result = await repeat(ctx, ScenarioResult(name), ctx.replies, once)
    result.details = {
        "corpus_wer": corpus_wer((t, heard.get(t, "")) for t in ctx.replies),
        "heard": heard,
    }
    return result
