"""The OpenAI-compatible audio routes: ``/v1/audio/transcriptions`` and ``/v1/audio/speech``.

Stock OpenAI clients call these unchanged, so the fields, defaults, event names and error shape
are OpenAI's. How the routes behave, and why:

- Everything a request says is checked before any engine work: form and JSON fields by FastAPI
  and ``server.audio_schemas``, the language against what the STT declares, the audio by
  decoding it under the configured limits (413 too large, 400 garbage), the voice, input and
  speed by the stage's own validation, which runs before its engine does.
- The first output of the engine is awaited before the response starts. An error before any
  output (an engine that is down, text with nothing to speak) is then an HTTP status in the
  OpenAI error shape. Once bytes have left, a failure can only end the stream: an SSE error
  event (``{"error": {...}}``, which the SDK raises as ``APIError``), or, for a raw audio body,
  an aborted response, so no client mistakes a truncated file for a whole one.
- Speech streams as the TTS yields phrases: each phrase is encoded by one ``StreamEncoder``
  (one container for the whole answer) and sent at once. Every format is 24 kHz mono 16-bit,
  OpenAI's output rate (``pcm`` is exactly OpenAI's: raw, little-endian, 24 kHz); opus is
  48 kHz inside its ogg container because libopus needs it. A streamed wav's header says
  "unknown length" (``0xFFFFFFFF``), as OpenAI's does.
- Long speech is asked of the TTS engine a few sentences at a time (``_phrases``), as a realtime
  reply asks phrase by phrase: the request then holds the engine for a fraction of a second at
  a time, and the phrases of realtime replies waiting for it go in between
  (``pipeline.scheduler``), instead of waiting for the whole request (measured: a 25-sentence
  request held Piper for over 10 s, and a realtime reply waiting behind it was refused).
- A client that goes away cancels the response body (Starlette listens for the disconnect);
  closing the TTS generator sets its worker's stop event, so synthesis ends after the phrase in
  progress. Encoding runs in a thread (libmp3lame takes ~40 ms per 3 s phrase on this CPU,
  too long to hold the event loop that also serves realtime sessions).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from models.registry import Engines
from pipeline.audio import decode_audio
from pipeline.audio_stream import StreamEncoder
from pipeline.errors import InvalidInput, VoxlineError
from pipeline.phrases import PhraseChunker, PhrasePolicy
from pipeline.stages import STT, TTS
from pipeline.types import AudioChunk, Transcript
from server import identity
from server.accounting import metered
from server.audio_schemas import (
    SPEECH_MEDIA_TYPES,
    SpeechRequest,
    TranscriptionFormat,
    to_json,
    to_srt,
    to_verbose_json,
    to_vtt,
)
from server.edge.quotas import require_quota
from server.errors import body_of
from server.logging_setup import current_request_id
from server.state import AppState, engines_of, state_of
from server.streaming import cancel_on_disconnect, client_gone
from store import UsageAmounts

log = logging.getLogger("voxline.server.audio")
router = APIRouter()

SPEECH_SAMPLE_RATE = 24_000
"""The rate of every speech format (OpenAI's; opus is resampled to 48 kHz inside its ogg)."""

_STREAMABLE_FORMATS = ("json", "text")  # with stream=true OpenAI sends transcript.text events
# Speech is asked of the engine in pieces of whole sentences up to this length: ~10 s of audio,
# a fraction of a second of Piper on 2 cores, the longest a realtime phrase waits behind it.
_CALL_CHARS = 200
_SENTENCES = PhrasePolicy(first_min_words=10_000, min_words=10_000, max_chars=_CALL_CHARS)


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


async def _release(chunks: AsyncGenerator[Any, None], encoder: StreamEncoder | None) -> None:
    """Release what a response holds, whether its body ran, finished or was cancelled: the body
    iterator never starts when the client left before the response did."""
    if encoder is not None:
        encoder.close()
    await chunks.aclose()


# ------------------------------------------------------------------------------- transcriptions


def _check_language(raw: str | None, stt: STT) -> str | None:
    """The language code to ask for, ``None`` to detect it; refused when the STT cannot."""
    if raw is None or raw.strip().lower() in ("", "auto"):
        return None
    code = raw.strip().lower()
    if not (code.isascii() and code.isalpha() and 2 <= len(code) <= 3):
        raise InvalidInput(
            f"language {raw!r} is not an ISO 639-1 code such as 'en'",
            param="language",
            code="unsupported_language",
        )
    known = stt.capabilities.languages
    if known and code not in known:
        shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        raise InvalidInput(
            f"language {code!r} is not supported by the STT model; supported: {shown}",
            param="language",
            code="unsupported_language",
        )
    return code


def _check_granularities(values: list[str] | None) -> None:
    for value in values or ():
        if value == "word":
            # The STT contract (Transcript/Segment) carries no word timings yet.
            raise InvalidInput(
                "timestamp_granularities 'word' is not supported; use 'segment'",
                param="timestamp_granularities",
                code="unsupported_value",
            )
        if value != "segment":
            raise InvalidInput(
                f"unknown timestamp granularity {value!r}; use 'segment'",
                param="timestamp_granularities",
                code="invalid_value",
            )


@router.post("/v1/audio/transcriptions", response_model=None)
async def create_transcription(
    request: Request,
    state: Annotated[AppState, Depends(state_of)],
    engines: Annotated[Engines, Depends(engines_of)],
    file: Annotated[UploadFile, File(description="The audio file (any format FFmpeg reads).")],
    model: Annotated[str, Form(description="Any name: the server's STT engine answers.")],
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    temperature: Annotated[
        float, Form(ge=0.0, le=1.0, description="Accepted; the STT contract has no sampling.")
    ] = 0.0,
    response_format: Annotated[TranscriptionFormat, Form()] = "json",
    timestamp_granularities: Annotated[
        list[str] | None, Form(alias="timestamp_granularities[]")
    ] = None,
    stream: Annotated[bool, Form()] = False,
) -> Response:
    """Transcribe an uploaded audio file (OpenAI's ``audio.transcriptions.create``)."""
    stt = engines.stt
    code = _check_language(language, stt)
    _check_granularities(timestamp_granularities)
    if stream and response_format not in _STREAMABLE_FORMATS:
        raise InvalidInput(
            "stream=true sends transcript.text events: use response_format json or text",
            param="stream",
            code="unsupported_value",
        )
    data = await file.read()
    # Decoding a long file is seconds of CPU: off the loop, like any blocking work.
    audio = await asyncio.to_thread(
        decode_audio, data, sample_rate=stt.sample_rate, limits=state.settings.audio
    )
    del data  # up to max_bytes of upload: not kept alive while the model works
    # the key's audio quota, with the seconds this upload would add, before the engine runs
    await require_quota(state.store, UsageAmounts(audio_seconds=audio.duration))

    async def charge(_: list[Transcript], __: float) -> None:
        await state.accounting.settle(current_request_id() or "-")

    transcripts = metered(stt.transcribe(audio, language=code, prompt=prompt or None), charge)
    if stream:
        try:
            first = await anext(transcripts)
        except BaseException:
            await transcripts.aclose()
            raise
        return StreamingResponse(
            _transcript_events(first, transcripts),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
            background=BackgroundTask(_release, transcripts, None),
        )
    try:  # a client that gave up stops the engine (the body is read: the next message says so)
        final = await cancel_on_disconnect(request, _final(transcripts))
    except ClientDisconnect:
        return client_gone()
    if response_format == "text":
        return PlainTextResponse(final.text + "\n")
    if response_format == "srt":
        return PlainTextResponse(to_srt(final))
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(final), media_type="text/vtt")
    if response_format == "verbose_json":
        return JSONResponse(to_verbose_json(final))
    return JSONResponse(to_json(final))


