"""One voice turn: audio in -> transcript -> streamed reply -> speech out, timed stage by stage.

The reply is cut into phrases as the LLM streams, and each phrase is synthesized while the LLM
keeps generating, so the first audio is ready long before the reply is complete. This is the
in-process path used by ``voxline turn``, ``POST /v1/turns`` and the benchmark; the realtime
session builds on the same stages. A caller that streams the turn (SSE) passes ``on_event`` and
hears the transcript, each reply delta and each audio chunk as they happen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.audio import rms_dbfs
from pipeline.errors import InvalidInput
from pipeline.fallback_types import StageFallback, collect_reports
from pipeline.phrases import PhraseChunker, PhrasePolicy
from pipeline.stages import LLM, STT, TTS
from pipeline.types import AudioChunk, GenerationParams, Message, TurnTimings, Usage

SILENCE_DBFS = -60.0
"""Input quieter than this (RMS) is treated as silence and rejected before any model runs."""


@dataclass(frozen=True, slots=True)
class Backends:
    """The backend that served each stage."""

    stt: str
    llm: str
    tts: str


@dataclass(frozen=True, slots=True)
class TurnResult:
    """Everything one voice turn produced."""

    transcript: str
    reply: str
    timings: TurnTimings
    backends: Backends
    audio: AudioChunk
    usage: Usage = field(default_factory=Usage)
    phrases: tuple[str, ...] = ()
    fallbacks: tuple[StageFallback, ...] = ()
    """Every switch to another backend during the turn, in order."""
    cost_usd: float | None = None
    """What the turn cost, priced by the server's ledger (``None``: not priced)."""


@dataclass(frozen=True, slots=True)
class TranscriptReady:
    """The user's final transcript, before the LLM starts."""

    text: str


@dataclass(frozen=True, slots=True)
class ReplyText:
    """A piece of the reply's text, as the LLM streams it."""

    text: str


@dataclass(frozen=True, slots=True)
class ReplyAudio:
    """A piece of the reply's audio, as the TTS produces it (in order)."""

    chunk: AudioChunk


TurnEvent = TranscriptReady | ReplyText | ReplyAudio
OnEvent = Callable[[TurnEvent], None]
"""Called (on the event loop, synchronously: it must not block) as a turn progresses."""


def _ignore(_: TurnEvent) -> None:
    pass


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000, 1)


async def run_turn(
    audio: AudioChunk,
    *,
    stt: STT,
    llm: LLM,
    tts: TTS,
    system_prompt: str,
    history: Sequence[Message] = (),
    params: GenerationParams | None = None,
    voice: str | None = None,
    language: str | None = None,
    phrase_policy: PhrasePolicy | None = None,
    on_event: OnEvent | None = None,
) -> TurnResult:
    """Run one turn and return its transcript, reply, audio and timings.

    ``on_event`` (optional) hears the turn as it progresses: one ``TranscriptReady``, then
    ``ReplyText`` and ``ReplyAudio`` events interleaved as the LLM and TTS produce them.

    Raises:
        InvalidInput: silent input, or no speech recognised.
        StageError: a stage failed.
    """
    if rms_dbfs(audio.samples) < SILENCE_DBFS:
        raise InvalidInput("the audio is silent: no speech to answer", code="no_speech")
    with collect_reports() as reports:  # which backend served each stage (fallback chains)
        result = await _run(
            audio,
            stt=stt,
            llm=llm,
            tts=tts,
            system_prompt=system_prompt,
            history=history,
            params=params,
            voice=voice,
            language=language,
            phrase_policy=phrase_policy,
            on_event=on_event,
        )
    backends = Backends(
        stt=reports.backend("stt", stt.name),
        llm=reports.backend("llm", llm.name),
        tts=reports.backend("tts", tts.name),
    )
    return dataclasses.replace(result, backends=backends, fallbacks=reports.switches())


