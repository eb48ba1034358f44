"""Fallback chains: one STT, LLM or TTS made of an ordered list of backends (GPU, CPU, hosted).

A GPU runs out of memory, a worker hangs, a hosted peer times out: the user must still get the
answer. A chain *is* a stage (``FallbackSTT`` is an ``STT``...), so nothing above it knows it talks
to several engines. Each call tries the backends in order and moves to the next one when:

- the backend raises a retryable ``StageError`` (the stage base class has already translated
  engine exceptions, a CUDA out-of-memory among them, into the error tree). A ``ModelLoadError``
  always moves on and opens that backend's breaker at once (it will not load on a retry); any
  other non-retryable ``StageError``, and every ``InvalidInput``, is the input's fault and is
  raised unchanged, as no other backend would do better;
- a deadline passes: ``first_output_timeout_s`` for the backend's first item,
  ``gap_timeout_s`` between two items. Each ``__anext__`` runs under ``asyncio.timeout``, so a hung
  engine costs one deadline, never the turn;
- the output is unusable: an STT stream that ends without a final transcript, an LLM reply with
  no text, TTS audio that is NaN/infinite or silent (exact zeros) for the whole phrase. An empty
  *final transcript* is usable: it is what a healthy engine says about silence or noise, and
  treating it as a failure would send every quiet clip through every backend and open the
  breakers of healthy engines. On the last backend, silent audio and an empty reply are passed
  on as they are (the call did not fail, it said nothing); non-finite audio is never passed on.

What the consumer already received is never repeated. Before the first output a switch is
invisible. After it: STT transcribes the whole clip again on the next backend, and yields only
partials that extend the last one sent (the final is always yielded); the LLM continues from the
text already sent (that text as an assistant message plus :data:`CONTINUE_PROMPT`; small models
measured here restart the reply from the beginning, so the new stream is held back while it
repeats what was sent and spliced at the first new text: :mod:`pipeline.splice`); TTS speaks
the phrase again on the next backend and drops as many seconds of its audio as were already sent
(aligned by time, not by word). A chain's audio is always at the sample rate of its first backend
that started: other backends' audio is resampled as it streams.

Which backend served, and every switch with its reason, is a :class:`FallbackReport` per call.
Calls run concurrently, so the report is not state on the chain: wrap a unit of work (a turn, a
response, a request) in ``with collect_reports() as reports:`` and every chain call made inside
it, including in tasks created inside it, appends its report to ``reports`` (a context variable,
copied into child tasks). ``report_listeners`` on a chain hear every report too (logs, metrics).

Per-backend health (:mod:`pipeline.breaker`): N consecutive failures open a backend's breaker and
calls skip it; a background probe (the backend's ``probe()`` when it has one, as the hosted
adapters do, else ``warm()``) runs every ``probe_interval_s`` and closes it when it passes, so
traffic returns to the primary without a restart; after ``trial_interval_s`` one real call may
also try it (half-open), in case the probe itself is what fails. When every breaker is open, the
backends are tried in order anyway. ``backend_states()`` is what ``/readyz`` shows.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence

import numpy as np

from pipeline.breaker import BackendState, BreakerState
from pipeline.errors import StageError
from pipeline.fallback_core import Chain, StageCall, Unusable
from pipeline.fallback_types import (
    Fallback,
    FallbackPolicy,
    FallbackReason,
    FallbackReport,
    FallbackReports,
    collect_reports,
)
from pipeline.priority import Priority
from pipeline.scheduler import holding
from pipeline.splice import AudioSplice, Continuation
from pipeline.stages import LLM, STT, TTS, _Stage
from pipeline.types import (
    AudioChunk,
    GenerationParams,
    LLMCapabilities,
    Message,
    STTCapabilities,
    TextDelta,
    Transcript,
    TTSCapabilities,
)

log = logging.getLogger("voxline.fallback")

__all__ = [
    "CONTINUE_PROMPT",
    "BackendState",
    "BreakerState",
    "Fallback",
    "FallbackLLM",
    "FallbackPolicy",
    "FallbackReason",
    "FallbackReport",
    "FallbackReports",
    "FallbackSTT",
    "FallbackTTS",
    "collect_reports",
]

CONTINUE_PROMPT = "Continue your previous answer exactly where it stopped, without repeating it."
"""Sent after the partial reply when an LLM backend takes over mid-stream. With the partial reply
alone as the last (assistant) message, SmolLM2-135M restarted and stopped *before* reaching the
cut; with this instruction it restarted and went on past it, which the splice turns into a clean
continuation."""


def _chain_name(backends: Sequence[_Stage]) -> str:
    return ">".join(b.name for b in backends)


class _STTCall(StageCall[STT, Transcript]):
    """A transcription: every backend hears the whole clip; shown partials never go backwards."""

    def __init__(
        self, audio: AudioChunk, language: str | None, prompt: str | None, *, realtime: bool
    ) -> None:
        self.audio, self.language, self.prompt = audio, language, prompt
        self.realtime = realtime
        self._last_partial: str | None = None
        self._switched = False

    def begin(self, backend: STT) -> AsyncGenerator[Transcript, None]:
        self._switched = self.produced  # partials were sent: the new ones must extend them
        return backend.transcribe(
            self.audio, language=self.language, prompt=self.prompt, realtime=self.realtime
        )

    def accept(self, item: Transcript) -> list[Transcript]:
        if item.final:
            self.done = True
            return [item]
        last = self._last_partial
        if (
            self._switched
            and last is not None
            and not (item.text.startswith(last) and len(item.text) > len(last))
        ):
            return []  # the new backend has not caught up with what was shown yet
        self._last_partial = item.text
        return [item]

    def finish(self) -> list[Transcript]:
        if not self.done:
            raise Unusable("the stream ended without a final transcript", salvage=None)
        return []


class _LLMCall(StageCall[LLM, TextDelta]):
    """A reply: after output, the next backend is asked to continue and spliced in."""

    def __init__(self, messages: list[Message], params: GenerationParams) -> None:
        self.messages, self.params = messages, params
        self.sent = ""
        self.called = False  # a function call was passed on
        self._splice: Continuation | None = None
        self._final: TextDelta | None = None  # the last delta of a reply with no text (yet)

    def begin(self, backend: LLM) -> AsyncGenerator[TextDelta, None]:
        self._final = None
        if self.called:
            # Another backend would start the call over under another id, after the client
            # had part of this one: the call fails rather than being sent twice.
            raise StageError(
                "a function call cannot be continued on another backend",
                stage="llm",
                backend=backend.name,
                retryable=False,
            )
        if not self.sent.strip():
            self._splice = None
            return backend.stream(self.messages, self.params)
        self._splice = Continuation(self.sent)
        messages = [
            *self.messages,
            Message("assistant", self.sent),
            Message("user", CONTINUE_PROMPT),
        ]
        params = self.params
        if params.max_tokens is not None:
            # Room for saying the sent text again before going on (about 3+ characters a token).
            extra = math.ceil(len(self.sent) / 3)
            params = dataclasses.replace(params, max_tokens=params.max_tokens + extra)
        return backend.stream(messages, params)

    def accept(self, item: TextDelta) -> list[TextDelta]:
        if item.tool_call is not None:
            self.called = True
            return [item]
        text = item.text if self._splice is None else self._splice.feed(item.text)
        self.sent += text
        if item.finish_reason is None and item.usage is None:
            return [TextDelta(text)] if text else []
        self.done = item.finish_reason is not None
        out = TextDelta(text, item.usage, item.finish_reason, tool_calls=item.tool_calls)
        if not self.sent.strip() and not self.called:
            self._final = out  # held: an empty reply may still go to the next backend
            return []
        return [out]

    def finish(self) -> list[TextDelta]:
        if not self.sent.strip() and not self.called:
            salvage: list[object] = [self._final] if self._final is not None else []
            raise Unusable("the reply has no text", salvage=salvage)
        return []


class _TTSCall(StageCall[TTS, AudioChunk]):
    """A phrase: the next backend speaks it again, and the audio already sent is skipped."""

    def __init__(
        self, text: str, voice: str | None, speed: float, language: str | None, sample_rate: int
    ) -> None:
        self.text, self.voice, self.speed, self.language = text, voice, speed, language
        self.splice = AudioSplice(sample_rate)

    def begin(self, backend: TTS) -> AsyncGenerator[AudioChunk, None]:
        self.splice.restart()
        caps = backend.capabilities
        known = caps.voices
        # A backend that lacks the voice (or the language) speaks in its own default: an answer
        # in another voice beats no answer.
        voice = self.voice if self.voice is None or not known or self.voice in known else None
        language = self.language if self.language in caps.languages else None
        return backend.synthesize(self.text, voice, speed=self.speed, language=language)

    def accept(self, item: AudioChunk) -> list[AudioChunk]:
        if not np.isfinite(item.samples).all():
            raise Unusable("the audio has NaN or infinite samples", salvage=None)
        out = self.splice.push(item)
        return [] if out is None else [out]

    def finish(self) -> list[AudioChunk]:
        out = self.splice.flush()
        if not self.splice.heard:
            held = self.splice.held()
            raise Unusable("the audio is silent", salvage=[] if held is None else [held])
        return [] if out is None else [out]


class FallbackSTT(Chain[STT], STT):
    """An STT made of ``backends``, tried in order (see the module docstring).

    Args:
        backends: The backends in order of preference (unique names; the first one's sample
            rate is the chain's).
        policy: Deadlines, breaker and probe settings (default: ``FallbackPolicy()``).
        name: The chain's name (default: the backend names joined by ``>``).
    """

    def __init__(
        self,
        backends: Sequence[STT],
        policy: FallbackPolicy | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self._setup(backends, policy)
        STT.__init__(self, name=name or _chain_name(backends), device=backends[0].device)
        self.sample_rate = backends[0].sample_rate
        self._refresh_capabilities()

    def _refresh_capabilities(self) -> None:
        caps = [b.capabilities for b in self.backends]
        languages = () if any(not c.languages for c in caps) else _union(c.languages for c in caps)
        self.capabilities = STTCapabilities(any(c.partials for c in caps), languages)

    def _transcribe(
        self, audio: AudioChunk, *, language: str | None, prompt: str | None
    ) -> AsyncIterator[Transcript]:
        return self._call(audio, language, prompt, realtime=False)

    def _transcribe_realtime(
        self, audio: AudioChunk, *, language: str | None, prompt: str | None
    ) -> AsyncIterator[Transcript]:
        return self._call(audio, language, prompt, realtime=True)

    def _call(
        self, audio: AudioChunk, language: str | None, prompt: str | None, *, realtime: bool
    ) -> AsyncIterator[Transcript]:
        extra = self.policy.first_output_timeout_per_audio_s * audio.duration
        return self._drive(_STTCall(audio, language, prompt, realtime=realtime), extra_s=extra)


class FallbackLLM(Chain[LLM], LLM):
    """An LLM made of ``backends``, tried in order (see the module docstring).

    Its ``capabilities.context_tokens`` is the smallest of its backends', so trimmed history fits
    whichever backend serves. The last delta's usage is the serving backend's own.

    Args:
        backends: The backends in order of preference (unique names).
        policy: Deadlines, breaker and probe settings (default: ``FallbackPolicy()``).
        name: The chain's name (default: the backend names joined by ``>``).
    """

    def __init__(
        self,
        backends: Sequence[LLM],
        policy: FallbackPolicy | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self._setup(backends, policy)
        LLM.__init__(self, name=name or _chain_name(backends), device=backends[0].device)
        self._refresh_capabilities()

    def _refresh_capabilities(self) -> None:
        caps = [b.capabilities for b in self.backends]
        self.capabilities = LLMCapabilities(
            streaming=all(c.streaming for c in caps),
            context_tokens=min(c.context_tokens for c in caps),
            tools=any(c.tools for c in caps),
        )

    def _stream(
        self, messages: list[Message], params: GenerationParams
    ) -> AsyncIterator[TextDelta]:
        return self._drive(_LLMCall(messages, params))

    async def prefill(
        self, messages: Sequence[Message], params: GenerationParams | None = None
    ) -> bool:
        """Prefill on the backend the next call would go to first (a healthy, started one),
        and only while its engine has a slot free: a prefill is spare-capacity work (batch
        priority) and never waits for, or delays, a reply in progress."""
        healthy = [
            e
            for e in self._order([])
            if not e.start_failed and e.breaker.state is BreakerState.CLOSED
        ]
        if not healthy:
            return False
        backend = healthy[0].backend
        scheduler = backend.scheduler
        if scheduler is not None and scheduler.in_use >= scheduler.capacity:
            return False
        try:
            slot = await scheduler.acquire(Priority.BATCH) if scheduler is not None else None
            try:
                with holding(slot):
                    return await backend.prefill(messages, params)
            finally:
                if slot is not None:
                    slot.release()
        except Exception as exc:  # best effort: the next call reads the prompt itself
            log.debug("%s: prefill skipped: %s", backend.name, exc)
            return False


class FallbackTTS(Chain[TTS], TTS):
    """A TTS made of ``backends``, tried in order (see the module docstring).

    Its audio is at the sample rate of its first backend that started, whichever backend speaks.
    Its voices are all its backends' (any name when one backend takes any); a backend that lacks
    the requested voice (or language) speaks in its default voice (or its voice's language). Its
    input limit is the smallest of its backends'.

    Args:
        backends: The backends in order of preference (unique names).
        policy: Deadlines, breaker and probe settings (default: ``FallbackPolicy()``).
        name: The chain's name (default: the backend names joined by ``>``).
    """

    def __init__(
        self,
        backends: Sequence[TTS],
        policy: FallbackPolicy | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self._setup(backends, policy)
        TTS.__init__(self, name=name or _chain_name(backends), device=backends[0].device)
        self._refresh_capabilities()

    def _refresh_capabilities(self) -> None:
        caps = [b.capabilities for b in self.backends]
        voices = () if any(not c.voices for c in caps) else _union(c.voices for c in caps)
        self.capabilities = TTSCapabilities(
            # the first backend that can serve: a GPU engine that did not start must not set
            # the rate every other backend's audio is resampled to
            sample_rate=self.serving_backends()[0].capabilities.sample_rate,
            streaming=all(c.streaming for c in caps),
            voices=voices,
            max_input_chars=min(c.max_input_chars for c in caps),
            languages=_union(c.languages for c in caps),
        )

    def _synthesize(
        self, text: str, voice: str | None, speed: float, language: str | None = None
    ) -> AsyncIterator[AudioChunk]:
        rate = self.capabilities.sample_rate
        return self._drive(_TTSCall(text, voice, speed, language, rate))


def _union(groups: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item for group in groups for item in group))