async def _final(transcripts: AsyncGenerator[Transcript, None]) -> Transcript:
    async with contextlib.aclosing(transcripts):
        async for transcript in transcripts:
            if transcript.final:
                return transcript
    raise AssertionError("the STT contract promises a final transcript")


async def _transcript_events(
    first: Transcript, rest: AsyncGenerator[Transcript, None]
) -> AsyncIterator[bytes]:
    """``transcript.text.delta`` for each growth of the text, then ``transcript.text.done``."""
    sent = ""
    transcript: Transcript | None = first
    async with contextlib.aclosing(rest):
        try:
            while transcript is not None:
                # Partials carry the text so far. A revision that is not an extension cannot be
                # sent as a delta; the done event carries the authoritative text anyway.
                text = transcript.text
                if text.startswith(sent) and len(text) > len(sent):
                    delta, sent = text[len(sent) :], text
                    yield _sse({"type": "transcript.text.delta", "delta": delta, "logprobs": None})
                if transcript.final:
                    yield _sse({"type": "transcript.text.done", "text": text, "logprobs": None})
                    return
                transcript = await anext(rest, None)
        except VoxlineError as exc:
            log.warning("transcription stream failed: %s", exc)
            yield _sse(body_of(exc))


# ------------------------------------------------------------------------------------- speech


