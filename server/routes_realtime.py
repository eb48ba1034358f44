"""``/v1/realtime``: OpenAI's Realtime API over a WebSocket, served by a pipeline ``Session``.

The official ``openai`` SDK connects with only its base URL changed (``?model=`` is accepted and
echoed). What the wire looks like is decided in ``server.realtime_protocol`` (client events) and
``server.realtime_events`` (server events); this module is about concurrency and lifetimes. Each
connection runs four small tasks, so that neither direction ever waits for the other:

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
server's buffers. One append is capped too (``settings.audio.max_bytes``, and at most 8 MiB, whose
base64 still fits uvicorn's default 16 MiB frame limit; a larger frame is refused by uvicorn
itself, which closes the socket with 1009).

An error caused by a client event carries that event's ``event_id``. The session reports its
refusals as events, not exceptions, so the pump tags each ``invalid_request_error`` the session
emits while a command is being applied with that command's ``event_id`` (the applier yields once
after each command so the pump, which never waits on I/O, has drained them by then).

When the client goes away, ``session.aclose()`` cancels the response in flight, which stops the
engines' worker threads within a frame of work. Until the engines are warm, a connection gets an
``error`` (``engines_not_ready``) and is closed with 1013 (try again later).

Admission and backpressure (docs/architecture.md, "Admission and scheduling"): a session over
the server's limit (or during a drain) is refused at the handshake with 503 and ``Retry-After``
(or, on a server without the WebSocket denial extension, accepted and closed at once with an
``error`` event and 1013). The outbox is bounded: while it is full the pump stops taking the
session's events (whose response then waits, and fails after the stall timeout) and the applier
applies no command (the reader then stops reading: TCP backpressure), so a client that stops
reading costs the server a bounded amount of memory. The drain closes an idle session's socket
with 1001.

A session is served by one release from start to end (``server.releases``): the one leased when
it connected, whose name is in ``session.created`` and every ``response.done`` (``voxline``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import suppress
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from pipeline.audio import decode_pcm16
from pipeline.errors import EngineBusy, InvalidInput, VoxlineError
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
from pipeline.phrases import PhrasePolicy
from pipeline.router import Route
from pipeline.session import Session
from pipeline.session_config import SessionConfig, TurnDetection
from pipeline.stages import CallRecord
from server import identity
from server.accounting import SessionUsage
from server.admission import SessionLease
from server.edge.realtime import RealtimeLimits
from server.errors import error_response
from server.kb import caller, grounder_for
from server.logging_setup import bind
from server.realtime_events import ServerEvents
from server.realtime_protocol import (
    AddToolOutput,
    AddUserText,
    AppendAudio,
    BadClientEvent,
    CancelResponse,
    ClearAudio,
    ClientEventParser,
    Command,
    CommitAudio,
    CreateResponse,
    TruncateItem,
    UpdateSession,
)
from server.realtime_wire import Wire, error_event
from server.routes_client_secrets import session_config
from server.state import AppState, release_of

log = logging.getLogger("voxline.server.realtime")

router = APIRouter()

MAX_APPEND_BYTES = 8 * 1024 * 1024
"""Most decoded audio in one append (about 3 minutes of 24 kHz pcm16)."""

_INBOX_COMMANDS = 256  # beyond this many queued commands the reader waits (TCP backpressure)
_OUTBOX_BYTES = 1024 * 1024  # wire events queued for the socket: ~15 s of base64 pcm16 at 24 kHz
_EVENT_BYTES = 256  # what an event without audio weighs, roughly
_TRY_AGAIN_LATER = 1013  # WebSocket close code: the server cannot serve this yet
_DRAIN_S = 5.0  # most time the pump gets to report the closing session's last work


@router.websocket("/v1/realtime")
async def realtime(
    websocket: WebSocket,
    model: Annotated[str | None, Query(max_length=256)] = None,
) -> None:
    """A realtime voice conversation (OpenAI Realtime API, GA events)."""
    state = websocket.app.state.voxline
    assert isinstance(state, AppState)
    try:
        lease = state.admission.open_session()
    except EngineBusy as exc:  # before any work: the sessions already in keep their engines
        await _refuse(websocket, exc)
        return
    try:
        await _serve(websocket, state, lease, model)
    finally:
        lease.close()


async def _refuse(websocket: WebSocket, busy: EngineBusy) -> None:
    """Refuse a session: 503 with ``Retry-After`` at the handshake, or (a server without the
    denial extension) an ``error`` event and close code 1013."""
    log.warning("realtime session refused: %s", busy.message)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(busy))
        return
    await websocket.accept()
    with suppress(WebSocketDisconnect, RuntimeError):
        await websocket.send_text(json.dumps(error_event(ErrorEvent.from_exception(busy))))
        await websocket.close(code=_TRY_AGAIN_LATER, reason="server busy")


async def _serve(
    websocket: WebSocket, state: AppState, lease: SessionLease, model: str | None
) -> None:
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
    try:
        # the session's release: its settings and engines for the whole session
        live = release_of(websocket)
        vad = await state.load_vad()
    except VoxlineError as exc:
        reason = str(exc)
        if state.engines is None:
            reason = state.startup_error or "the engines are still loading: try again shortly"
        error = ErrorEvent(reason, "server_error", code="engines_not_ready")
        with suppress(WebSocketDisconnect, RuntimeError):
            await websocket.send_text(json.dumps(error_event(error)))
            await websocket.close(code=_TRY_AGAIN_LATER, reason="engines not ready")
        return
    settings, engines = live.settings, live.engines
    who = identity.current()  # bound by the edge for the whole connection
    config = SessionConfig.from_settings(settings)
    if who is not None and who.session:  # opened with a client secret minted with a session
        try:
            voices = state.voices.visible(engines.tts.capabilities.voices, who)
            config = session_config(settings, dict(who.session), voices)
        except InvalidInput as exc:  # valid when minted; the engines may have changed since
            log.warning("a client secret's session no longer applies: %s", exc.code)
    router = engines.router
    if router is not None and model in router.tiers:
        config = dataclasses.replace(config, tier=model)  # ?model= naming a tier pins it
    events = ServerEvents(
        model=model or "voxline",
        config=config,
        transcription_model=engines.stt.name,
        release=live.name,
    )
    heard = _LastTranscription(engines.stt.name)
    owner = caller()
    session = Session(
        engines.stt,
        engines.llm,
        engines.tts,
        vad.fork(),
        config=config,
        settings=settings.session,
        phrase_policy=PhrasePolicy.from_settings(settings.reply),
        response_scope=functools.partial(_traced, state, events.session_id, heard),
        stall_timeout_s=settings.limits.client_stall_timeout_s,
        router=router,
        grounder=grounder_for(state.kb, owner, settings.kb),  # the release's retrieval policy
    )
    parser = ClientEventParser(
        max_append_bytes=min(settings.audio.max_bytes, MAX_APPEND_BYTES),
        # uploaded voices are their owner's: another key's are unknown names here
        voices=lambda: state.voices.visible(engines.tts.capabilities.voices, who),
        tiers=tuple(router.tiers) if router is not None else (),
    )
    connection = _Connection(
        websocket,
        session,
        events,
        parser,
        backlog_bytes=settings.audio.max_bytes,
        default_vad=TurnDetection.from_settings(settings.session),
        usage=SessionUsage(state.accounting, events.session_id, who),
        observe_turn=functools.partial(state.releases.observe_response, live.name),
        heard=heard,
        observe_route=functools.partial(state.observe_route, where="realtime response"),
        check_stores=functools.partial(_check_stores, state, owner),
        observe_knowledge=state.observe_knowledge,
    )
    lease.busy = lambda: session.busy
    lease.shutdown = connection.shutdown
    if who is not None:
        connection.limits = RealtimeLimits(
            state.store, who, connection.emit, session.cancel_response
        )
    log.info(
        "realtime session %s opened (model %s, release %s)",
        events.session_id,
        events.model,
        live.name,
    )
    try:
        with state.metrics.session(), bind(session_id=events.session_id):
            await connection.run()
    finally:
        log.info("realtime session %s closed", events.session_id)


async def _check_stores(state: AppState, owner: str | None, ids: Sequence[str]) -> None:
    """Refuse a ``file_search`` naming a store that is not the caller's (before it is used)."""
    await asyncio.to_thread(state.kb.check_stores, ids, owner, "session.tools.vector_store_ids")


class _LastTranscription:
    """The session's last final transcription, for the trace of the response that answers it
    (the STT runs in the session's listener, before the response and outside its scope)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.compute_ms: float | None = None
        self.end_ns = 0

    def heard(self, done: TranscriptCompleted) -> None:
        self.compute_ms, self.end_ns = done.compute_ms, time.time_ns()


@contextlib.contextmanager
def _traced(
    state: AppState, session_id: str, heard: _LastTranscription, response_id: str
) -> Iterator[None]:
    """A response's trace: the turn span, with the LLM and TTS calls made inside it and the
    transcription that the response answers."""
    with state.tracing.turn(request_id=response_id, session_id=session_id) as trace:
        try:
            yield
        finally:
            # Read at the end: a speculative response starts before the turn's final
            # transcription is reported (at the first silent frame), and answers it all the same.
            if heard.compute_ms is not None:
                stt = CallRecord("stt", heard.backend, heard.compute_ms, heard.compute_ms, 1)
                trace.add_call(stt, end_ns=heard.end_ns)


class _Connection:
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
        heard: _LastTranscription | None = None,
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
