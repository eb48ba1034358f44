"""``/v1/jobs``: durable jobs for work longer than a request (docs/jobs.md).

``POST /v1/jobs`` (multipart: ``kind`` and ``file``, or ``input`` for speech) checks everything
it can before it accepts: the caller's pending jobs, the upload's size and, for audio, that it
decodes within the job limits (``VOXLINE_JOBS__MAX_BYTES`` / ``__MAX_SECONDS``), so a bad
upload is a 4xx at once, never a failed job later. The key's scope and quotas are those of the
work a job does (``server.edge.policy``): the edge needs the ``audio`` scope and refuses a key
whose quota is spent; a transcription's decoded seconds are checked against its audio quota
here, as ``/v1/audio/transcriptions`` does (429 ``insufficient_quota``). The input is stored in
the state store (transcription audio as 16 kHz PCM16, decoded once), the job is queued, and its
object comes back; the job runs on whichever worker claims it (:mod:`server.jobs.runner`).

Then ``GET /v1/jobs/{id}`` (the object: status, progress 0..1), ``GET /v1/jobs/{id}/events``
(SSE: the object at every change until it ends), ``GET /v1/jobs/{id}/result`` (a
transcription as OpenAI's JSON, or ``?format=text|srt|vtt|verbose_json``; speech as the audio
file; turns as JSONL), ``POST /v1/jobs/{id}/cancel``, ``DELETE /v1/jobs/{id}`` and
``GET /v1/jobs`` (the caller's jobs, newest first).

A job belongs to the API key that submitted it (:func:`owner`): other keys get 404 for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from pipeline.audio import decode_audio, to_pcm16
from pipeline.audio_stream import wav_stream_header
from pipeline.errors import EngineOverloaded, InvalidInput
from pipeline.settings import AudioLimits, Settings
from pipeline.types import Segment, Transcript
from server import identity
from server.audio_schemas import SpeechFormat, to_json, to_srt, to_vtt
from server.edge.quotas import require_quota
from server.errors import error_body
from server.jobs.kinds import INPUT_RATE, parse_turns, spoken_seconds
from server.jobs.records import TERMINAL, Job, JobKind, JobStatus
from server.state import AppState, state_of
from server.streaming import EventStream, sse
from store import NotFound, UsageAmounts

log = logging.getLogger("voxline.server.jobs")
router = APIRouter()

ResultFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


def owner() -> str | None:
    """The API key id of the caller (bound by the edge: ``server.identity``), or ``None`` when
    API keys are off."""
    who = identity.current()
    return None if who is None else who.key_id


def _too_many(exc: EngineOverloaded) -> JSONResponse:
    body = error_body(exc.message, type_="rate_limit_error", code="too_many_jobs")
    return JSONResponse(body, status_code=429, headers={"Retry-After": "30"})


def _not_ready(job: Job) -> JSONResponse:
    body = error_body(
        f"job {job.id} is {job.status}: its result exists once it succeeded",
        type_="invalid_request_error",
        code="job_not_ready",
    )
    return JSONResponse(body, status_code=409)


@router.post("/v1/jobs", response_model=None)
async def create_job(
    state: Annotated[AppState, Depends(state_of)],
    kind: Annotated[JobKind, Form(description="transcription, speech or turns.")],
    file: Annotated[
        UploadFile | None,
        File(description="Audio (transcription), text (speech) or JSONL (turns)."),
    ] = None,
    input: Annotated[str | None, Form(description="Speech: the text, instead of a file.")] = None,
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    voice: Annotated[str | None, Form()] = None,
    speed: Annotated[float, Form(ge=0.25, le=4.0)] = 1.0,
    response_format: Annotated[SpeechFormat, Form()] = "wav",
    instructions: Annotated[str | None, Form()] = None,
    max_tokens: Annotated[int | None, Form(ge=1)] = None,
    include_audio: Annotated[bool, Form()] = False,
) -> Response:
    """Accept a job (see the module docstring); answers the job object."""
    jobs = state.jobs
    who = owner()
    try:
        await asyncio.to_thread(jobs.queue.admit, who)
    except EngineOverloaded as exc:
        return _too_many(exc)
    settings = state.settings
    options: dict[str, Any]
    if kind == "transcription":
        code = _language(language, settings)  # a bad field costs no decode
        data = await _upload(file, "an audio file")
        audio = await asyncio.to_thread(
            decode_audio, data, sample_rate=INPUT_RATE, limits=_job_audio_limits(settings)
        )
        del data
        if audio.duration == 0:
            raise InvalidInput("the audio is empty", param="file", code="empty_audio")
        # the key's audio quota, with the seconds this job would add, before it is accepted
        await require_quota(state.store, UsageAmounts(audio_seconds=audio.duration))
        payload = await asyncio.to_thread(lambda: to_pcm16(audio.samples).tobytes())
        options = {
            "language": code,
            "prompt": prompt or None,
        }
        job = await asyncio.to_thread(
            jobs.queue.submit,
            kind,
            payload,
            content_type="audio/L16; rate=16000",
            owner=who,
            options=options,
            input_seconds=audio.duration,
        )
    elif kind == "speech":
        text = (
            input if input is not None else (await _upload(file, "text")).decode("utf-8", "replace")
        )
        await _check_voice(state, voice)
        _check_speech(state, text, voice)
        options = {
            "voice": voice or settings.tts.voice,
            "speed": speed,
            "response_format": response_format,
        }
        job = await asyncio.to_thread(
            jobs.queue.submit,
            kind,
            text.encode(),
            content_type="text/plain; charset=utf-8",
            owner=who,
            options=options,
        )
    else:
        data = await _upload(file, "a JSONL file of turns")
        try:
            turns = parse_turns(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"turns file: {exc}", param="file", code="invalid_jsonl") from exc
        if not turns or len(turns) > settings.jobs.max_turns:
            raise InvalidInput(
                f"a turns file has 1 to {settings.jobs.max_turns} turns; this one has {len(turns)}",
                param="file",
                code="too_many_turns" if turns else "empty_file",
            )
        await _check_voice(state, voice)
        # every line is checked now, so an accepted job cannot fail on its input later (and
        # lose the turns done before it), and spoken turns count against the audio quota
        seconds = await asyncio.to_thread(spoken_seconds, turns, settings.audio)
        await require_quota(state.store, UsageAmounts(audio_seconds=seconds))
        options = {
            "voice": voice or settings.tts.voice,
            "instructions": instructions,
            "max_tokens": max_tokens,
            "include_audio": include_audio,
        }
        job = await asyncio.to_thread(
            jobs.queue.submit,
            kind,
            data,
            content_type="application/jsonl",
            owner=who,
            options=options,
        )
    jobs.runner.wake()
    log.info("job %s (%s) accepted", job.id, kind)
    return JSONResponse(job.public())


def _job_audio_limits(settings: Settings) -> AudioLimits:
    return settings.audio.model_copy(
        update={"max_bytes": settings.jobs.max_bytes, "max_seconds": settings.jobs.max_seconds}
    )


async def _upload(file: UploadFile | None, what: str) -> bytes:
    if file is None:
        raise InvalidInput(f"this kind of job needs a file: {what}", param="file")
    data = await file.read()
    if not data:
        raise InvalidInput("the file is empty", param="file", code="empty_file")
    return data


def _language(language: str | None, settings: Settings) -> str | None:
    if not language:
        return settings.stt.language
    code = language.strip().lower()
    if code == "auto":
        return None
    if not (code.isascii() and code.isalpha() and 2 <= len(code) <= 3):
        raise InvalidInput(
            f"language {language!r} is not an ISO 639-1 code such as 'en'",
            param="language",
            code="unsupported_language",
        )
    return code


async def _check_voice(state: AppState, voice: str | None) -> None:
    """An uploaded voice is its owner's (``server.voices``): another key's is unknown here."""
    if state.engines is not None:
        await state.voices.check_voice(state.engines, identity.current(), voice)


def _check_speech(state: AppState, text: str, voice: str | None) -> None:
    limit = state.settings.jobs.max_text_chars
    if not text.strip():
        raise InvalidInput("the text is empty", param="input", code="empty_input")
    if len(text) > limit:
        raise InvalidInput(
            f"the text is {len(text)} characters; the limit is {limit}",
            param="input",
            code="input_too_long",
        )
    engines = state.engines
    voices = engines.tts.capabilities.voices if engines is not None else ()
    if voice and voices and voice not in voices:
        raise InvalidInput(f"unknown voice {voice!r}", param="voice", code="unknown_voice")


async def _job(state: AppState, job_id: str) -> Job:
    job = await asyncio.to_thread(state.jobs.queue.get, job_id, owner=owner())
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return job


@router.get("/v1/jobs")
async def list_jobs(
    state: Annotated[AppState, Depends(state_of)],
    status: Annotated[JobStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """The caller's jobs, newest first."""
    found = await asyncio.to_thread(
        state.jobs.queue.of_owner, owner=owner(), status=status, limit=limit + 1
    )
    return {
        "object": "list",
        "data": [j.public() for j in found[:limit]],
        "has_more": len(found) > limit,
    }


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, state: Annotated[AppState, Depends(state_of)]) -> dict[str, Any]:
    """The job object."""
    return (await _job(state, job_id)).public()