async def _run(
    audio: AudioChunk,
    *,
    stt: STT,
    llm: LLM,
    tts: TTS,
    system_prompt: str,
    history: Sequence[Message],
    params: GenerationParams | None,
    voice: str | None,
    language: str | None,
    phrase_policy: PhrasePolicy | None,
    on_event: OnEvent | None,
) -> TurnResult:
    start = time.perf_counter()
    transcript = ""
    async for partial in stt.transcribe(audio, language=language):
        if partial.final:
            transcript = partial.text.strip()
    stt_done = time.perf_counter()
    if not transcript:
        raise InvalidInput("no speech was recognised in the audio", code="no_speech")
    emit = on_event or _ignore
    emit(TranscriptReady(transcript))

    messages = [Message("system", system_prompt), *history, Message("user", transcript)]
    reply, usage, llm_times, tts_times, chunks, spoken = await _reply_and_speak(
        llm, tts, messages, params, voice, phrase_policy or PhrasePolicy(), emit
    )
    end = time.perf_counter()
    first_token, first_phrase, llm_done = llm_times
    first_handed, first_audio, tts_done = tts_times
    timings = TurnTimings(
        stt_ms=_ms(start, stt_done),
        llm_ttft_ms=_ms(stt_done, first_token),
        llm_first_phrase_ms=_ms(stt_done, first_phrase),
        llm_total_ms=_ms(stt_done, llm_done),
        tts_ttfb_ms=None if first_handed is None else _ms(first_handed, first_audio),
        tts_total_ms=None if first_handed is None else _ms(first_handed, tts_done),
        total_ms=_ms(start, end),
    )
    rate = chunks[0].sample_rate if chunks else tts.capabilities.sample_rate
    samples = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
    return TurnResult(
        transcript=transcript,
        reply=reply,
        timings=timings,
        backends=Backends(stt=stt.name, llm=llm.name, tts=tts.name),
        audio=AudioChunk(samples.astype(np.float32, copy=False), rate),
        usage=usage,
        phrases=tuple(spoken),
    )


_Times = tuple[float | None, float | None, float | None]


async def _reply_and_speak(
    llm: LLM,
    tts: TTS,
    messages: list[Message],
    params: GenerationParams | None,
    voice: str | None,
    policy: PhrasePolicy,
    emit: OnEvent,
) -> tuple[str, Usage, _Times, _Times, list[AudioChunk], list[str]]:
    """Stream the reply into a phrase queue that a TTS task drains concurrently."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    chunks: list[AudioChunk] = []
    spoken: list[str] = []
    first_handed: float | None = None
    first_audio: float | None = None

    async def speak() -> None:
        nonlocal first_handed, first_audio
        while (phrase := await queue.get()) is not None:
            handed = time.perf_counter()
            first_handed = first_handed or handed
            async for chunk in tts.synthesize(phrase, voice):
                first_audio = first_audio or time.perf_counter()
                chunks.append(chunk)
                emit(ReplyAudio(chunk))
            spoken.append(phrase)

    speaker = asyncio.create_task(speak())
    chunker = PhraseChunker(policy)
    parts: list[str] = []
    usage = Usage()
    first_token: float | None = None
    first_phrase: float | None = None
    try:
        async for delta in llm.stream(messages, params):
            if delta.usage is not None:
                usage = delta.usage
            if not delta.text:
                continue
            first_token = first_token or time.perf_counter()
            parts.append(delta.text)
            emit(ReplyText(delta.text))
            for phrase in chunker.feed(delta.text):
                first_phrase = first_phrase or time.perf_counter()
                queue.put_nowait(phrase)
        llm_done = time.perf_counter()
        for phrase in chunker.flush():
            first_phrase = first_phrase or time.perf_counter()
            queue.put_nowait(phrase)
        queue.put_nowait(None)
        await speaker
    finally:
        if not speaker.done():
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)
    reply = "".join(parts).strip()
    tts_done = time.perf_counter() if chunks else None
    return (
        reply,
        usage,
        (first_token, first_phrase, llm_done),
        (first_handed, first_audio, tts_done),
        chunks,
        spoken,
    )
