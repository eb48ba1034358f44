"""One spoken reply, streamed: LLM text cut into phrases, each phrase spoken while the LLM goes on.

Two tasks run from ``start()``: the LLM's stream feeds a ``PhraseChunker`` whose phrases queue up
for the TTS task, which synthesizes them one after another (so audio stays in order) into an
output queue. The consumer reads that queue at its own pace, or not yet: a speculative reply runs
ahead while the session waits to be sure the user has finished, and its audio is ready when it
is released. ``aclose()`` cancels both tasks, which closes the stages' async iterators, which
stop their worker threads; nothing more is spoken. A failure of either stage cancels the other at
once (a TTS that cannot speak must not let the LLM generate a reply nobody will hear) and is the
next thing the consumer reads.

This is the one path from LLM text to speech: the realtime session's responses and every HTTP
voice turn (``pipeline.turn``) are built on it.

Audio leaves at ``output_rate`` through one streaming resampler for the whole reply: resampling
each chunk on its own would put a click at every chunk boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import numpy as np
import soxr

from pipeline.phrases import PhraseChunker, PhrasePolicy
from pipeline.stages import LLM, TTS
from pipeline.timing import ReplyTimes
from pipeline.types import AudioChunk, GenerationParams, Message, Usage

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class SpokenChunk:
    """A piece of the reply's audio and the phrase it speaks (``phrase_index`` counts from 0)."""

    phrase_index: int
    phrase: str
    audio: AudioChunk


class Reply:
    """A reply being generated and spoken.

    Args:
        llm: The language model.
        tts: The voice.
        messages: The conversation to answer.
        params: Sampling options.
        voice: TTS voice (``None``: the backend's default).
        speed: TTS speaking rate.
        language: The text's language for a TTS that declares languages (GPT-SoVITS;
            ``None``: the voice's own).
        policy: Where phrases are cut.
        output_rate: Rate of the audio handed out (``None``: the TTS's own rate).
        clock: Time source of ``times``.
    """

    def __init__(
        self,
        llm: LLM,
        tts: TTS,
        messages: Sequence[Message],
        *,
        params: GenerationParams | None = None,
        voice: str | None = None,
        speed: float = 1.0,
        language: str | None = None,
        policy: PhrasePolicy | None = None,
        output_rate: int | None = None,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.llm = llm
        self.tts = tts
        self.messages = list(messages)
        self.params = params
        self.voice = voice
        self.speed = speed
        self.language = language
        self.policy = policy or PhrasePolicy()
        self.output_rate = output_rate
        self._clock = clock
        self.times = ReplyTimes(started=clock())
        self.usage = Usage()
        self.finish_reason: str | None = None
        self.phrases: list[str] = []
        self._parts: list[str] = []
        self._phrase_queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._out: asyncio.Queue[SpokenChunk | BaseException | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def text(self) -> str:
        """What the LLM has said so far."""
        return "".join(self._parts).strip()

    def start(self) -> None:
        """Start generating and speaking (idempotent)."""
        if not self._tasks:
            self.times.started = self._clock()
            self._tasks = [
                asyncio.create_task(self._generate(), name="reply-llm"),
                asyncio.create_task(self._speak(), name="reply-tts"),
            ]

    async def chunks(self) -> AsyncIterator[SpokenChunk]:
        """The reply's audio in order, as it becomes ready.

        Raises:
            VoxlineError: a stage failed (or refused its input); nothing follows it.
        """
        self.start()
        while (item := await self._out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def aclose(self) -> None:
        """Stop generating and speaking; returns once both tasks have ended."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _generate(self) -> None:
        chunker = PhraseChunker(self.policy)
        try:
            deltas = self.llm.stream(self.messages, self.params)
            async with contextlib.aclosing(deltas):
                async for delta in deltas:
                    if delta.usage is not None:
                        self.usage = delta.usage
                    if delta.finish_reason is not None:
                        self.finish_reason = delta.finish_reason
                    if not delta.text:
                        continue
                    self.times.first_token = self.times.first_token or self._clock()
                    self._parts.append(delta.text)
                    for phrase in chunker.feed(delta.text):
                        self._hand_over(phrase)
            self.times.llm_done = self._clock()
            for phrase in chunker.flush():
                self._hand_over(phrase)
            self._phrase_queue.put_nowait(None)
        except Exception as exc:  # delivered in order to the consumer, who reports it
            self._fail(exc)

    def _hand_over(self, phrase: str) -> None:
        self.times.first_phrase = self.times.first_phrase or self._clock()
        self.phrases.append(phrase)
        self._phrase_queue.put_nowait(phrase)

    async def _speak(self) -> None:
        resampler: _Resampler | None = None
        index = -1
        phrase = ""
        try:
            while (next_phrase := await self._phrase_queue.get()) is not None:
                index, phrase = index + 1, next_phrase
                self.times.first_handed = self.times.first_handed or self._clock()
                audio = self.tts.synthesize(
                    phrase, self.voice, speed=self.speed, language=self.language
                )
                async with contextlib.aclosing(audio):
                    async for chunk in audio:
                        self.times.first_audio = self.times.first_audio or self._clock()
                        if resampler is None or resampler.in_rate != chunk.sample_rate:
                            if resampler is not None:
                                self._emit(index, phrase, resampler.flush())
                            resampler = _Resampler(chunk.sample_rate, self.output_rate)
                        self._emit(index, phrase, resampler.push(chunk.samples))
            if resampler is not None:
                self._emit(index, phrase, resampler.flush())
            self.times.tts_done = self._clock()
            self._out.put_nowait(None)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        """Report ``exc`` to the consumer and stop the other stage now."""
        self._out.put_nowait(exc)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    def _emit(self, index: int, phrase: str, audio: AudioChunk) -> None:
        if len(audio.samples):
            self._out.put_nowait(SpokenChunk(index, phrase, audio))


class _Resampler:
    """Streaming resampler from the TTS rate to the output rate (a pass-through if equal)."""

    def __init__(self, in_rate: int, out_rate: int | None) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate or in_rate
        self._stream = (
            None
            if self.out_rate == in_rate
            else soxr.ResampleStream(in_rate, self.out_rate, 1, dtype="float32", quality="HQ")
        )

    def push(self, samples: np.ndarray) -> AudioChunk:
        if self._stream is None:
            return AudioChunk(samples.astype(np.float32, copy=False), self.out_rate)
        out = self._stream.resample_chunk(samples.astype(np.float32, copy=False))
        return AudioChunk(np.ascontiguousarray(out, dtype=np.float32), self.out_rate)

    def flush(self) -> AudioChunk:
        if self._stream is None:
            return AudioChunk(np.zeros(0, np.float32), self.out_rate)
        out = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
        return AudioChunk(np.ascontiguousarray(out, dtype=np.float32), self.out_rate)
