"""Scripted STT, LLM and TTS stages for the session tests (to be merged into tests/fakes.py).

Each is a real subclass of the stage contract, so validation, timing and error translation run
as in production; only the engine work is scripted: fixed delays, fixed outputs, failures on
demand. Each records its calls and whether a call's iterator was closed before it finished (what
a cancelled response must do to its stages).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import EngineUnavailable
from pipeline.stages import LLM, STT, TTS
from pipeline.types import (
    AudioChunk,
    GenerationParams,
    Message,
    TextDelta,
    Transcript,
    TTSCapabilities,
    Usage,
)


@dataclass
class Call:
    """One call to a fake stage."""

    input: object
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None  # ran to the end
    closed_early: bool = False  # its iterator was closed (or cancelled) before the end
    outputs: int = 0  # text deltas (LLM) or audio chunks (TTS) yielded


class FakeSTT(STT):
    """Transcribes ``words`` at ``words_per_second`` of audio, so longer snapshots say more.

    Args:
        words: The whole utterance's words.
        words_per_second: How fast they are "spoken" (counted from the start of the audio).
        delay: Seconds each transcription takes.
        fail: Raise this from every call (``None``: succeed).
    """

    def __init__(
        self,
        words: str = "what is the capital of france",
        *,
        words_per_second: float = 100.0,
        delay: float = 0.03,
        fail: Exception | None = None,
    ) -> None:
        super().__init__(name="fake-stt")
        self.words = words.split()
        self.words_per_second = words_per_second
        self.delay = delay
        self.fail = fail
        self.calls: list[Call] = []

    async def _transcribe(
        self, audio: AudioChunk, *, language: str | None, prompt: str | None
    ) -> AsyncIterator[Transcript]:
        call = Call(audio.duration)
        self.calls.append(call)
        try:
            await asyncio.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
            n = min(len(self.words), int(audio.duration * self.words_per_second))
            yield Transcript(" ".join(self.words[:n]), final=True, audio_seconds=audio.duration)
            call.finished = time.perf_counter()
        finally:
            call.closed_early = call.finished is None


class FakeLLM(LLM):
    """Streams ``tokens`` with ``token_delay`` seconds before each.

    Args:
        tokens: The reply, as deltas (or a function of the messages returning them).
        token_delay: Seconds before each delta.
        fail_at: Raise ``error`` instead of the delta at this index (``None``: never).
        error: What to raise.
        fail_times: Fail only the first ``fail_times`` calls (``None``: every call).
    """

    def __init__(
        self,
        tokens: list[str] | Callable[[list[Message]], list[str]] | None = None,
        *,
        token_delay: float = 0.02,
        fail_at: int | None = None,
        error: Exception | None = None,
        fail_times: int | None = None,
    ) -> None:
        super().__init__(name="fake-llm")
        self.tokens = tokens or ["Paris", " is", " the", " capital", " of", " France", "."]
        self.token_delay = token_delay
        self.fail_at = fail_at
        self.error = error or EngineUnavailable("scripted failure", stage="llm", backend=self.name)
        self.fail_times = fail_times
        self.calls: list[Call] = []

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """This fake's prompt length: a token per 4 characters."""
        return sum(len(m.content) for m in messages) // 4

    async def _stream(
        self, messages: list[Message], params: GenerationParams
    ) -> AsyncIterator[TextDelta]:
        call = Call(messages)
        self.calls.append(call)
        failing = self.fail_times is None or len(self.calls) <= self.fail_times
        tokens = self.tokens(messages) if callable(self.tokens) else self.tokens
        try:
            for index, token in enumerate(tokens):
                await asyncio.sleep(self.token_delay)
                if index == self.fail_at and failing:
                    raise self.error
                call.outputs += 1
                yield TextDelta(token)
            usage = Usage(self.count_tokens(messages), completion_tokens=len(tokens))
            call.finished = time.perf_counter()
            yield TextDelta("", usage=usage, finish_reason="stop")
        finally:
            call.closed_early = call.finished is None


class FakeTTS(TTS):
    """Speaks ``ms_per_char`` of a quiet tone per character, in chunks of ``chunk_ms``.

    Args:
        sample_rate: Output rate.
        ms_per_char: Audio per input character (~60 ms is natural speech).
        chunk_ms: Audio per chunk.
        delay: Seconds before each chunk.
        fail_on: Raise ``EngineUnavailable`` when asked to speak text containing this.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 22_050,
        ms_per_char: float = 60.0,
        chunk_ms: float = 200.0,
        delay: float = 0.01,
        fail_on: str | None = None,
    ) -> None:
        super().__init__(name="fake-tts")
        self.capabilities = TTSCapabilities(sample_rate=sample_rate)
        self.ms_per_char = ms_per_char
        self.chunk_ms = chunk_ms
        self.delay = delay
        self.fail_on = fail_on
        self.calls: list[Call] = []

    def samples_for(self, text: str) -> int:
        """Samples this fake produces for ``text``."""
        return int(len(text) * self.ms_per_char * self.capabilities.sample_rate / 1000)

    async def _synthesize(
        self, text: str, voice: str | None, speed: float
    ) -> AsyncIterator[AudioChunk]:
        call = Call(text)
        self.calls.append(call)
        rate = self.capabilities.sample_rate
        total = self.samples_for(text)
        step = int(self.chunk_ms * rate / 1000)
        try:
            for start in range(0, total, step):
                await asyncio.sleep(self.delay)
                if self.fail_on is not None and self.fail_on in text:
                    raise EngineUnavailable("scripted failure", stage="tts", backend=self.name)
                n = min(step, total - start)
                t = (start + np.arange(n)) / rate
                yield AudioChunk((0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)
            call.finished = time.perf_counter()
        finally:
            call.closed_early = call.finished is None