@router.post("/v1/audio/speech", response_model=None)
async def create_speech(
    request: SpeechRequest,
    engines: Annotated[Engines, Depends(engines_of)],
    state: Annotated[AppState, Depends(state_of)],
) -> Response:
    """Speak ``input`` (OpenAI's ``audio.speech.create``), streamed as phrases are synthesized."""
    # Which voices this caller may name (uploaded ones are their owner's) is the voice service's
    # to say; the stage validates input, voice, speed and language before its engine runs.
    await state.voices.check_voice(engines, identity.current(), request.voice_name)
    encoder = StreamEncoder(request.response_format, sample_rate=SPEECH_SAMPLE_RATE)
    tts = engines.tts

    async def charge(_: list[AudioChunk], __: float) -> None:
        await state.accounting.settle(current_request_id() or "-")

    # The stage validates input, voice and speed (the first phrase's) before its engine runs.
    spoken = _spoken(tts, request.input, request.voice_name, request.speed, request.language)
    chunks = metered(spoken, charge)
    try:
        first = await anext(chunks, None)
    except BaseException:
        await _release(chunks, encoder)
        raise
    encoded = _encoded(first, chunks, encoder)
    cleanup = BackgroundTask(_release, chunks, encoder)
    if request.stream_format == "sse":
        return StreamingResponse(
            _speech_events(encoded, len(request.input), encoder),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
            background=cleanup,
        )
    return StreamingResponse(
        _audio_body(encoded),
        media_type=SPEECH_MEDIA_TYPES[request.response_format],
        background=cleanup,
    )


async def _spoken(
    tts: TTS, text: str, voice: str | None, speed: float, language: str | None
) -> AsyncGenerator[AudioChunk, None]:
    """``text`` spoken a piece per engine call (see the module docstring)."""
    phrases = [p for p in _phrases(text) if any(c.isalnum() for c in p)] or [text]
    for phrase in phrases:
        audio = tts.synthesize(phrase, voice, speed=speed, language=language)
        async with contextlib.aclosing(audio):
            async for chunk in audio:
                yield chunk


def _phrases(text: str) -> list[str]:
    """``text`` in pieces of whole sentences of at most ``_CALL_CHARS`` (a longer sentence is
    cut at its last space that fits): what one engine call speaks."""
    if len(text) <= _CALL_CHARS:
        return [text]
    chunker = PhraseChunker(_SENTENCES)
    pieces: list[str] = []
    for sentence in [*chunker.feed(text), *chunker.flush()]:
        if pieces and len(pieces[-1]) + 1 + len(sentence) <= _CALL_CHARS:
            pieces[-1] += " " + sentence
        else:
            pieces.append(sentence)
    return pieces


async def _encoded(
    first: AudioChunk | None, chunks: AsyncGenerator[AudioChunk, None], encoder: StreamEncoder
) -> AsyncGenerator[bytes, None]:
    """The file's bytes as each chunk is synthesized and encoded (some calls yield ``b""``)."""
    try:
        if first is not None:
            yield await asyncio.to_thread(encoder.encode, first)
        async for chunk in chunks:
            yield await asyncio.to_thread(encoder.encode, chunk)
        yield await asyncio.to_thread(encoder.finish)
    finally:
        await _release(chunks, encoder)


async def _audio_body(encoded: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(encoded):
        try:
            async for data in encoded:
                if data:
                    yield data
        except VoxlineError as exc:
            # The status line has gone: aborting the body is how an audio stream says "failed".
            log.warning("speech stream failed after it started: %s", exc)
            raise


async def _speech_events(
    encoded: AsyncGenerator[bytes, None], input_chars: int, encoder: StreamEncoder
) -> AsyncIterator[bytes]:
    """``speech.audio.delta`` events (base64 of the format's bytes), then ``speech.audio.done``."""
    async with contextlib.aclosing(encoded):
        try:
            async for data in encoded:
                if data:
                    audio = base64.b64encode(data).decode("ascii")
                    yield _sse({"type": "speech.audio.delta", "audio": audio})
        except VoxlineError as exc:
            log.warning("speech stream failed after it started: %s", exc)
            yield _sse(body_of(exc))
            return
    # Local engines have no tokenizer to bill by; the voxline object says what was done instead.
    usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    extra = {"input_characters": input_chars, "audio_seconds": round(encoder.seconds, 3)}
    yield _sse({"type": "speech.audio.done", "usage": usage, "voxline": extra})