@router.post("/v1/jobs/{job_id}/cancel", response_model=None)
async def cancel_job(job_id: str, state: Annotated[AppState, Depends(state_of)]) -> Response:
    """Cancel a queued or running job (its worker stops within a poll interval)."""
    job = await _job(state, job_id)
    cancelled = await asyncio.to_thread(state.jobs.queue.cancel, job.id)
    if cancelled is None:
        body = error_body(
            f"job {job.id} has already ended", type_="invalid_request_error", code="job_ended"
        )
        return JSONResponse(body, status_code=409)
    return JSONResponse(cancelled.public())


@router.delete("/v1/jobs/{job_id}")
async def delete_job(job_id: str, state: Annotated[AppState, Depends(state_of)]) -> dict[str, Any]:
    """Forget a job and its data (a running one is cancelled first)."""
    job = await _job(state, job_id)
    await asyncio.to_thread(state.jobs.queue.cancel, job.id)
    await asyncio.to_thread(state.jobs.queue.delete, job.id)
    return {"id": job.id, "object": "job.deleted", "deleted": True}


@router.get("/v1/jobs/{job_id}/events", response_model=None)
async def job_events(job_id: str, state: Annotated[AppState, Depends(state_of)]) -> Response:
    """SSE: ``job.updated`` with the job object at every change, then ``job.succeeded``,
    ``job.failed`` or ``job.cancelled``, and the stream ends."""
    job = await _job(state, job_id)
    return EventStream(_events(state, job))


