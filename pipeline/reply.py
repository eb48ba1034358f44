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

A reply may call functions (``GenerationParams.tools``): the calls' pieces
(``ToolCallDelta``) go through the phrase queue, so they reach the consumer after the audio of
the text said before them, and ``items()`` yields them between the spoken chunks;
``tool_calls`` holds the complete, validated calls once the LLM is done. ``chunks()`` is the
audio alone, for consumers that offer no tools.
Two variations serve the knowledge base (``pipeline.knowledge``): a reply with a fixed
``text`` speaks it without calling the LLM (an "I don't know" that needs no model), and a reply
with a ``vet`` holds the LLM's whole answer until ``vet`` has decided what to speak (the answer,
or a safe reply when it is not supported by its sources).

Audio leaves at ``output_rate`` through one streaming resampler for the whole reply: resampling
each chunk on its own would put a click at every chunk boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np
import soxr

from pipeline.phrases import PhraseChunker, PhrasePolicy
from pipeline.router import Route
from pipeline.stages import LLM, TTS
from pipeline.timing import ReplyTimes
from pipeline.types import AudioChunk, GenerationParams, Message, ToolCall, ToolCallDelta, Usage

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
        route: The LLM tier ``llm`` is and why it was picked (``pipeline.router``), reported
            with the reply's result.
        text: Speak this instead of asking the LLM (no LLM call, no usage).
        vet: Called with the LLM's whole reply before any of it is spoken; returns what to
            speak instead (the same text, or a replacement).
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
        route: Route | None = None,
        text: str | None = None,
        vet: Callable[[str], Awaitable[str]] | None = None,
    ) -> None:
        self.llm = llm
        self.route = route
        self.tts = tts
        self.messages = list(messages)
        self.params = params
        self.voice = voice
        self.speed = speed
        self.language = language
        self.policy = policy or PhrasePolicy()
        self.output_rate = output_rate
        self._clock = clock
        self._fixed = text
        self._vet = vet
        self.times = ReplyTimes(started=clock())
        self.usage = Usage()
        self.finish_reason: str | None = None
        self.phrases: list[str] = []
        self.tool_calls: tuple[ToolCall, ...] = ()
        """The functions the LLM called, complete and validated (set when it is done)."""
        self._parts: list[str] = []
        self._phrase_queue: asyncio.Queue[str | ToolCallDelta | None] = asyncio.Queue()
        self._out: asyncio.Queue[SpokenChunk | ToolCallDelta | BaseException | None] = (
            asyncio.Queue()
        )
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
        """The reply's audio in order, as it becomes ready (function calls left out).

        Raises:
            VoxlineError: a stage failed (or refused its input); nothing follows it.
        """
        async for item in self.items():
            if isinstance(item, SpokenChunk):
                yield item

    async def items(self) -> AsyncIterator[SpokenChunk | ToolCallDelta]:
        """The reply's audio and the pieces of its function calls, in the order said.

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
        held = self._vet is not None
        try:
            if self._fixed is not None:
                self._say_fixed(chunker, self._fixed)
                return
            deltas = self.llm.stream(self.messages, self.params)
            async with contextlib.aclosing(deltas):
                async for delta in deltas:
                    if delta.usage is not None:
                        self.usage = delta.usage
                    if delta.finish_reason is not None:
                        self.finish_reason = delta.finish_reason
                        self.tool_calls = delta.tool_calls
                    if delta.tool_call is not None:
                        # what was said before the call is spoken before it goes out
                        for phrase in chunker.flush():
                            self._hand_over(phrase)
                        self._phrase_queue.put_nowait(delta.tool_call)
                        continue
                    if not delta.text:
                        continue
                    self.times.first_token = self.times.first_token or self._clock()
                    self._parts.append(delta.text)
                    if not held:
                        for phrase in chunker.feed(delta.text):
                            self._hand_over(phrase)
            self.times.llm_done = self._clock()
            if held and self._vet is not None:
                said = await self._vet(self.text)
                if said != self.text:
                    self._parts = [said]
                for phrase in chunker.feed(self.text):
                    self._hand_over(phrase)
            for phrase in chunker.flush():
                self._hand_over(phrase)
            self._phrase_queue.put_nowait(None)
        except Exception as exc:  # delivered in order to the consumer, who reports it
            self._fail(exc)

    def _say_fixed(self, chunker: PhraseChunker, text: str) -> None:
        # no LLM ran: its "first token" and "done" are now, so the latency vocabulary still
        # holds (the LLM's share of the turn is zero)
        now = self._clock()
        self.times.first_token = self.times.llm_done = now
        self._parts = [text]
        for phrase in [*chunker.feed(text), *chunker.flush()]:
            self._hand_over(phrase)
        self._phrase_queue.put_nowait(None)

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
                if isinstance(next_phrase, ToolCallDelta):
                    self._out.put_nowait(next_phrase)
                    continue
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
