"""``/v1/realtime``: OpenAI's Realtime API over a WebSocket, served by a pipeline ``Session``.

The official ``openai`` SDK connects with only its base URL changed (``?model=`` is accepted and
echoed). What the wire looks like is decided in ``server.realtime_protocol`` (client events) and
``server.realtime_events`` (server events); how a connection runs (its four tasks, bounded
queues and lifetimes) in ``server.realtime_connection``. This module is the handshake: admission,
the release, the caller's identity, and the session, parser and connection built for them.

One append is capped (``settings.audio.max_bytes``, and at most 8 MiB, whose base64 still fits
uvicorn's default 16 MiB frame limit; a larger frame is refused by uvicorn itself, which closes
the socket with 1009). Until the engines are warm, a connection gets an ``error``
(``engines_not_ready``) and is closed with 1013 (try again later).

Admission (docs/architecture.md, "Admission and scheduling"): a session over the server's limit
(or during a drain) is refused at the handshake with 503 and ``Retry-After`` (or, on a server
without the WebSocket denial extension, accepted and closed at once with an ``error`` event and
1013).

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
from collections.abc import Iterator, Sequence
from contextlib import suppress
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from pipeline.errors import EngineBusy, InvalidInput, VoxlineError
from pipeline.events import ErrorEvent
from pipeline.phrases import PhrasePolicy
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
from server.realtime_connection import LastTranscription, RealtimeConnection
from server.realtime_events import ServerEvents
from server.realtime_protocol import ClientEventParser
from server.realtime_wire import error_event
from server.routes_client_secrets import session_config
from server.state import AppState, release_of

log = logging.getLogger("voxline.server.realtime")

router = APIRouter()

MAX_APPEND_BYTES = 8 * 1024 * 1024
"""Most decoded audio in one append (about 3 minutes of 24 kHz pcm16)."""

_TRY_AGAIN_LATER = 1013  # WebSocket close code: the server cannot serve this yet


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
    heard = LastTranscription(engines.stt.name)
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
    usage = SessionUsage(state.accounting, events.session_id, who)
    connection = RealtimeConnection(
        websocket,
        session,
        events,
        parser,
        backlog_bytes=settings.audio.max_bytes,
        default_vad=TurnDetection.from_settings(settings.session),
        usage=usage,
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
            state.store,
            who,
            connection.emit,
            session.cancel_response,
            connection.shutdown,
            billed=usage.flush,
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


@contextlib.contextmanager
def _traced(
    state: AppState, session_id: str, heard: LastTranscription, response_id: str
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
