"""The realtime conversation session: audio in, events out, one conversation at a time.

A ``Session`` is what one OpenAI-Realtime-style connection talks to. The client pushes audio and
operations (``append_audio``, ``commit``, ``create_response``, ``truncate``...), applied one at a
time in order; everything the session has to say comes out of one ordered event stream.

The ``Listener`` hears turns and transcribes them; the ``Responder`` speaks. Latency is won where
they meet, at the end of a turn:

1. At the first silent frame after speech (a pause) the utterance so far is transcribed; if the
   silence lasts long enough to end the turn, that transcript *is* the final one, so STT ran
   during the silence instead of after it. A voiced frame after the pause discards it.
2. If that transcript is ready while the user is still silent, a reply starts on it
   (``speculative_response``), LLM and TTS running ahead, its audio held back. When the turn
   ends the reply is released and its first audio goes out at once; if the user speaks again,
   it is dropped without a trace (no event was sent for it).

The path of one turn through these tasks, and how cancellation flows, is drawn in
docs/architecture.md ("One realtime turn, frame to delta").

So the silence that ends a turn overlaps STT, the LLM's first phrase and TTS's first audio (see
``SessionSettings`` for what that means for ``silence_duration_ms``).

Barge-in: speech starting while a response plays cancels it (its LLM and TTS iterators are
closed, which stops their worker threads), and the assistant item keeps only the text whose audio
had had time to play. Stage errors become ``ErrorEvent`` s and a failed response or
transcription; the session stays usable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from pipeline.errors import InvalidInput, VoxlineError
from pipeline.event_queue import EventQueue
from pipeline.events import (
    ConversationItem,
    ErrorEvent,
    Event,
    InputCleared,
    InputCommitted,
    ItemAdded,
    ItemTruncated,
    ResponseAudioDelta,
    SessionUpdated,
    SpeechStarted,
    TranscriptCompleted,
    TranscriptFailed,
    TranscriptPartial,
    UsageReported,
)
from pipeline.history import History, Item
from pipeline.knowledge import Grounded, Grounder
from pipeline.listener import Heard, Listener, Turn, Utterance, new_id
from pipeline.phrases import PhrasePolicy
from pipeline.priority import Priority, priority
from pipeline.reply import Reply
from pipeline.responder import Responder
from pipeline.router import Router
from pipeline.session_config import SessionConfig, TurnDetection
from pipeline.settings import SessionSettings
from pipeline.stages import LLM, STT, TTS
from pipeline.types import AudioChunk, Backends, Message
from pipeline.vad import VAD

PREFILL_HEADROOM = 8
"""The room a prefill makes for the next user message: 1/8 of the history budget."""

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("voxline.session")

QUEUED_AUDIO_S = 2.0
"""Seconds of reply audio a session queues for its consumer before the response waits (plus the
delta being added, a phrase at most): a consumer that keeps up never waits, one that does not
holds a few hundred kilobytes, not the whole reply."""


def _audio_seconds(event: Event | None) -> float:
    return event.audio.duration if isinstance(event, ResponseAudioDelta) else 0.0


def _operation(
    method: Callable[Concatenate[Session, P], Awaitable[R]],
) -> Callable[Concatenate[Session, P], Coroutine[Any, Any, R | None]]:
    """A client operation: one at a time, in order; a no-op once the session is closed; the
    client's mistakes and stage failures become ``ErrorEvent`` s, never exceptions."""

    async def run(self: Session, /, *args: P.args, **kwargs: P.kwargs) -> R | None:
        async with self._lock:
            if self._closed:
                return None
            try:
                return await method(self, *args, **kwargs)
            except VoxlineError as exc:
                self._emit(ErrorEvent.from_exception(exc))
                return None

    functools.update_wrapper(run, method)
    return run