async def _events(state: AppState, job: Job) -> AsyncGenerator[bytes, None]:
    interval = min(0.5, state.settings.jobs.poll_interval_s)
    seen: int | None = None
    current: Job | None = job
    while current is not None:
        if current.version != seen:
            seen = current.version
            done = current.status in TERMINAL
            name = f"job.{current.status}" if done else "job.updated"
            yield sse({"type": name, "job": current.public()}, event=name)
            if done:
                return
        await asyncio.sleep(interval)  # the store is shared by replicas: polled, not notified
        current = await asyncio.to_thread(state.jobs.queue.get, job.id, any_owner=True)


@router.get("/v1/jobs/{job_id}/result", response_model=None)
async def job_result(
    job_id: str,
    state: Annotated[AppState, Depends(state_of)],
    format: Annotated[ResultFormat | None, Query()] = None,
    stream: Annotated[bool, Query()] = False,
) -> Response:
    """The result of a job that succeeded (409 before). A speech job with ``stream=true``: its
    audio as a wav stream while it is being made, each chunk as soon as it is done."""
    job = await _job(state, job_id)
    if stream and job.kind == "speech" and job.status in ("queued", "running", "succeeded"):
        rate = state.engines.tts.capabilities.sample_rate if state.engines else None
        return StreamingResponse(_speech_as_made(state, job, rate), media_type="audio/wav")
    if job.status != "succeeded" or job.result_blob is None:
        return _not_ready(job)
    blobs = state.store.blobs
    if job.kind != "transcription":
        return StreamingResponse(
            _blob(state, job.result_blob), media_type=job.result_type or "application/octet-stream"
        )
    verbose = json.loads(await asyncio.to_thread(blobs.read, job.result_blob))
    fmt = format or "json"
    if fmt == "verbose_json":
        return JSONResponse(verbose)
    transcript = _transcript(verbose)
    if fmt == "text":
        return PlainTextResponse(transcript.text + "\n")
    if fmt == "srt":
        return PlainTextResponse(to_srt(transcript))
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(transcript), media_type="text/vtt")
    return JSONResponse(to_json(transcript))


def _transcript(verbose: dict[str, Any]) -> Transcript:
    segments = tuple(Segment(s["text"], s["start"], s["end"]) for s in verbose["segments"])
    return Transcript(
        verbose["text"], True, verbose.get("language"), segments, float(verbose["duration"])
    )


async def _blob(state: AppState, blob_id: str) -> AsyncIterator[bytes]:
    chunks = state.store.blobs.chunks(blob_id)
    while (piece := await asyncio.to_thread(next, chunks, None)) is not None:
        yield piece


async def _speech_as_made(state: AppState, job: Job, rate: int | None) -> AsyncIterator[bytes]:
    """A speech job's chunks in order as 16-bit wav (unknown length), each sent once it is
    recorded; ends when the last one is sent, or when the job failed or was cancelled."""
    queue = state.jobs.queue
    interval = min(0.5, state.settings.jobs.poll_interval_s)
    sent = 0
    header = rate is not None
    if header:
        yield wav_stream_header(rate or 0)
    while True:
        current = await asyncio.to_thread(queue.get, job.id, any_owner=True)
        if current is None:
            return
        results = await asyncio.to_thread(queue.chunk_results, job.id)
        while sent in results:
            chunk = results[sent]
            if not header:  # engines were not ready when asked: the chunk knows its rate
                header = True
                yield wav_stream_header(int(chunk["sample_rate"]))
            async for piece in _blob(state, chunk["blob"]):
                yield piece
            sent += 1
        if current.chunks_total is not None and sent >= current.chunks_total:
            return
        if current.status in ("failed", "cancelled"):
            return
        await asyncio.sleep(interval)
