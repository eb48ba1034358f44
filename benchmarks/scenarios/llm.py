"""``llm``: time to first token, to the first speakable phrase, and decode speed.

Each built-in question is asked as a fresh conversation (system prompt + the question), with the
configured sampling options and a fixed seed. The first phrase is cut by the same chunker the
pipeline uses, so it is the moment TTS could start.

Then, once per run, the questions are asked in order as **one conversation**, its history kept
as a realtime session keeps it (``pipeline.history``, the session's token budget), to show what
the engine's prompt cache is worth: each turn's prompt starts with the previous one, so an
engine that keeps its prefix (llama.cpp does) reads only the new messages. Each turn is timed
twice: ``conversation_ttft_ms`` right after the previous turn, as in a session, and
``conversation_cold_ttft_ms`` after an unrelated prompt has evicted the cache. The p50 per turn
number is in ``details.conversation``.
"""

from __future__ import annotations

import time

from benchmarks.context import BenchContext, Sample, ScenarioResult, ms_since, repeat
from benchmarks.data import Clip
from benchmarks.stats import summarize
from pipeline.history import History, Item
from pipeline.phrases import PhraseChunker, PhrasePolicy
from pipeline.types import GenerationParams, Message

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
        chunker = PhraseChunker(PhrasePolicy.from_settings(ctx.settings.reply))
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
    by_turn: dict[str, dict[int, list[float]]] = {}
    for _ in range(ctx.options.runs):
        for turn, sample in enumerate(await conversation(ctx), start=1):
            result.add(sample)
            for metric, value in sample.items():
                if value is not None:
                    by_turn.setdefault(metric, {}).setdefault(turn, []).append(value)
    result.details = {
        "replies": replies,
        "conversation": {
            f"{metric}_p50_by_turn": {
                turn: summary.p50
                for turn, values in turns.items()
                if (summary := summarize(values))
            }
            for metric, turns in by_turn.items()
        },
    }
    return result


_EVICT = [Message("system", "You are a calculator."), Message("user", "1+1")]


async def _ttft(ctx: BenchContext, messages: list[Message]) -> tuple[float | None, str, int]:
    """Time to the first token, the reply, and the prompt's tokens."""
    first, parts, prompt_tokens = None, [], 0
    start = time.perf_counter()
    async for delta in ctx.llm.stream(messages, ctx.params()):
        if delta.usage is not None:
            prompt_tokens = delta.usage.prompt_tokens
        if delta.text:
            first = first or ms_since(start)
            parts.append(delta.text)
    return first, "".join(parts).strip(), prompt_tokens


async def conversation(ctx: BenchContext) -> list[Sample]:
    """The questions as one conversation: per turn, TTFT with the cache warm and evicted."""
    s = ctx.settings
    history = History(
        max_tokens=s.session.history_max_tokens, chars_per_token=s.session.chars_per_token
    )
    samples: list[Sample] = []
    for i, clip in enumerate(ctx.clips):
        history.add(Item(f"u{i}", "user", clip.reference))
        messages = history.messages(s.llm.system_prompt)
        warm, reply, prompt_tokens = await _ttft(ctx, messages)
        async for _ in ctx.llm.stream(_EVICT, GenerationParams(max_tokens=1, temperature=0.0)):
            pass
        cold, _, _ = await _ttft(ctx, messages)
        history.add(Item(f"a{i}", "assistant", reply))
        samples.append(
            {
                "conversation_ttft_ms": warm,
                "conversation_cold_ttft_ms": cold,
                "conversation_prompt_tokens": float(prompt_tokens),
            }
        )
    return samples
