"""The responses of a realtime session: at most one speaking, at most one speculating.

A response is a ``Reply`` plus what the client is told about it: it is announced
(``ResponseCreated``), its audio goes out phrase by phrase with the text of each phrase, and it
ends with exactly one ``ResponseDone`` carrying its status, usage and timings. A speculative
response runs its reply ahead but is *held*: nothing is announced until the session releases it
(the turn it answers really ended); dropped before that, it leaves no trace.

A reply may call functions (docs/tools.md): each call is an item of its own after the spoken
message (``output_index`` 1, 2...), announced when the model has chosen the function, its
arguments streamed as the model writes them, and closed (``FunctionCallDone``) with the checked
arguments once the LLM is done; the call enters the history then, and the client's
``function_call_output`` answers it.

The assistant item enters the history when the response is announced. When a response is
cancelled, the item keeps only the text whose audio the client can have played by then, assuming
it plays in real time from the first delta; the client's ``truncate`` refines that later.

A speculative response's engine calls run at ``Priority.SPECULATIVE`` until it is released. Each
audio delta waits for room in the session's event queue (``room``): a client that reads slowly
pauses its response, and one that takes none of it for ``stall_timeout_s`` has the response
failed with a ``client_too_slow`` error, which frees what it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from pipeline.errors import InvalidInput, VoxlineError
from pipeline.events import (
    ErrorEvent,
    Event,
    FunctionCallDelta,
    FunctionCallDone,
    FunctionCallStarted,
    ItemAdded,
    ResponseAudioDelta,
    ResponseAudioDone,
    ResponseCreated,
    ResponseDone,
    ResponseReason,
    ResponseStatus,
    ResponseTranscriptDelta,
    UsageReported,
)
from pipeline.fallback_types import FallbackReports, collect_reports
from pipeline.history import History, Item, heard_text
from pipeline.knowledge import Grounded, KnowledgeReport
from pipeline.listener import Utterance, new_id
from pipeline.metering import Meter
from pipeline.priority import Priority
from pipeline.reply import Reply, SpokenChunk
from pipeline.timing import TurnMarks, turn_timings
from pipeline.types import Backends, Message, ToolCall, ToolCallDelta, Usage

log = logging.getLogger("voxline.session.response")


@dataclass(slots=True)
class Response:
    """One response and its progress."""

    response_id: str
    item_id: str
    messages: list[Message] | None  # None: built from the history when the response starts
    marks: TurnMarks | None
    utterance: Utterance | None = None  # speculative: the utterance it answers
    frames: int = 0  # speculative: frames of that utterance its transcript covers
    released: asyncio.Event = field(default_factory=asyncio.Event)
    reply: Reply | None = None
    item: Item | None = None
    task: asyncio.Task[None] | None = None
    cancel_reason: ResponseReason | None = None
    phrase_index: int = -1
    first_delta_at: float | None = None
    reports: FallbackReports | None = None  # which backends served the LLM and TTS calls
    calls: dict[int, Item] = field(default_factory=dict)  # function calls by index
    arguments: dict[int, list[str]] = field(default_factory=dict)  # their arguments so far
    done_calls: list[FunctionCallDone] = field(default_factory=list)
    grounded: Grounded | None = None  # what the reply was grounded in (file_search)
    knowledge: KnowledgeReport | None = None


class Responder:
    """Starts, holds, releases and cancels a session's responses.

    Args:
        history: The conversation (assistant items are added to it).
        make_reply: Prepares the reply to a conversation (the session's current voice, params,
            and its grounding when the session searches vector stores).
        messages: The conversation as the LLM sees it now.
        backends: The backends serving each stage now.
        emit: Sends an event to the client.
        wait_turns: Waits until user turns being transcribed are in the history.
        clock: Time source.
        room: Waits until the client's queue has room for an audio delta.
        stall_timeout_s: Longest wait for that room before the response fails (``None``:
            forever).
        on_done: Called when a response is over and its item is final in the history.
    """

    def __init__(
        self,
        history: History,
        *,
        make_reply: Callable[[list[Message]], Awaitable[tuple[Reply, Grounded | None]]],
        messages: Callable[[], list[Message]],
        backends: Callable[[], Backends],
        emit: Callable[[Event], None],
        wait_turns: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.perf_counter,
        scope: Callable[[str], AbstractContextManager[object]] | None = None,
        room: Callable[[], Awaitable[None]] | None = None,
        stall_timeout_s: float | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self._scope = scope or _no_scope
        self._on_done = on_done
        self._room = room
        self._stall_timeout_s = stall_timeout_s
        self._history = history
        self._make_reply = make_reply
        self._messages = messages
        self._backends = backends
        self._emit = emit
        self._wait_turns = wait_turns
        self._clock = clock
        self.active: Response | None = None
        """The released response, whose events are going out."""
        self.spec: Response | None = None
        """The speculative response, running ahead, not announced."""
        self.pending_marks: TurnMarks | None = None
        """A voice turn not answered yet: the next response reports its timings."""
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, marks: TurnMarks | None = None) -> Response:
        """Start a response to the conversation as it stands once pending turns are in."""
        self.drop_spec()
        resp = Response(new_id("resp"), new_id("item"), None, marks)
        resp.released.set()
        self.active = resp
        self._spawn(resp)
        return resp

    def speculate(self, messages: list[Message], utterance: Utterance, frames: int) -> None:
        """Start a held response answering ``messages`` (the utterance's speculative transcript
        covering its first ``frames`` frames)."""
        self.drop_spec()
        self.spec = Response(new_id("resp"), new_id("item"), messages, None, utterance, frames)
        self._spawn(self.spec)

    def release(self, utterance: Utterance, marks: TurnMarks) -> bool:
        """Announce the speculative response if it answers ``utterance`` and the conversation
        is still what it answered; returns whether it did."""
        spec = self.spec
        if spec is None or spec.utterance is not utterance or spec.messages != self._messages():
            return False
        self.spec = None
        spec.marks = marks
        self.active = spec
        if spec.reply is not None:
            spec.reply.priority = Priority.INTERACTIVE  # a user is waiting on it now
        spec.released.set()
        return True

    def drop_spec(self) -> None:
        """Drop the speculative response, without a trace."""
        spec, self.spec = self.spec, None
        if spec is not None and spec.task is not None:
            spec.cancel_reason = "turn_detected"
            spec.task.cancel()

    async def cancel(self, reason: ResponseReason) -> None:
        """Cancel the active response; returns once its ``ResponseDone`` is out."""
        resp = self.active
        if resp is None or resp.task is None or resp.task.done():
            return
        resp.cancel_reason = reason
        resp.task.cancel()
        await asyncio.wait({resp.task})

    async def aclose(self) -> None:
        """Cancel everything, silently."""
        for resp in (self.active, self.spec):
            if resp is not None and resp.cancel_reason is None:
                resp.cancel_reason = "session_closed"
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, resp: Response) -> None:
        resp.task = asyncio.create_task(self._run(resp), name=f"response-{resp.response_id}")
        self._tasks.add(resp.task)
        resp.task.add_done_callback(self._tasks.discard)

    async def _run(self, resp: Response) -> None:
        # the reply's LLM and TTS tasks are created in here, so they inherit the collector, the
        # meter and whatever the scope sets up (the server opens the response's trace there)
        meter = Meter()
        with self._scope(resp.response_id), collect_reports() as resp.reports, meter.bind():
            await self._respond(resp, meter)

    async def _respond(self, resp: Response, meter: Meter) -> None:
        status: ResponseStatus = "completed"
        reason: ResponseReason | None = None
        error: ErrorEvent | None = None
        try:
            if resp.messages is not None:  # speculative: run ahead while held
                resp.reply, resp.grounded = await self._make_reply(resp.messages)
                if not resp.released.is_set():
                    resp.reply.priority = Priority.SPECULATIVE
                resp.reply.start()
            await resp.released.wait()
            previous = self._history.last_id
            resp.item = Item(resp.item_id, "assistant", "", audio=True)
            self._history.add(resp.item)
            self._emit(ResponseCreated(resp.response_id, resp.item_id, previous))
            if resp.reply is None:  # answer the transcripts still being finished, too
                await self._wait_turns()
                resp.messages = self._messages()
                if resp.marks is None:
                    resp.marks, self.pending_marks = self.pending_marks, None
                resp.reply, resp.grounded = await self._make_reply(resp.messages)
            reply = resp.reply
            async for out in reply.items():
                if isinstance(out, ToolCallDelta):
                    self._call_piece(resp, out)
                else:
                    await self._send(resp, out)
            if reply.finish_reason == "length":
                status, reason = "incomplete", "max_output_tokens"
            resp.item.text = reply.text
            self._emit(ResponseAudioDone(resp.response_id, resp.item_id, reply.text))
            self._calls_done(resp, reply.tool_calls)
            if resp.grounded is not None:  # its support is scored once the reply is out
                resp.knowledge = await resp.grounded.report(reply.text)
        except asyncio.CancelledError:
            if resp.cancel_reason is None:
                raise
            status, reason = "cancelled", resp.cancel_reason
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # our own cancellation, handled here
        except Exception as exc:  # a stage failed: report it, stay usable
            if not isinstance(exc, VoxlineError):
                log.exception("response %s failed", resp.response_id)
            status, error = "failed", ErrorEvent.from_exception(exc)
        finally:
            if resp.reply is not None:
                await resp.reply.aclose()  # its tasks have ended: their calls are in the meter
            if self.active is resp:
                self.active = None
            if resp.item is None:  # never announced: a speculation dropped (or the session closed)
                self._emit(UsageReported(meter.take(), "speculation", resp.response_id))
            else:
                failed = status == "failed"
                self._emit(UsageReported(meter.take(), "response", resp.response_id, failed))
        if resp.item is not None and resp.cancel_reason != "session_closed":
            self._finish(resp, status, reason, error)

    async def _send(self, resp: Response, chunk: SpokenChunk) -> None:
        await self._wait_room()
        assert resp.item is not None
        spoken = resp.item.spoken
        if chunk.phrase_index != resp.phrase_index:
            resp.phrase_index = chunk.phrase_index
            text = chunk.phrase if not spoken else " " + chunk.phrase
            spoken.append((chunk.phrase, 0.0))
            self._emit(ResponseTranscriptDelta(resp.response_id, resp.item_id, text))
        phrase, ms = spoken[-1]
        spoken[-1] = (phrase, ms + chunk.audio.duration * 1000)
        if resp.first_delta_at is None:
            resp.first_delta_at = self._clock()
        self._emit(ResponseAudioDelta(resp.response_id, resp.item_id, chunk.audio))

    async def _wait_room(self) -> None:
        """Wait for room for an audio delta; past the stall timeout, fail the response.

        Raises:
            InvalidInput: the client took no audio for ``stall_timeout_s``.
        """
        if self._room is None:
            return
        deadline = asyncio.timeout(self._stall_timeout_s)
        try:
            async with deadline:
                await self._room()
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            log.warning(
                "a response was stopped: its client read none of it for %g s", self._stall_timeout_s
            )
            raise InvalidInput(
                f"the client read none of the response's audio for {self._stall_timeout_s:g} "
                "s: the response was stopped",
                code="client_too_slow",
            ) from exc

    def _call_piece(self, resp: Response, piece: ToolCallDelta) -> None:
        """A piece of a function call: announce the call's item first, then its arguments."""
        item = resp.calls.get(piece.index)
        if item is None:
            previous = self._history.last_id
            item = Item(
                new_id("item"), "assistant", None, kind="function_call",
                call_id=piece.call_id, name=piece.name,
            )  # fmt: skip
            resp.calls[piece.index] = item
            resp.arguments[piece.index] = []
            self._history.add(item)
            self._emit(
                FunctionCallStarted(
                    resp.response_id, item.item_id, piece.index + 1, piece.call_id, piece.name
                )
            )
            self._emit(ItemAdded(item.snapshot(), previous))
        if piece.arguments:
            resp.arguments[piece.index].append(piece.arguments)
            self._emit(
                FunctionCallDelta(
                    resp.response_id, item.item_id, piece.index + 1, piece.call_id, piece.arguments
                )
            )

    def _calls_done(self, resp: Response, calls: tuple[ToolCall, ...]) -> None:
        """Close every call: with its checked arguments, or ``incomplete`` when the response
        ended before the call did."""
        for index, item in sorted(resp.calls.items()):
            if any(d.item_id == item.item_id for d in resp.done_calls):
                continue
            call = next((c for c in calls if c.call_id == item.call_id), None)
            streamed = "".join(resp.arguments.get(index, ()))
            arguments = call.arguments if call is not None else streamed
            item.text = arguments if call is not None else None  # the LLM sees complete calls
            self._history.changed()
            done = FunctionCallDone(
                resp.response_id,
                item.item_id,
                index + 1,
                item.call_id or "",
                item.name or "",
                arguments,
                "completed" if call is not None else "incomplete",
            )
            resp.done_calls.append(done)
            self._emit(done)

    def _served(self, resp: Response) -> Backends:
        configured = self._backends()
        if resp.reports is None:
            return configured
        return dataclasses.replace(
            configured,
            llm=resp.reports.backend("llm", configured.llm),
            tts=resp.reports.backend("tts", configured.tts),
        )

    def _finish(
        self,
        resp: Response,
        status: ResponseStatus,
        reason: ResponseReason | None,
        error: ErrorEvent | None,
    ) -> None:
        item, reply = resp.item, resp.reply
        assert item is not None
        done_at = self._clock()
        if status == "cancelled":
            played = 0.0
            if resp.first_delta_at is not None:
                played = min(item.audio_ms, (done_at - resp.first_delta_at) * 1000)
            item.text = heard_text(item.spoken, played)
        elif status == "failed":
            item.text = heard_text(item.spoken, item.audio_ms)
        self._history.changed()
        self._calls_done(resp, ())  # calls the response did not finish
        if error is not None:
            self._emit(error)
        self._emit(
            ResponseDone(
                resp.response_id,
                resp.item_id,
                status,
                reason,
                item.text or "",
                reply.usage if reply is not None else Usage(),
                turn_timings(
                    resp.marks,
                    reply.times if reply is not None else None,
                    resp.first_delta_at,
                    done_at,
                ),
                self._served(resp),
                error,
                resp.reports.switches() if resp.reports is not None else (),
                tuple(resp.done_calls),
                reply.route if reply is not None else None,
                resp.knowledge or _partial_report(resp.grounded),
            )
        )
        if self._on_done is not None:
            self._on_done()


def _partial_report(grounded: Grounded | None) -> KnowledgeReport | None:
    """What a response that did not finish retrieved (no support: its answer was cut)."""
    if grounded is None:
        return None
    return KnowledgeReport(
        grounded.search.vector_store_ids,
        grounded.retrieval.total_ms,
        tuple(round(p.score, 4) for p in grounded.retrieval.passages),
        grounded.citations,
        dont_know=not grounded.passages,
        llm_called=grounded.fixed_reply is None,
        relevance=grounded.relevance,
    )


def _no_scope(_: str) -> AbstractContextManager[object]:
    return contextlib.nullcontext()
