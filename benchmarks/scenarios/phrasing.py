"""``phrasing``: the first phrase's length against time to first audio and the cut's naturalness.

Time to first audio after the LLM starts is the LLM's first phrase plus TTS's first audio of it,
and both grow with the phrase; a short phrase is spoken with a phrase-final intonation where the
sentence goes on. For each built-in question the LLM's reply is streamed once per run (fresh
conversation, seeded) and the arrival time of every delta recorded; the phrase chunker is then
replayed over those deltas (it cuts the same whatever the deltas' sizes) for each candidate
``first_phrase_max_words``, and the first phrase it cuts is spoken by the configured TTS, timed
to its first chunk. Per candidate ``w<words>`` (``w0``: cut only at punctuation):

- ``first_phrase_ms_<c>``: the first phrase's last delta - the LLM request;
- ``tts_first_audio_ms_<c>``: the TTS's first chunk of that phrase - its request;
- ``first_audio_ms_<c>``: their sum (what the LLM and TTS add to voice-to-voice);
- ``first_words_<c>``: words in the first phrase;
- ``cut_natural_<c>``: 1 when the phrase ends at punctuation or is the whole reply (a natural
  cut), 0 when it was cut for time at a word boundary; ``cut_weak_<c>``: 1 when a cut for time
  ends on a word a phrase should not end on ("the", "of", "is": it sounds broken,
  ``pipeline.phrases.dangles``);
- ``tts_chunks_<c>``: the audio chunks the TTS spoke it in (Piper: more than one when it split
  the phrase at ``piper_first_phonemes``; a first phrase of a few words never is).

``details.table`` lists the p50s side by side.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from benchmarks.context import BenchContext, Sample, ScenarioResult, ms_since, repeat
from benchmarks.data import Clip
from benchmarks.stats import summarize
from pipeline.phrases import PhraseChunker, PhrasePolicy, dangles
from pipeline.stages import TTS
from pipeline.types import Message

STAGES = ("llm", "tts")
FIRST_WORDS: tuple[int, ...] = (0, 3, 4, 5, 6, 8)
"""Candidate ``first_phrase_max_words`` (0: cut at punctuation only)."""
_PUNCTUATION = tuple(".!?…,;:\u2014\u2013\"')]")


def first_phrase(
    deltas: Sequence[tuple[float, str]], policy: PhrasePolicy
) -> tuple[str, float, bool]:
    """The first phrase the chunker cuts from timed deltas ``(ms, text)``, when, and whether it
    is the whole reply (the LLM ended it)."""
    chunker = PhraseChunker(policy)
    for at, text in deltas:
        for phrase in chunker.feed(text):
            return phrase, at, False
    rest = next(iter(chunker.flush()), "")
    return rest, deltas[-1][0] if deltas else 0.0, True


async def _first_audio(tts: TTS, text: str, voice: str | None) -> tuple[float | None, int]:
    """Milliseconds to the first chunk of ``text`` and how many chunks it came in."""
    first, chunks = None, 0
    start = time.perf_counter()
    async for _ in tts.synthesize(text, voice):
        first = first or ms_since(start)
        chunks += 1
    return first, chunks


async def run(ctx: BenchContext, name: str = "phrasing") -> ScenarioResult:
    """Replay every question's reply through each candidate, ``runs`` times."""
    await ctx.ensure(*STAGES)
    base = PhrasePolicy.from_settings(ctx.settings.reply)
    voice = ctx.settings.tts.voice
    cuts: dict[str, dict[str, str]] = {}

    async def once(clip: Clip, _: int) -> Sample:
        messages = [
            Message("system", ctx.settings.llm.system_prompt),
            Message("user", clip.reference),
        ]
        deltas: list[tuple[float, str]] = []
        start = time.perf_counter()
        async for delta in ctx.llm.stream(messages, ctx.params()):
            if delta.text:
                deltas.append((ms_since(start), delta.text))
        sample: Sample = {}
        said: dict[str, str] = {}
        for n in FIRST_WORDS:
            label = f"w{n}"
            phrase, at, whole = first_phrase(deltas, dataclasses.replace(base, first_max_words=n))
            if not phrase:
                continue
            tts_ms, chunks = await _first_audio(ctx.tts, phrase, voice)
            said[label] = phrase
            sample[f"first_phrase_ms_{label}"] = at
            sample[f"tts_first_audio_ms_{label}"] = tts_ms
            sample[f"first_audio_ms_{label}"] = None if tts_ms is None else round(at + tts_ms, 1)
            sample[f"first_words_{label}"] = float(len(phrase.split()))
            natural = whole or phrase.endswith(_PUNCTUATION)
            sample[f"cut_natural_{label}"] = float(natural)
            sample[f"cut_weak_{label}"] = float(not natural and dangles(phrase.split()[-1]))
            sample[f"tts_chunks_{label}"] = float(chunks)
        cuts[clip.name] = said
        return sample

    result = await repeat(ctx, ScenarioResult(name), ctx.clips, once)
    result.details = {
        "configured": {"first_phrase_max_words": base.first_max_words},
        "table": [_row(result, f"w{n}") for n in FIRST_WORDS],
        "first_phrases": cuts,
    }
    return result


def _row(result: ScenarioResult, label: str) -> dict[str, object]:
    def p50(metric: str) -> float | None:
        s = summarize(result.samples.get(f"{metric}_{label}", []))
        return None if s is None else round(s.p50, 1)

    def mean(metric: str) -> float | None:
        s = summarize(result.samples.get(f"{metric}_{label}", []))
        return None if s is None else round(s.mean, 3)

    return {
        "candidate": label,
        "first_phrase_ms_p50": p50("first_phrase_ms"),
        "tts_first_audio_ms_p50": p50("tts_first_audio_ms"),
        "first_audio_ms_p50": p50("first_audio_ms"),
        "first_words_mean": mean("first_words"),
        "cut_natural": mean("cut_natural"),
        "cut_weak": mean("cut_weak"),
        "tts_chunks_mean": mean("tts_chunks"),
    }
