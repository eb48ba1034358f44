"""One voice turn from a recorded clip: audio in -> transcript -> spoken reply, timed by stage.

This is the path of ``POST /v1/turns``, ``voxline turn`` and the benchmark's ``turn`` scenario. The
reply is the realtime session's ``Reply`` (``pipeline.reply``): the LLM streams into the phrase
chunker and each phrase is spoken while the LLM goes on, so the first audio is ready long before
the reply is complete, a TTS failure stops the LLM at once, and the audio leaves at the requested
rate through one streaming resampler. The timings are ``pipeline.timing``'s, with the clip's
hand-over as both its end of speech and its end-of-turn decision.

A caller that streams the turn (SSE) passes ``on_event`` and hears the transcript, then, for each
phrase, its text just before its first audio, then the audio as it is made: the same granularity as
a realtime response's ``response.output_audio_transcript.delta`` events.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.audio import rms_dbfs
from pipeline.errors import InvalidInput
from pipeline.fallback_types import StageFallback, collect_reports
from pipeline.file_search import FileSearch
from pipeline.knowledge import Grounded, Grounder, KnowledgeReport
from pipeline.phrases import PhrasePolicy
from pipeline.reply import Reply
from pipeline.router import Route, Router
from pipeline.stages import LLM, STT, TTS
from pipeline.timing import TurnMarks, turn_timings
from pipeline.types import (
    AudioChunk,
    Backends,
    GenerationParams,
    Message,
    TurnTimings,
    Usage,
)

SILENCE_DBFS = -60.0
"""Input quieter than this (RMS) is treated as silence and rejected before any model runs."""

Clock = Callable[[], float]


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
    """What the turn cost, priced by the server's accounting (``None``: not priced)."""
    route: Route | None = None
    """The LLM tier that answered and why (``None``: no router)."""
    knowledge: KnowledgeReport | None = None
    """What retrieval found and how grounded the answer was (``None``: no ``file_search``)."""


@dataclass(frozen=True, slots=True)
class TranscriptReady:
    """The user's final transcript, before the LLM starts."""

    text: str


@dataclass(frozen=True, slots=True)
class ReplyText:
    """The text of the phrase whose audio comes next (a leading space joins it to the last)."""

    text: str


@dataclass(frozen=True, slots=True)
class ReplyAudio:
    """A piece of the reply's audio, in order."""

    chunk: AudioChunk


TurnEvent = TranscriptReady | ReplyText | ReplyAudio
OnEvent = Callable[[TurnEvent], None]
"""Called (on the event loop, synchronously: it must not block) as a turn progresses."""


def _ignore(_: TurnEvent) -> None:
    pass


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
    speed: float = 1.0,
    language: str | None = None,
    phrase_policy: PhrasePolicy | None = None,
    output_rate: int | None = None,
    on_event: OnEvent | None = None,
    clock: Clock = time.perf_counter,
    router: Router | None = None,
    tier: str | None = None,
    grounder: Grounder | None = None,
    file_search: FileSearch | None = None,
) -> TurnResult:
    """Run one turn and return its transcript, reply, audio and timings.

    Args:
        audio: The recorded question.
        stt: Speech to text.
        llm: The language model.
        tts: The voice.
        system_prompt: The system message.
        history: Earlier messages of the conversation.
        params: Sampling options.
        voice: TTS voice (``None``: the backend's default).
        speed: TTS speaking rate.
        language: Spoken language (``None``: detect).
        phrase_policy: Where the reply is cut into phrases.
        output_rate: Sample rate of the returned audio (``None``: the TTS's own rate).
        on_event: Hears the transcript, each phrase's text and the audio as they happen.
        clock: Time source of the timings.
        router: Picks the LLM tier from the transcript (``None``: ``llm`` answers).
        tier: A tier pinned by the request (the router's ``pinned``).
        grounder: Retrieval and groundedness (``pipeline.knowledge``); used when
            ``file_search`` names vector stores.
        file_search: The request's ``file_search`` tool.

    Raises:
        InvalidInput: silent input, no speech recognised, or ``file_search`` without a grounder.
        StageError: a stage failed.
    """
    if file_search is not None and grounder is None:
        raise InvalidInput("this server has no knowledge base", param="tools")
    if rms_dbfs(audio.samples) < SILENCE_DBFS:
        raise InvalidInput("the audio is silent: no speech to answer", code="no_speech")
    emit = on_event or _ignore
    with collect_reports() as reports:  # which backend served each stage (fallback chains)
        start = clock()
        transcript = ""
        # a voice turn, like a realtime one: the bounded, deterministic decode
        transcripts = stt.transcribe(audio, language=language, realtime=True)
        async with contextlib.aclosing(transcripts) as partials:
            async for partial in partials:
                if partial.final:
                    transcript = partial.text.strip()
        marks = TurnMarks(speech_end=start, decision=start, vad=False, final=clock())
        if not transcript:
            raise InvalidInput("no speech was recognised in the audio", code="no_speech")
        emit(TranscriptReady(transcript))
        messages = [Message("system", system_prompt), *history, Message("user", transcript)]
        # the seam between transcript and LLM: retrieval first, then the router, which reads
        # how much was retrieved
        grounded: Grounded | None = None
        if grounder is not None and file_search is not None:
            grounded = await grounder.ground(messages, file_search)
            messages = grounded.messages
        route = None
        if router is not None:
            hits = len(grounded.passages) if grounded is not None else None
            route = router.route(messages, params, pinned=tier, retrieval_hits=hits)
            llm = router.llm(route)
        reply = Reply(
            llm,
            tts,
            messages,
            route=route,
            params=params,
            voice=voice,
            speed=speed,
            policy=phrase_policy,
            output_rate=output_rate,
            clock=clock,
            text=grounded.fixed_reply if grounded is not None else None,
            vet=grounded.vet if grounded is not None else None,
        )
        chunks: list[AudioChunk] = []
        first_audio: float | None = None
        phrase_index = -1
        try:
            async for spoken in reply.chunks():
                if spoken.phrase_index != phrase_index:
                    phrase_index = spoken.phrase_index
                    emit(ReplyText(spoken.phrase if phrase_index == 0 else " " + spoken.phrase))
                first_audio = first_audio or clock()
                chunks.append(spoken.audio)
                emit(ReplyAudio(spoken.audio))
        finally:
            await reply.aclose()
        timings = turn_timings(marks, reply.times, first_audio, clock())
        knowledge = await grounded.report(reply.text) if grounded is not None else None
    rate = chunks[0].sample_rate if chunks else (output_rate or tts.capabilities.sample_rate)
    samples = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
    return TurnResult(
        transcript=transcript,
        reply=reply.text,
        timings=timings,
        backends=Backends(
            stt=reports.backend("stt", stt.name),
            llm=reports.backend("llm", llm.name),
            tts=reports.backend("tts", tts.name),
        ),
        audio=AudioChunk(samples.astype(np.float32, copy=False), rate),
        usage=reply.usage,
        phrases=tuple(reply.phrases),
        fallbacks=reports.switches(),
        route=route,
        knowledge=knowledge,
    )
