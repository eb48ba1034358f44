"""The three stage contracts: STT, LLM and TTS, each an abstract class.

The public method (``transcribe``, ``stream``, ``synthesize``) owns the cross-cutting work:
validating input before any expensive work, timing, cancellation and translating unexpected engine
exceptions into the error tree. An engine implements only the ``_impl`` method with the engine
work. A fallback chain is itself one of these classes, so the pipeline never knows whether it
talks to one engine or to several.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline import metering, tool_calls
from pipeline.errors import (
    EngineOverloaded,
    EngineUnavailable,
    InvalidInput,
    Stage,
    StageError,
    VoxlineError,
)
from pipeline.scheduler import EngineScheduler
from pipeline.types import (
    AudioChunk,
    GenerationParams,
    LLMCapabilities,
    Message,
    STTCapabilities,
    TextDelta,
    Transcript,
    TTSCapabilities,
    Usage,
)

log = logging.getLogger("voxline.stage")


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What one stage call did, handed to every listener (and to the meter of the call's
    context, see :mod:`pipeline.metering`) when the call ends.

    The usage fields are the work the engine actually did, counted here from what went in and
    came out, so every route and the realtime session are billed from the same numbers.
    """

    stage: Stage
    backend: str
    first_output_ms: float | None
    total_ms: float
    outputs: int
    error: str | None = None  # the error's type name, never its message (may hold user text)
    audio_in_seconds: float = 0.0
    """STT: seconds of audio transcribed."""
    tokens_in: int = 0
    """LLM: prompt tokens (the engine's own count, from the stream's last delta)."""
    tokens_out: int = 0
    """LLM: completion tokens."""
    chars: int = 0
    """TTS: characters of text spoken."""
    audio_out_seconds: float = 0.0
    """TTS: seconds of audio produced."""

    @property
    def compute_seconds(self) -> float:
        """Wall time the engine spent on the call."""
        return self.total_ms / 1000


Listener = Callable[[CallRecord], None]