class Session:
    """One realtime conversation.

    Args:
        stt: Speech to text.
        llm: The language model.
        tts: The voice.
        vad: This session's own VAD (``vad.fork()`` of a shared one): it is stateful.
        config: What the client may change (see ``SessionConfig.from_settings``; default: the
            defaults, with server VAD as ``settings`` configures it).
        settings: Server-side policy (history budget, partials, speculation, limits).
        phrase_policy: Where replies are cut into phrases.
        clock: Monotonic time source of every timing (injectable for tests).
        response_scope: Entered around each response with its id (the tasks of its LLM and
            TTS calls run inside it): the server opens the response's trace there.
        stall_timeout_s: A response whose audio the consumer of ``events()`` takes none of for
            this long fails (``client_too_slow``); ``None``: it waits for as long as it takes.
        router: Picks the LLM tier of each response (``None``: ``llm`` answers every turn).
        grounder: Retrieval for replies when the configuration names vector stores
            (``config.file_search``); without one, such a configuration is refused.

    Operations never raise for the client's mistakes or a stage's failure: they emit an
    ``ErrorEvent`` and the session stays usable. Once ``aclose()`` has run, they do nothing.
    """

    def __init__(
        self,
        stt: STT,
        llm: LLM,
        tts: TTS,
        vad: VAD,
        *,
        config: SessionConfig | None = None,
        settings: SessionSettings | None = None,
        phrase_policy: PhrasePolicy | None = None,
        clock: Callable[[], float] = time.perf_counter,
        response_scope: Callable[[str], AbstractContextManager[object]] | None = None,
        stall_timeout_s: float | None = None,
        router: Router | None = None,
        grounder: Grounder | None = None,
    ) -> None:
        self.stt, self.llm, self.tts = stt, llm, tts
        self.router = router
        self.grounder = grounder
        self.settings = settings = settings or SessionSettings()
        self._config = config or SessionConfig(turn_detection=TurnDetection.from_settings(settings))
        self._config.validate()
        self._check_knowledge(self._config)
        self.phrase_policy = phrase_policy or PhrasePolicy()
        self._clock = clock
        self._events: EventQueue[Event | None] = EventQueue(QUEUED_AUDIO_S, _audio_seconds)
        self._lock = asyncio.Lock()
        self._closed = False
        self._history = History(
            max_tokens=settings.history_max_tokens, chars_per_token=settings.chars_per_token
        )
        td = self._config.turn_detection
        self._listener = Listener(
            stt,
            vad,
            policy=td.policy() if td is not None else None,
            partial_interval_ms=settings.partial_interval_ms,
            max_utterance_ms=settings.max_utterance_seconds * 1000,
            language=lambda: self._config.language,
            on_result=self._on_result,
            on_usage=lambda calls: self._emit(UsageReported(calls, "transcription")),
            clock=clock,
        )
        self._turns: set[asyncio.Task[None]] = set()  # ended turns awaiting their transcript
        self._responses = Responder(
            self._history,
            make_reply=self._make_reply,
            messages=self.messages,
            backends=lambda: Backends(stt=stt.name, llm=llm.name, tts=tts.name),
            emit=self._emit,
            wait_turns=self._wait_turns,
            clock=clock,
            scope=response_scope,
            room=self._events.wait_room,
            stall_timeout_s=stall_timeout_s,
            on_done=self._prefill_soon,
        )
        self._prefill: asyncio.Task[None] | None = None

    @property
    def config(self) -> SessionConfig:
        """The current configuration."""
        return self._config

    @property
    def items(self) -> tuple[ConversationItem, ...]:
        """The conversation as kept (bounded by ``history_max_tokens``), oldest first."""
        return tuple(item.snapshot() for item in self._history.items)

    @property
    def busy(self) -> bool:
        """Whether a turn is being answered: a response is out, or an ended turn awaits its
        transcript (a graceful drain lets these finish)."""
        return self._responses.active is not None or bool(self._turns)

    def messages(self) -> list[Message]:
        """What the LLM would see for the next response."""
        return self._history.messages(self._config.instructions)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def events(self) -> AsyncIterator[Event]:
        """The session's events in order; ends after ``aclose()``. One consumer only: while
        it is ``QUEUED_AUDIO_S`` of audio behind, the response in progress waits (and fails
        after ``stall_timeout_s``)."""
        while (event := await self._events.get()) is not None:
            yield event

    # ---------------------------------------------------------------- client operations

    async def append_audio(self, chunk: AudioChunk) -> None:
        """Add the client's audio (mono float32 at any rate; resampled for VAD and STT)."""
        await self._append_audio(chunk, self._clock())

    @_operation
    async def _append_audio(self, chunk: AudioChunk, arrival: float) -> None:
        if not 8_000 <= chunk.sample_rate <= 192_000:
            raise InvalidInput(f"unsupported sample rate {chunk.sample_rate}", param="audio")
        if chunk.samples.ndim != 1 or not np.isfinite(chunk.samples).all():
            raise InvalidInput("audio must be mono and finite", param="audio")
        for heard in await self._listener.push(chunk, arrival):
            await self._on_heard(heard)
        spec, utt = self._responses.spec, self._listener.utterance
        if spec is not None and spec.utterance is utt and utt is not None:
            if self._listener.endpointer.voiced_frames > spec.frames:  # the user went on
                self._responses.drop_spec()
        self._maybe_speculate()

    @_operation
    async def commit(self) -> None:
        """End the user's turn now (manual turns; with server VAD, the open utterance)."""
        for heard in self._listener.commit(self._clock()):
            await self._on_heard(heard)

    @_operation
    async def clear(self) -> None:
        """Drop the input audio not committed yet (and the open utterance)."""
        self._listener.clear()
        self._responses.drop_spec()
        self._emit(InputCleared())

    @_operation
    async def add_user_text(self, text: str) -> str:
        """Add a user text message; returns its item id (``None`` if refused)."""
        if not text.strip():
            raise InvalidInput("the message text is empty", param="item.content")
        item_id = new_id("item")
        self._add_user_item(item_id, text=text)
        return item_id

    @_operation
    async def add_tool_output(self, call_id: str, output: str) -> str:
        """Add a function's result (``function_call_output``) answering the model's call
        ``call_id``; returns its item id. The next response reads it."""
        calls = [i for i in self._history.items if i.kind == "function_call"]
        if not any(i.call_id == call_id for i in calls):
            raise InvalidInput(
                f"no function call {call_id[:64]!r} in the conversation",
                param="item.call_id",
                code="invalid_value",
            )
        if any(
            i.kind == "function_call_output" and i.call_id == call_id for i in self._history.items
        ):
            raise InvalidInput(
                f"the call {call_id[:64]!r} already has its output",
                param="item.call_id",
                code="invalid_value",
            )
        previous = self._history.last_id
        item = Item(new_id("item"), "tool", output, kind="function_call_output", call_id=call_id)
        self._history.add(item)
        self._emit(ItemAdded(item.snapshot(), previous))
        return item.item_id

    @_operation
    async def create_response(self) -> None:
        """Answer now (once transcriptions in progress are done)."""
        if self._responses.active is not None:
            raise InvalidInput(
                "a response is already in progress",
                code="conversation_already_has_active_response",
            )
        self._responses.start()

    @_operation
    async def cancel_response(self) -> None:
        """Stop the response in progress (``response.done`` with status ``cancelled``)."""
        if self._responses.active is None:
            raise InvalidInput("no response is in progress", code="response_cancel_not_active")
        await self._responses.cancel("client_cancelled")

    @_operation
    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """Cut an assistant item to its first ``audio_end_ms`` of audio (what the client played);
        a response still producing that item is cancelled first."""
        item = self._history.get(item_id)
        if item is None:
            raise InvalidInput(f"no item {item_id!r}", param="item_id", code="item_not_found")
        if item.role != "assistant" or not item.audio:
            raise InvalidInput("only assistant audio can be truncated", param="item_id")
        if not 0 <= audio_end_ms <= item.audio_ms + 1:
            raise InvalidInput(
                f"audio_end_ms must be between 0 and {int(item.audio_ms)}", param="audio_end_ms"
            )
        active = self._responses.active
        if active is not None and active.item is item:
            await self._responses.cancel("client_cancelled")
        item.truncate(audio_end_ms)
        self._history.changed()
        self._emit(ItemTruncated(item_id, audio_end_ms, item.text or ""))

    @_operation
    async def update(self, /, **changes: object) -> None:
        """Change configuration fields (``SessionConfig``'s names); emits ``SessionUpdated``."""
        try:
            config = dataclasses.replace(self._config, **changes)  # type: ignore[arg-type]
        except TypeError as exc:
            raise InvalidInput(f"unknown session field: {exc}", param="session") from exc
        config.validate()
        self._check_knowledge(config)
        td = config.turn_detection
        if (td is None) != (self._config.turn_detection is None):
            self._responses.drop_spec()
        self._listener.configure(td.policy() if td is not None else None)
        self._config = config
        self._emit(SessionUpdated(config))

    async def aclose(self) -> None:
        """Cancel everything in flight and end the event stream."""
        async with self._lock:  # after the operation in progress, before any other
            if self._closed:
                return
            self._closed = True
            for task in list(self._turns):
                task.cancel()
            await asyncio.gather(*self._turns, return_exceptions=True)
            await self._responses.aclose()
            if self._prefill is not None:
                self._prefill.cancel()
            await self._listener.aclose()
            self._events.put_nowait(None)

    # ---------------------------------------------------------------- turns

    async def _on_heard(self, heard: Heard) -> None:
        if not isinstance(heard, Turn):
            self._emit(heard)
            td = self._config.turn_detection
            if isinstance(heard, SpeechStarted) and td is not None and td.interrupt_response:
                self._responses.drop_spec()  # it answers a turn the user is adding to
                await self._responses.cancel("turn_detected")
            return
        self._add_user_item(heard.utterance.item_id, audio=True)
        task = asyncio.create_task(self._finish_turn(heard))
        self._turns.add(task)
        task.add_done_callback(self._turns.discard)

    async def _wait_turns(self) -> None:
        if self._turns:
            await asyncio.wait(set(self._turns))

    def _add_user_item(self, item_id: str, *, text: str | None = None, audio: bool = False) -> None:
        previous = self._history.last_id
        item = Item(item_id, "user", text, audio=audio)
        self._history.add(item)
        if audio:
            self._emit(InputCommitted(item_id, previous))
        self._emit(ItemAdded(item.snapshot(), previous))

    async def _finish_turn(self, turn: Turn) -> None:
        utt, marks = turn.utterance, turn.marks
        try:
            result = await self._listener.final(turn)
        except VoxlineError as exc:
            self._emit(TranscriptFailed(utt.item_id, ErrorEvent.from_exception(exc)))
            self._responses.drop_spec()
            return
        marks.final = self._clock()
        text = result.transcript.text.strip()
        item = self._history.get(utt.item_id)
        if item is not None:
            item.text = text
            self._history.changed()
        compute_ms = round((result.finished - result.started) * 1000, 1)
        speculative = result.started < marks.decision
        language = result.transcript.language
        self._emit(TranscriptCompleted(utt.item_id, text, language, speculative, compute_ms))
        td = self._config.turn_detection
        auto = marks.vad and td is not None and td.create_response and bool(text)
        responses = self._responses
        if not auto or self._listener.utterance is not None or responses.active is not None:
            # manual turns, nothing said, the user already speaking again, or busy answering:
            # the next response (whoever creates it) reports this turn's timings
            responses.drop_spec()
            responses.pending_marks = marks
        elif not responses.release(utt, marks):
            responses.start(marks)

    def _on_result(self, utt: Utterance) -> None:
        text = utt.result.transcript.text.strip() if utt.result is not None else ""
        if utt is self._listener.utterance and text and text != utt.last_partial:
            utt.last_partial = text
            self._emit(TranscriptPartial(utt.item_id, text))
        self._maybe_speculate()

    def _maybe_speculate(self) -> None:
        utt, ep = self._listener.utterance, self._listener.endpointer
        td, responses = self._config.turn_detection, self._responses
        if utt is None or utt.result is None or responses.spec is not None or not ep.paused:
            return
        if not (self.settings.speculative_response and td is not None and td.create_response):
            return
        text = utt.result.transcript.text.strip()
        if responses.active is not None or not text or utt.result.frames < ep.voiced_frames:
            return
        messages = self._history.messages(self._config.instructions, [Message("user", text)])
        responses.speculate(messages, utt, utt.result.frames)

    def _check_knowledge(self, config: SessionConfig) -> None:
        if config.file_search is not None and self.grounder is None:
            raise InvalidInput(
                "this server has no knowledge base: file_search is not available",
                param="session.tools",
                code="unsupported_value",
            )

    async def _make_reply(self, messages: list[Message]) -> tuple[Reply, Grounded | None]:
        # the seam between transcript and LLM (docs/architecture.md, "Between transcript and LLM"):
        # retrieval first, then the router (which reads how much was retrieved) picks the tier;
        # the functions the client offered ride in the params
        cfg = self._config
        params = cfg.reply_params
        grounded = None
        if cfg.file_search is not None and self.grounder is not None:
            grounded = await self.grounder.ground(messages, cfg.file_search)
            messages = grounded.messages
        llm, route = self.llm, None
        if self.router is not None:
            hits = len(grounded.passages) if grounded is not None else None
            route = self.router.route(messages, params, pinned=cfg.tier, retrieval_hits=hits)
            llm = self.router.llm(route)
        reply = Reply(
            llm,
            self.tts,
            messages,
            route=route,
            params=params,
            voice=cfg.voice,
            speed=cfg.speed,
            # the session's language is the STT's; the TTS speaks it too where it can (GPT-SoVITS
            # declares its languages), else in its voice's own language
            language=cfg.language if cfg.language in self.tts.capabilities.languages else None,
            policy=self.phrase_policy,
            output_rate=cfg.output_sample_rate,
            clock=self._clock,
            text=grounded.fixed_reply if grounded is not None else None,
            vet=grounded.vet if grounded is not None else None,
        )
        return reply, grounded

    def _prefill_soon(self) -> None:
        # After a response, while the user listens: trim the history now if the next message
        # would (a trim changes the prompt's start), then read the conversation so far into the
        # LLM's prompt cache, so the next turn's first token waits only for its own words.
        # Not with file_search: retrieval rewrites each turn's messages.
        if self._closed or not self.settings.prefill or self._config.file_search is not None:
            return
        self._history.make_room(self._history.max_tokens // PREFILL_HEADROOM)
        if self._prefill is not None:
            self._prefill.cancel()
        self._prefill = asyncio.create_task(self._run_prefill(self.messages()), name="prefill")

    async def _run_prefill(self, messages: list[Message]) -> None:
        with priority(Priority.BATCH):  # spare capacity only: see FallbackLLM.prefill
            try:
                await self.llm.prefill(messages, self._config.reply_params)
            except Exception as exc:  # best effort: the next turn reads its prompt itself
                log.debug("prefill failed: %s", exc)

    def _emit(self, event: Event) -> None:
        # work done while closing is still reported: it is billed (see UsageReported)
        if not self._closed or isinstance(event, UsageReported):
            self._events.put_nowait(event)
