"""Voices: ``GET /v1/audio/voices`` (what ``voice`` may name) and uploaded GPT-SoVITS voices.

| route (scope) | what |
|---|---|
| ``GET /v1/audio/voices`` (any key) | the TTS's own voices, then the caller's uploaded ones |
| ``POST /v1/audio/voices`` (``audio``) | multipart ``file`` (3-10 s), ``transcript``, |
| | ``language``, optional ``name``: a new voice |
| ``GET /v1/audio/voices/{voice_id}`` (``audio``) | one uploaded voice |
| ``DELETE /v1/audio/voices/{voice_id}`` (``audio``) | delete it: speaking with it is a 400 |

The voice id (``voice_...``) is a ``voice`` for ``/v1/audio/speech`` and realtime sessions. The
rules (validation order, ownership, the store) are ``server.voices``'s; this module is HTTP.
A server whose TTS has no GPT-SoVITS backend answers an upload with 400 ``voices_unsupported``:
the request cannot succeed on this server whatever it is retried with (a 5xx would be retried by
OpenAI's SDKs).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import JSONResponse

from models.registry import Engines
from pipeline.errors import AudioDecodeError
from server import identity
from server.errors import error_body
from server.releases import LiveRelease
from server.state import AppState, engines_of, release_of, state_of
from server.voices import is_voice_id
from store import NotFound

router = APIRouter()

_READ_BYTES = 1 << 16


def _not_found(exc: NotFound) -> JSONResponse:
    body = error_body(str(exc), type_="invalid_request_error", param="voice_id", code="not_found")
    return JSONResponse(body, status_code=404)


async def _read(file: UploadFile, limit: int) -> bytes:
    """The upload's bytes; refused (413) as soon as it passes ``limit``."""
    data = bytearray()
    while piece := await file.read(_READ_BYTES):
        data += piece
        if len(data) > limit:
            raise AudioDecodeError(
                f"the clip is larger than {limit} bytes (voices.max_bytes)",
                param="file",
                code="audio_too_large",
            )
    return bytes(data)


@router.get("/v1/audio/voices")
async def list_voices(
    live: Annotated[LiveRelease, Depends(release_of)],
    state: Annotated[AppState, Depends(state_of)],
) -> dict[str, Any]:
    """The voices ``voice`` may name, in OpenAI's list shape, and the default one: the TTS's
    own (the serving release's), then the uploaded voices the caller owns (with details)."""
    who = identity.current()
    own = [v for v in live.engines.tts.capabilities.voices if not is_voice_id(v)]
    uploaded = await state.voices.listed(who)
    default = live.settings.tts.voice or (own[0] if own else None)
    return {
        "object": "list",
        "default": default,
        "data": [{"id": voice, "object": "voice"} for voice in own]
        + [voice.to_json() for voice in uploaded],
    }


@router.post("/v1/audio/voices")
async def create_voice(
    engines: Annotated[Engines, Depends(engines_of)],
    state: Annotated[AppState, Depends(state_of)],
    file: Annotated[
        UploadFile, File(description="The reference clip: 3-10 s, any format FFmpeg reads.")
    ],
    transcript: Annotated[str, Form(description="What the clip says.", max_length=10_000)],
    language: Annotated[
        str, Form(description="The clip's language (en, zh, ja, ko, yue, auto...).", max_length=32)
    ],
    name: Annotated[str | None, Form(description="A label for the voice.", max_length=256)] = None,
) -> dict[str, Any]:
    """Add a voice from a reference clip (GPT-SoVITS); its ``id`` is a ``voice`` from now on."""
    clip = await _read(file, state.settings.voices.max_bytes)
    voice = await state.voices.create(
        engines,
        identity.current(),
        clip,
        transcript=transcript,
        language=language,
        name=name or file.filename or "",
        content_type=file.content_type or "application/octet-stream",
    )
    return voice.to_json()


@router.get("/v1/audio/voices/{voice_id}", response_model=None)
async def get_voice(
    voice_id: str, state: Annotated[AppState, Depends(state_of)]
) -> dict[str, Any] | JSONResponse:
    """One uploaded voice the caller owns."""
    try:
        voice = await state.voices.get(identity.current(), voice_id)
    except NotFound as exc:
        return _not_found(exc)
    return voice.to_json()


@router.delete("/v1/audio/voices/{voice_id}", response_model=None)
async def delete_voice(
    voice_id: str, state: Annotated[AppState, Depends(state_of)]
) -> dict[str, Any] | JSONResponse:
    """Delete an uploaded voice the caller owns (requests already speaking in it finish)."""
    try:
        await state.voices.delete(state.engines, identity.current(), voice_id)
    except NotFound as exc:
        return _not_found(exc)
    return {"id": voice_id, "object": "voice.deleted", "deleted": True}