def _is_out_of_memory(exc: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError and CTranslate2/onnxruntime's RuntimeErrors on OOM share no
    # base class we can import here without importing the engine; their type names are stable.
    return type(exc).__name__ in {"OutOfMemoryError", "MemoryError"}


class _Stage(abc.ABC):
    """What every stage object exposes: ``name``, ``device``, ``aclose()`` and call listeners.

    Attributes:
        clock: Monotonic seconds that time each call's ``CallRecord`` (tests put it on the event
            loop's virtual clock).
        scheduler: The engine's slots and wait queue (``pipeline.scheduler``), taken by the
            fallback chain before each call; ``None``: calls are not admitted (the registry
            gives every engine one, from its capacity setting).
    """

    stage: Stage
    metered = True
    """Whether this object's calls are the engine work that is billed. A fallback chain says no:
    each of its backends reports its own calls, and the chain's would count them twice."""

    def __init__(self, *, name: str, device: str = "cpu") -> None:
        self.name = name
        self.device = device
        self.listeners: list[Listener] = []
        self.clock: Callable[[], float] = time.perf_counter
        self.scheduler: EngineScheduler | None = None

    def load(self) -> None:  # noqa: B027  # optional hook: engines without weights load nothing
        """Blocking: load weights. Construction stays cheap; ``start()`` calls this off the loop."""

    async def start(self) -> None:
        """Make the backend ready to serve (load weights, spawn workers, connect)."""
        await asyncio.to_thread(self.load)

    def warmup(self) -> None:  # noqa: B027  # optional hook
        """Blocking: run one tiny request so the first real one does not pay one-off costs."""

    async def warm(self) -> None:
        """Warm the backend up; ``warmup()`` off the loop unless an engine overrides this."""
        await asyncio.to_thread(self.warmup)

    async def aclose(self) -> None:  # noqa: B027  # optional hook: most engines hold nothing async
        """Release the engine's resources (threads, processes, connections)."""

    def _translate(self, exc: Exception) -> StageError:
        """Map an engine exception to the error tree. Engines override to be more specific."""
        if _is_out_of_memory(exc):
            return EngineOverloaded(f"out of memory: {exc}", stage=self.stage, backend=self.name)
        return StageError(
            f"{type(exc).__name__}: {exc}", stage=self.stage, backend=self.name, retryable=True
        )

    async def _timed(
        self,
        source: AsyncIterator[object],
        *,
        audio_in_seconds: float = 0.0,
        chars: int = 0,
        prompt_tokens: Callable[[], int | None] | None = None,
    ) -> AsyncGenerator[object, None]:
        clock = self.clock
        start = clock()
        first: float | None = None
        outputs = 0
        error: str | None = None
        usage: Usage | None = None
        text_deltas = 0
        audio_out = 0.0
        try:
            async for item in source:
                if isinstance(item, AudioChunk):
                    if len(item.samples) == 0:
                        continue  # nothing to hear: not an output, and not the first byte either
                    audio_out += item.duration
                elif isinstance(item, TextDelta):
                    usage = item.usage or usage
                    text_deltas += 1 if item.text else 0
                if first is None:
                    first = (clock() - start) * 1000
                outputs += 1
                yield item
        except VoxlineError as exc:
            error = type(exc).__name__
            raise
        except Exception as exc:
            translated = self._translate(exc)
            error = type(translated).__name__
            raise translated from exc
        finally:
            if hasattr(source, "aclose"):
                await source.aclose()
            if usage is None and prompt_tokens is not None:
                # cut short (cancelled, closed, failed) before the engine's final count: the
                # prompt as the engine tokenizes it was read, and each delta is a token
                usage = Usage(_quietly(prompt_tokens), text_deltas)
            record = CallRecord(
                stage=self.stage,
                backend=self.name,
                first_output_ms=first,
                total_ms=(clock() - start) * 1000,
                outputs=outputs,
                error=error,
                audio_in_seconds=audio_in_seconds,
                tokens_in=usage.prompt_tokens if usage is not None else 0,
                tokens_out=usage.completion_tokens if usage is not None else 0,
                chars=chars,
                audio_out_seconds=audio_out,
            )
            for listener in self.listeners:
                listener(record)
            if self.metered:
                metering.observe(record)


class STT(_Stage):
    """Speech to text. ``transcribe`` yields partial transcripts, then exactly one final one."""

    stage: Stage = "stt"
    sample_rate: int = 16_000
    capabilities: STTCapabilities = STTCapabilities()

    async def transcribe(
        self,
        audio: AudioChunk,
        *,
        language: str | None = None,
        prompt: str | None = None,
        realtime: bool = False,
    ) -> AsyncGenerator[Transcript, None]:
        """Transcribe ``audio`` (mono float32; resampled here to the engine's rate if needed).

        Args:
            audio: The speech.
            language: ISO 639-1 code, or ``None`` for the engine's default.
            prompt: Text that came before (names, spelling), if any.
            realtime: A live conversation waits for this (partial, speculative or final
                transcript of a session): the engine decodes with a bounded, deterministic
                budget (``_transcribe_realtime``) rather than its best-quality search.

        Raises:
            InvalidInput: empty or non-finite audio.
            StageError: the engine failed.
        """
        from pipeline.audio import resample  # local: keeps numpy-only import cheap for types

        if audio.samples.ndim != 1 or len(audio.samples) == 0:
            raise InvalidInput("audio is empty", param="file", code="empty_audio")
        if not np.isfinite(audio.samples).all():
            raise InvalidInput("audio contains NaN or infinite samples", param="file")
        if audio.sample_rate != self.sample_rate:
            audio = resample(audio, self.sample_rate)
        work = self._transcribe_realtime if realtime else self._transcribe
        timed = self._timed(
            work(audio, language=language, prompt=prompt), audio_in_seconds=audio.duration
        )
        # closed here, not by the garbage collector: a consumer that stops stops the engine now
        async with contextlib.aclosing(timed):
            async for item in timed:
                assert isinstance(item, Transcript)
                yield item

    @abc.abstractmethod
    def _transcribe(
        self, audio: AudioChunk, *, language: str | None, prompt: str | None
    ) -> AsyncIterator[Transcript]:
        """Engine work: audio is mono float32 at ``self.sample_rate``."""

    def _transcribe_realtime(
        self, audio: AudioChunk, *, language: str | None, prompt: str | None
    ) -> AsyncIterator[Transcript]:
        """Engine work for ``realtime=True``; engines with a cheaper bounded decode override it."""
        return self._transcribe(audio, language=language, prompt=prompt)


class LLM(_Stage):
    """A chat model. ``stream`` yields text deltas; the last one carries usage."""

    stage: Stage = "llm"
    capabilities: LLMCapabilities = LLMCapabilities()

    async def stream(
        self, messages: Sequence[Message], params: GenerationParams | None = None
    ) -> AsyncGenerator[TextDelta, None]:
        """Stream the assistant's reply to ``messages``.

        Raises:
            InvalidInput: no messages, an unknown role, or nonsensical sampling options.
            StageError: the engine failed.
        """
        params = params or GenerationParams()
        validate_chat(messages, params)
        if not tool_calls.offered(params):
            source = self._stream(list(messages), params)
        elif not self.capabilities.tools:
            source = self._without_tools(list(messages), params)
        else:  # the calls are checked (and repaired once) here, for every engine alike
            source = tool_calls.checked_calls(
                self._stream, list(messages), params, backend=self.name
            )
        timed = self._timed(source, prompt_tokens=lambda: self._prompt_tokens(messages))
        async with contextlib.aclosing(timed):  # closed now when the consumer stops (see STT)
            async for item in timed:
                assert isinstance(item, TextDelta)
                yield item

    def _without_tools(
        self, messages: list[Message], params: GenerationParams
    ) -> AsyncIterator[TextDelta]:
        """A backend that cannot call functions: with ``tool_choice`` ``auto`` it answers in
        text (the functions were an offer); a call it must make is a retryable failure, so a
        fallback chain moves on to a backend that can."""
        if tool_calls.must_call(params):
            raise EngineUnavailable(
                f"backend {self.name} cannot call functions", stage="llm", backend=self.name
            )
        log.debug("%s cannot call functions: answering in text", self.name)
        return self._stream(messages, dataclasses.replace(params, tools=(), tool_choice="auto"))

    async def prefill(
        self, messages: Sequence[Message], params: GenerationParams | None = None
    ) -> bool:
        """Read ``messages`` into the engine's prompt cache, ahead of the call that will start
        with them (a realtime session's next turn: the conversation so far, then the new user
        message), so that call reads only what follows. Best effort, never an error.

        Returns:
            Whether the prompt was read: ``False`` for an engine without a prompt cache (the
            default), or one busy with a reply.
        """
        return False

    def _prompt_tokens(self, messages: Sequence[Message]) -> int | None:
        """The prompt's length for billing a call cut short, or ``None`` while the engine's
        model is not in memory: counting runs on the event loop and must not load a model
        there (a backend tried while its probe reloads it)."""
        if not getattr(self, "loaded", True):
            return None
        return self.count_tokens(messages)

    def count_tokens(self, messages: Sequence[Message]) -> int | None:
        """The prompt length of ``messages`` as this engine tokenizes them (``None``: unknown).

        Used to bill a call cut short before its final usage; engines with a tokenizer say.
        """
        return None

    @abc.abstractmethod
    def _stream(
        self, messages: list[Message], params: GenerationParams
    ) -> AsyncIterator[TextDelta]:
        """Engine work: messages and params are already validated."""


def _quietly(count: Callable[[], int | None]) -> int:
    """``count()``, or 0 when it cannot say: accounting must never fail a call."""
    try:
        return count() or 0
    except Exception:
        log.debug("prompt token count failed", exc_info=True)
        return 0


def _preview(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def validate_chat(messages: Sequence[Message], params: GenerationParams) -> None:
    """Reject what no engine should see (shared by every LLM and by the HTTP routes)."""
    if not messages:
        raise InvalidInput("messages must not be empty", param="messages")
    calls: set[str] = set()
    for i, message in enumerate(messages):
        if message.role not in ("system", "user", "assistant", "tool"):
            raise InvalidInput(f"unknown role {message.role!r}", param=f"messages[{i}].role")
        calls.update(call.call_id for call in message.tool_calls)
        if message.role == "tool" and message.tool_call_id not in calls:
            raise InvalidInput(
                "a message with role 'tool' must answer a tool call of an earlier assistant "
                "message (tool_call_id)",
                param=f"messages[{i}].tool_call_id",
            )
    if params.max_tokens is not None and params.max_tokens < 1:
        raise InvalidInput("max_tokens must be at least 1", param="max_tokens")
    if params.temperature is not None and not 0.0 <= params.temperature <= 2.0:
        raise InvalidInput("temperature must be between 0 and 2", param="temperature")
    if params.top_p is not None and not 0.0 < params.top_p <= 1.0:
        raise InvalidInput("top_p must be in (0, 1]", param="top_p")


class TTS(_Stage):
    """Text to speech. ``synthesize`` yields audio chunks in order, as soon as each is ready."""

    stage: Stage = "tts"
    capabilities: TTSCapabilities

    async def synthesize(
        self,
        text: str,
        voice: str | None = None,
        *,
        speed: float = 1.0,
        language: str | None = None,
    ) -> AsyncGenerator[AudioChunk, None]:
        """Speak ``text`` with ``voice`` (``None``: the backend's default voice).

        ``language`` is the text's language for a backend that declares
        ``capabilities.languages`` (GPT-SoVITS: ``yue``, ``auto``...); a backend that declares
        none speaks its voice's own language and ignores it.

        Raises:
            InvalidInput: empty or too long text, an unknown voice or language, a speed out of
                range.
            StageError: the engine failed.
        """
        if not text.strip():
            raise InvalidInput("input text is empty", param="input")
        limit = self.capabilities.max_input_chars
        if len(text) > limit:
            raise InvalidInput(
                f"input is {len(text)} characters; the limit is {limit}", param="input"
            )
        voices = self.capabilities.voices
        if voice is not None and voices and voice not in voices:
            raise InvalidInput(
                f"unknown voice {voice!r}; available: {_preview(voices)}", param="voice"
            )
        if not (0.25 <= speed <= 4.0) or math.isnan(speed):
            raise InvalidInput("speed must be between 0.25 and 4.0", param="speed")
        languages = self.capabilities.languages
        if language is not None and languages:
            if language not in languages:
                raise InvalidInput(
                    f"unsupported language {language!r}; available: {_preview(languages)}",
                    param="language",
                )
            source = self._synthesize(text, voice, speed, language=language)
        else:  # engines without languages keep the three-argument form
            source = self._synthesize(text, voice, speed)
        timed = self._timed(source, chars=len(text))
        async with contextlib.aclosing(timed):  # closed now when the consumer stops (see STT)
            async for item in timed:
                assert isinstance(item, AudioChunk)
                yield item  # never empty: _timed drops empty chunks

    @abc.abstractmethod
    def _synthesize(
        self, text: str, voice: str | None, speed: float, language: str | None = None
    ) -> AsyncIterator[AudioChunk]:
        """Engine work: the input is validated; yield mono float32 chunks. ``language`` is
        passed only to engines that declare ``capabilities.languages``."""
