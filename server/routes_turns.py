"""``POST /v1/turns``: one typed voice turn over HTTP (audio in; transcript, reply and speech out).

This is ``voxline turn`` as an endpoint, for clients that have a recorded question rather than a
live microphone: multipart audio in, a validated JSON result out (the reply as a base64 wav), or
with ``stream=true`` SSE events named as in OpenAI's Realtime API, sent as the turn progresses.

Everything that can be checked before the models run is (form fields, the voice, the audio's
size and format, silence), and a streamed turn sends its headers only once the transcript is
ready: a turn that fails at the STT stage (silence, no speech recognised) is still a plain 400
rather than an error event behind a 200. Later failures are an ``error`` event that ends the
stream; a client that goes away cancels the turn, which stops the engines' worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import json
import logging
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from pipeline.audio import decode_audio, to_pcm16
from pipeline.errors import InvalidInput, StageError, VoxlineError
from pipeline.file_search import FileSearch, file_search_of
from pipeline.phrases import PhrasePolicy
from pipeline.settings import Settings
from pipeline.turn import ReplyAudio, ReplyText, TranscriptReady, TurnEvent, TurnResult, run_turn
from pipeline.types import AudioChunk, GenerationParams
from server import identity
from server.edge.quotas import require_quota
from server.errors import body_of, error_body
from server.kb import caller, grounder_for
from server.logging_setup import current_request_id
from server.state import AppState, release_of, state_of
from server.streaming import EventStream, cancel_on_disconnect, client_gone, sse
from server.turn_schemas import turn_json, turn_response
from store import UsageAmounts

log = logging.getLogger("voxline.server.turns")

router = APIRouter()

_END = None  # queued when the turn's task is done, after its last event


@router.post("/v1/turns", response_model=None)
async def create_turn(
    request: Request,
    file: Annotated[UploadFile, File(description="The spoken question (wav, flac, mp3, ogg...).")],
    voice: Annotated[str | None, Form(description="TTS voice (default from settings).")] = None,
    language: Annotated[
        str | None, Form(description="Spoken language code, or 'auto' to detect it.")
    ] = None,
    instructions: Annotated[
        str | None, Form(description="System prompt for this turn (default from settings).")
    ] = None,
    max_tokens: Annotated[int | None, Form(ge=1, description="Cap on reply tokens.")] = None,
    tier: Annotated[
        str | None,
        Form(description="Answer with this LLM tier (default: the router picks one per turn)."),
    ] = None,
    tools: Annotated[
        str | None,
        Form(
            description=(
                'A JSON list of OpenAI tools: [{"type": "file_search", "vector_store_ids":'
                ' ["vs_..."]}] grounds the answer in those vector stores (citations in the'
                " result)."
            )
        ),
    ] = None,
    stream: Annotated[
        bool,
        Form(
            description=(
                "Answer with SSE events as the turn runs: the transcript, then for each phrase"
                " of the reply one response.output_audio_transcript.delta (its text) followed by"
                " its response.output_audio.delta events, then response.done."
            )
        ),
    ] = False,
) -> Response | EventStream:
    """Transcribe the question, answer it and speak the answer.

    Raises:
        InvalidInput: a bad field, undecodable or oversized audio, silence (``no_speech``).
        StageError: a stage failed (5xx; once a stream has started, an ``error`` event).
    """
    live = release_of(request)  # this turn's release, held until its response is sent
    settings, engines = live.settings, live.engines
    state = state_of(request)
    # another key's stored voice is refused (and not listed) as on /v1/audio/speech; a typo
    # costs nothing here, where the TTS would see it only after STT and the LLM ran
    await state.voices.check_voice(engines, identity.current(), voice)
    router = engines.router
    if tier and router is None:
        raise InvalidInput("this server has one LLM: tier is not available", param="tier")
    if router is not None:
        router.check_pin(tier or None, param="tier")
    search = _file_search(tools)
    grounder = None
    if search is not None:
        owner = caller()
        ids, param = search.vector_store_ids, "tools[0].vector_store_ids"
        await asyncio.to_thread(state.kb.check_stores, ids, owner, param)
        grounder = grounder_for(state.kb, owner, settings.kb)  # the release's retrieval policy
    # upload limits are the server's (a release cannot set them)
    audio = await _decode(await file.read(), state.settings, engines.stt.sample_rate)
    # the key's audio quota, with the seconds this upload would add, before the engines run
    await require_quota(state_of(request).store, UsageAmounts(audio_seconds=audio.duration))
    turn = functools.partial(
        _accounted,
        state_of(request),
        live.name,
        stt=engines.stt,
        llm=engines.llm,
        tts=engines.tts,
        system_prompt=(instructions or "").strip() or settings.llm.system_prompt,
        params=GenerationParams(
            max_tokens=max_tokens or settings.llm.max_tokens,
            temperature=settings.llm.temperature,
            top_p=settings.llm.top_p,
        ),
        voice=voice or settings.tts.voice,
        language=_language(language, settings),
        phrase_policy=PhrasePolicy.from_settings(settings.reply),
        router=router,
        tier=tier or None,
        grounder=grounder,
        file_search=search,
    )
    if not stream:
        try:
            result = await cancel_on_disconnect(request, turn(audio))
        except ClientDisconnect:
            return client_gone()
        body = turn_response(result, release=live.name)
        return JSONResponse(body.model_dump(mode="json", exclude_none=True))
    queue: asyncio.Queue[TurnEvent | None] = asyncio.Queue()
    task = asyncio.create_task(turn(audio, on_event=queue.put_nowait))
    task.add_done_callback(lambda _: queue.put_nowait(_END))
    try:
        first = await cancel_on_disconnect(request, queue.get())
    except ClientDisconnect:
        await _stop(task)
        return client_gone()
    except BaseException:  # the request itself was cancelled: so is the turn
        await _stop(task)
        raise
    if first is _END:
        task.result()  # the turn failed before its transcript: raise its error as HTTP
        raise RuntimeError("the turn ended without a transcript")  # run_turn always sends one
    events = _events(first, queue, task, live.name)
    return EventStream(events, on_close=functools.partial(_stop, task))


async def _accounted(state: AppState, release: str, audio: AudioChunk, **turn: Any) -> TurnResult:
    """``run_turn`` with its trace, metrics and cost recorded; the cost goes into the result.
    A turn an engine failed counts against its release (the canary's watch reads it)."""
    request_id = current_request_id()
    try:
        with state.tracing.turn(request_id=request_id) as trace:
            result = await run_turn(audio, **turn)
            trace.record_result(result, audio_in_seconds=audio.duration)
    except StageError:
        state.releases.observe_turn(release, None, outcome="failed", fallback=False)
        raise
    state.releases.observe_turn(
        release, result.timings, outcome="completed", fallback=bool(result.fallbacks)
    )
    state.observe_route(result.route, "turn")
    if result.knowledge is not None:
        state.observe_knowledge(result.knowledge)
    cost = await state.accounting.settle(request_id or "-")
    return dataclasses.replace(result, cost_usd=round(cost, 8))


async def _stop(task: asyncio.Task[TurnResult]) -> None:
    """Cancel the turn unless it is over (which closes the stages and so stops their threads)."""
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _file_search(tools: str | None) -> FileSearch | None:
    """The ``file_search`` tool of the ``tools`` form field (a JSON list)."""
    if tools is None or not tools.strip():
        return None
    try:
        parsed = json.loads(tools)
    except ValueError as exc:
        raise InvalidInput("tools must be a JSON list", param="tools", code="invalid_json") from exc
    if isinstance(parsed, list) and any(
        isinstance(t, dict) and t.get("type") == "function" for t in parsed
    ):
        # a one-shot turn has no way to hand a call's output back: realtime and chat do
        raise InvalidInput(
            "a turn takes only file_search tools: call functions over /v1/realtime or "
            "/v1/chat/completions",
            param="tools",
            code="unsupported_value",
        )
    return file_search_of(parsed, param="tools")


def _language(language: str | None, settings: Settings) -> str | None:
    if not language:
        return settings.stt.language
    return None if language.strip().lower() == "auto" else language.strip()


async def _decode(data: bytes, settings: Settings, sample_rate: int) -> AudioChunk:
    # decoding (PyAV) is blocking work, and a long upload takes a while: not on the event loop
    return await asyncio.to_thread(
        decode_audio, data, sample_rate=sample_rate, limits=settings.audio
    )


async def _events(
    first: TurnEvent,
    queue: asyncio.Queue[TurnEvent | None],
    task: asyncio.Task[TurnResult],
    release: str,
) -> AsyncGenerator[bytes, None]:
    """The SSE body: the transcript, then each phrase's text and audio as it is spoken (the text
    of a phrase just before its first audio, as realtime responses do), then the result.

    The turn is stopped by ``EventStream``'s ``on_close`` if the stream ends early.
    """
    item: TurnEvent | None = first
    spoken = False  # whether reply text has been sent (the reply's leading space is not)
    while item is not None:
        if isinstance(item, TranscriptReady):
            yield _event(
                "conversation.item.input_audio_transcription.completed", transcript=item.text
            )
        elif isinstance(item, ReplyText):
            text = item.text if spoken else item.text.lstrip()  # one phrase per event
            if text:
                spoken = True
                yield _event("response.output_audio_transcript.delta", delta=text)
        elif isinstance(item, ReplyAudio):
            yield _audio_delta(item.chunk)
        item = await queue.get()
    try:
        result = task.result()
    except VoxlineError as exc:
        yield sse({"type": "error", **body_of(exc)}, event="error")
        return
    except Exception:  # a bug: the client gets a generic error, the log the traceback
        log.exception("turn failed")
        body = error_body("internal server error", type_="server_error")
        yield sse({"type": "error", **body}, event="error")
        return
    yield _event("response.output_audio_transcript.done", transcript=result.reply)
    yield _event(
        "response.output_audio.done",
        seconds=round(result.audio.duration, 3),
        sample_rate=result.audio.sample_rate,
    )
    yield _event("response.done", **turn_json(result), release=release)


def _event(kind: str, **fields: object) -> bytes:
    return sse({"type": kind, **fields}, event=kind)


def _audio_delta(chunk: AudioChunk) -> bytes:
    pcm = base64.b64encode(to_pcm16(chunk.samples).tobytes()).decode("ascii")
    return _event("response.output_audio.delta", delta=pcm, sample_rate=chunk.sample_rate)
