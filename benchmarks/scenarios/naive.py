"""The naive sequential pipeline, the baseline every streaming number is judged against.

Wait for the whole transcript, then the whole reply, then the whole synthesis, and only then
play: what a pipeline built from three blocking calls does. Its first audio is its total.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from benchmarks.context import BenchContext, ms_since
from pipeline.errors import InvalidInput
from pipeline.types import AudioChunk, Message


@dataclass(frozen=True, slots=True)
class NaiveTurn:
    """Milliseconds of each blocking step and the whole turn, plus what was said."""

    stt_ms: float
    llm_ms: float
    tts_ms: float
    total_ms: float
    transcript: str
    reply: str


async def naive_turn(ctx: BenchContext, audio: AudioChunk) -> NaiveTurn:
    """One turn, each stage run to completion before the next starts.

    Raises:
        InvalidInput: nothing was recognised, or the LLM replied nothing.
    """
    start = time.perf_counter()
    transcript = ""
    async for part in ctx.stt.transcribe(audio, language=ctx.settings.stt.language):
        if part.final:
            transcript = part.text.strip()
    stt_done = time.perf_counter()
    if not transcript:
        raise InvalidInput("no speech was recognised in the audio", code="no_speech")
    messages = [Message("system", ctx.settings.llm.system_prompt), Message("user", transcript)]
    reply = "".join([d.text async for d in ctx.llm.stream(messages, ctx.params())]).strip()
    llm_done = time.perf_counter()
    if not reply:
        raise InvalidInput("the LLM replied nothing", code="empty_reply")
    _ = [c async for c in ctx.tts.synthesize(reply, ctx.settings.tts.voice)]
    end = time.perf_counter()
    return NaiveTurn(
        stt_ms=ms_since(start, stt_done),
        llm_ms=ms_since(stt_done, llm_done),
        tts_ms=ms_since(llm_done, end),
        total_ms=ms_since(start, end),
        transcript=transcript,
        reply=reply,
    )
