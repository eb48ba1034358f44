"""``llm``: time to first token, to the first speakable phrase, and decode speed.

Each built-in question is asked as a fresh conversation (system prompt + the question), with the
configured sampling options and a fixed seed. The first phrase is cut by the same chunker the
pipeline uses, so it is the moment TTS could start.
"""

from __future__ import annotations

import time

from benchmarks.context import BenchContext, Sample, ScenarioResult, ms_since, repeat
from benchmarks.data import Clip
from pipeline.phrases import PhraseChunker
from pipeline.types import Message

STAGES = ("llm",)


async def run(ctx: BenchContext, name: str = "llm") -> ScenarioResult:
    """Stream one reply per question, ``runs`` times."""
    await ctx.ensure(*STAGES)
    replies: dict[str, str] = {}

    async def once(clip: Clip, _: int) -> Sample:
        messages = [
            Message("system", ctx.settings.llm.system_prompt),
            Message("user", clip.reference),
        ]
        chunker = PhraseChunker()
        parts: list[str] = []
        first_token = first_phrase = None
        tokens = prompt_tokens = 0
        start = time.perf_counter()
        async for delta in ctx.llm.stream(messages, ctx.params()):
            if delta.usage is not None:
                tokens, prompt_tokens = delta.usage.completion_tokens, delta.usage.prompt_tokens
            if not delta.text:
                continue
            first_token = first_token or ms_since(start)
            parts.append(delta.text)
            if first_phrase is None and any(True for _ in chunker.feed(delta.text)):
                first_phrase = ms_since(start)
        total = ms_since(start)
        if first_phrase is None and parts:
            first_phrase = total  # the whole reply was one phrase: speakable when it ended
        replies[clip.name] = "".join(parts).strip()
        decode_s = (total - (first_token or total)) / 1000
        return {
            "llm_ttft_ms": first_token,
            "first_phrase_ms": first_phrase,
            "llm_total_ms": total,
            "completion_tokens": float(tokens),
            "prompt_tokens": float(prompt_tokens),
            # tokens after the first, over the time after the first: decode speed without prefill
            "tokens_per_s": (tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else None,
        }

    result = await repeat(ctx, ScenarioResult(name), ctx.clips, once)
    result.details = {"replies": replies}
    return result
