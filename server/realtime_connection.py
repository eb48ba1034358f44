"""One realtime connection at work: four small tasks between a WebSocket and its ``Session``.

The route (``server.routes_realtime``) builds the session and hands the socket over; from then
on neither direction ever waits for the other:

- the *reader* drains the socket, parses each event and queues the command (or the refusal
  of a bad event: the client hears about its events in the order it sent them);
- the *applier* applies the commands to the session, one at a time, in order, and answers a
  refusal with an ``error`` event (the session stays open);
- the *pump* turns session events into server events as fast as the session emits them;
- the *sender* writes them to the socket.

(docs/architecture.md, "One realtime turn, frame to delta", follows one frame through them.)

The reader does not wait for the session, so a client that sends audio faster than the session
consumes it meets an explicit bound, the input backlog (``settings.audio.max_bytes`` of audio not
yet consumed): past it, appends are refused with an ``error`` event instead of piling up in the
server's buffers.

An error caused by a client event carries that event's ``event_id``. The session reports its
refusals as events, not exceptions, so the pump tags each ``invalid_request_error`` the session
emits while a command is being applied with that command's ``event_id`` (the applier yields once
after each command so the pump, which never waits on I/O, has drained them by then).

When the client goes away, ``session.aclose()`` cancels the response in flight, which stops the
engines' worker threads within a frame of work.

Backpressure (docs/architecture.md, "Admission and scheduling"): the outbox is bounded. While it
is full the pump stops taking the session's events (whose response then waits, and fails after
the stall timeout) and the applier applies no command (the reader then stops reading: TCP
backpressure), so a client that stops reading costs the server a bounded amount of memory. The
drain closes an idle session's socket with 1001.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress

from fastapi import WebSocket, WebSocketDisconnect

from pipeline.audio import decode_pcm16
from pipeline.errors import InvalidInput
from pipeline.event_queue import EventQueue
from pipeline.events import (
    ErrorEvent,
    ResponseCreated,
    ResponseDone,
    TranscriptCompleted,
    UsageReported,
)
from pipeline.file_search import FileSearch
from pipeline.knowledge import KnowledgeReport
from pipeline.router import Route
from pipeline.session import Session
from pipeline.session_config import TurnDetection
from server.accounting import SessionUsage
from server.edge.realtime import RealtimeLimits
from server.realtime_commands import (
    AddToolOutput,
    AddUserText,
    AppendAudio,
    CancelResponse,
    ClearAudio,
    Command,
    CommitAudio,
    CreateResponse,
    TruncateItem,
    UpdateSession,
)
from server.realtime_events import ServerEvents
from server.realtime_protocol import BadClientEvent, ClientEventParser
from server.realtime_wire import Wire, error_event

# the route's logger: a session's lines share one name, whichever module writes them
log = logging.getLogger("voxline.server.realtime")

_INBOX_COMMANDS = 256  # beyond this many queued commands the reader waits (TCP backpressure)
_OUTBOX_BYTES = 1024 * 1024  # wire events queued for the socket: ~15 s of base64 pcm16 at 24 kHz
_EVENT_BYTES = 256  # what an event without audio weighs, roughly
_DRAIN_S = 5.0  # most time the pump gets to report the closing session's last work


class LastTranscription:
    """The session's last final transcription, for the trace of the response that answers it
    (the STT runs in the session's listener, before the response and outside its scope)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.compute_ms: float | None = None
        self.end_ns = 0

    def heard(self, done: TranscriptCompleted) -> None:
        self.compute_ms, self.end_ns = done.compute_ms, time.time_ns()


class RealtimeConnection:
    """One client's connection to its session (see the module docstring for the four tasks)."""

    def __init__(
        self,
        websocket: WebSocket,
        session: Session,
        events: ServerEvents,
        parser: ClientEventParser,
        *,
        backlog_bytes: int,
        default_vad: TurnDetection,
        usage: SessionUsage | None = None,
        observe_turn: Callable[[ResponseDone], None] = lambda _: None,
        heard: LastTranscription | None = None,
        observe_route: Callable[[Route | None], None] = lambda _: None,
        check_stores: Callable[[Sequence[str]], Awaitable[None]] | None = None,
        observe_knowledge: Callable[[KnowledgeReport], None] = lambda _: None,
    ) -> None:
        self._ws = websocket
        self._observe_route = observe_route
        self._check_stores = check_stores
        self._observe_knowledge = observe_knowledge
        self._usage = usage
        self._observe_turn = observe_turn
        self._heard = heard
        self._session = session
        self._events = events
        self._parser = parser
        self._backlog_limit = backlog_bytes
        self._backlog = 0  # bytes of audio read from the socket, not yet given to the session
        self._default_vad = default_vad
        # commands in order, and the refusals of bad events in their place among them
        self._inbox: asyncio.Queue[tuple[str | None, Command | InvalidInput]] = asyncio.Queue(
            _INBOX_COMMANDS
        )
        # None: the sender's end, after the last batch
        self._outbox: EventQueue[list[Wire] | None] = EventQueue(_OUTBOX_BYTES, _wire_bytes)
        self._cause: str | None = None  # event_id of the command being applied
        self._close_code = 1000
        self._reader: asyncio.Task[None] | None = None
        self.limits: RealtimeLimits | None = None
        """The caller's key limits, checked at each response (``server.edge.realtime``)."""

    def emit(self, wires: list[Wire]) -> None:
        """Queue server events that come from outside the session (the edge's limits)."""
        self._outbox.put_nowait(wires)

    async def run(self) -> None:
        """Serve until the client goes away; then stop the session's work."""
        self._outbox.put_nowait([self._events.session_created()])
        self._reader = asyncio.create_task(self._read(), name="realtime-reader")
        inbound = [self._reader, asyncio.create_task(self._apply(), name="realtime-applier")]
        outbound = [
            asyncio.create_task(self._pump(), name="realtime-pump"),
            asyncio.create_task(self._send(), name="realtime-sender"),
        ]
        try:
            done, _ = await asyncio.wait([*inbound, *outbound], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and (exc := task.exception()) is not None:
                    log.error("realtime %s failed", task.get_name(), exc_info=exc)
        finally:
            # nothing more from the client; then the session, whose closing stops the engines'
            # threads; then what it had left to say
            for task in inbound:
                task.cancel()
            await asyncio.gather(*inbound, return_exceptions=True)
            await self._session.aclose()
            # the pump ends with the session's events, after the work done while closing was
            # reported (billed); it no longer waits for room in the outbox, so this is quick
            self._outbox.unbound()
            with suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(outbound[0]), _DRAIN_S)
            if self.limits is not None:
                await self.limits.aclose()
            if self._usage is not None:  # the session's charges are in the store
                await self._usage.flush()
            self._outbox.put_nowait(None)  # the sender flushes what is left, then ends
            with suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(outbound[1]), _DRAIN_S)
            for task in outbound:
                task.cancel()
            await asyncio.gather(*outbound, return_exceptions=True)
            with suppress(RuntimeError, WebSocketDisconnect):
                await self._ws.close(code=self._close_code)

    def shutdown(self, code: int) -> None:
        """End the connection from the server's side (the drain), closing with ``code``."""
        self._close_code = code
        if self._reader is not None:
            self._reader.cancel()  # run() then closes the session and the socket

    # ---------------------------------------------------------------- client -> session

    async def _read(self) -> None:
        while True:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text, data = message.get("text"), message.get("bytes")
            item: Command | InvalidInput
            try:
                event_id, item = self._parser.parse(text if text is not None else data or b"")
            except BadClientEvent as exc:
                event_id, item = exc.event_id, exc.error
            if isinstance(item, AppendAudio):
                if self._backlog + len(item.pcm) > self._backlog_limit:
                    item = InvalidInput(
                        "the server is behind on this connection's audio: appended audio "
                        "was dropped (send it in real time)",
                        param="audio",
                        code="input_audio_buffer_overflow",
                    )
                else:
                    self._backlog += len(item.pcm)
            # refusals queue up too, so that the client hears about its events in order
            await self._inbox.put((event_id, item))

    async def _apply(self) -> None:
        while True:
            event_id, item = await self._inbox.get()
            # a client that reads nothing gets nothing more done: its commands wait (and the
            # reader, once the inbox is full, stops reading the socket)
            await self._outbox.wait_room()
            self._cause = event_id
            try:
                if isinstance(item, InvalidInput):
                    raise item
                await self._execute(item)
            except InvalidInput as exc:
                self._reply_error(exc, event_id)
            except Exception:  # a bug must not end the conversation: report it, go on
                log.exception("realtime command %s failed", type(item).__name__)
                internal = ErrorEvent("internal server error", "server_error", code="internal")
                self._outbox.put_nowait([error_event(internal, event_id)])  # one per command
            finally:
                if isinstance(item, AppendAudio):
                    self._backlog -= len(item.pcm)
            await asyncio.sleep(0)  # the pump tags the errors this command caused (see _pump)
            self._cause = None

    async def _execute(self, command: Command) -> None:
        session = self._session
        match command:
            case AppendAudio(pcm=pcm):
                if pcm:
                    await session.append_audio(decode_pcm16(pcm, session.config.input_sample_rate))
            case UpdateSession():
                search = command.file_search
                if isinstance(search, FileSearch) and self._check_stores is not None:
                    await self._check_stores(search.vector_store_ids)
                await session.update(**command.changes(session.config, self._default_vad))
            case CommitAudio():
                await session.commit()
            case ClearAudio():
                await session.clear()
            case AddUserText(text=text):
                await session.add_user_text(text)
            case AddToolOutput(call_id=call_id, output=output):
                await session.add_tool_output(call_id, output)
            case CreateResponse():
                await session.create_response()
            case CancelResponse(response_id=rid):
                if rid is not None and rid != self._events.active_response:
                    raise InvalidInput(
                        f"response {rid[:64]!r} is not in progress",
                        param="response_id",
                        code="response_cancel_not_active",
                    )
                await session.cancel_response()
            case TruncateItem(item_id=item_id, audio_end_ms=end):
                await session.truncate(item_id, end)

    def _reply_error(self, error: InvalidInput, event_id: str | None) -> None:
        # one per command, after the applier waited for room: bounded
        self._outbox.put_nowait([error_event(ErrorEvent.from_exception(error), event_id)])

    # ---------------------------------------------------------------- session -> client

    async def _pump(self) -> None:
        # Waits on nothing but the session and room in the outbox (which the applier waited
        # for before the command): so after each command the applier's one yield is enough
        # for the pump to have drained what that command emitted.
        async for event in self._session:
            if isinstance(event, UsageReported):
                if self._usage is not None:
                    self._usage.charge(event)
                continue
            cause = None
            if isinstance(event, ErrorEvent) and event.type == "invalid_request_error":
                cause = self._cause
            if isinstance(event, TranscriptCompleted) and self._heard is not None:
                self._heard.heard(event)
            if isinstance(event, TranscriptCompleted) and self.limits is not None:
                self.limits.transcribed()
            if isinstance(event, ResponseCreated) and self.limits is not None:
                self.limits.response_started()
            try:
                wires = self._events.map(event, cause)
                if isinstance(event, ResponseDone):
                    self._observe_route(event.route)
                if isinstance(event, ResponseDone) and event.knowledge is not None:
                    self._observe_knowledge(event.knowledge)
                if isinstance(event, ResponseDone) and self._usage is not None:
                    self._observe_turn(event)
                    billed = self._usage.report()
                    for wire in wires:  # the cost rides in response.done's usage
                        if wire["type"] == "response.done":
                            wire["response"].setdefault("usage", {}).update(billed)
            except Exception:  # a bug in one event's mapping must not silence the others
                log.exception("realtime event %s could not be sent", type(event).__name__)
                continue
            await self._outbox.wait_room()  # the client is behind: so is the session
            self._outbox.put_nowait(wires)

    async def _send(self) -> None:
        while (batch := await self._outbox.get()) is not None:
            for wire in batch:
                try:
                    await self._ws.send_text(json.dumps(wire))
                except (WebSocketDisconnect, RuntimeError, OSError):
                    return  # the client is gone; the reader sees it too


def _wire_bytes(batch: list[Wire] | None) -> float:
    """About what a batch of server events weighs on the wire (its audio, mostly)."""
    if batch is None:
        return 0.0
    return sum(len(w.get("delta") or "") + _EVENT_BYTES for w in batch)
