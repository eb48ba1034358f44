"""``POST /v1/realtime/client_secrets``: short-lived secrets for browsers (OpenAI's shape).

A browser cannot put an ``Authorization`` header on a WebSocket, and an API key must never
reach one. So a backend holding a key mints a client secret here (OpenAI's
``client.realtime.client_secrets.create``), hands its ``value`` to the page, and the page
connects with the subprotocol ``openai-insecure-api-key.<value>``. The secret acts for the key
(its usage, limits and sessions are the key's) with the ``realtime`` scope only, until it
expires (``expires_after.seconds``, 10 s to 2 h, default ``edge.client_secret_ttl_s``); it may
open several sessions until then, and a session outlives it. Revoking the key revokes its
secrets. A ``session`` given here is validated now (400 before anything is stored) and is the
configuration of every session opened with the secret.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import InvalidInput
from pipeline.session_config import SessionConfig, TurnDetection
from pipeline.settings import Settings
from server import identity
from server.chat_schemas import JsonInt
from server.realtime_commands import UpdateSession
from server.realtime_events import ServerEvents
from server.realtime_protocol import BadClientEvent, ClientEventParser
from server.state import AppState, state_of

router = APIRouter()

SCOPES = ("realtime",)
"""What a client secret may do: open realtime sessions (as OpenAI's)."""


class ExpiresAfter(BaseModel):
    """When the secret expires, counted from its creation."""

    model_config = ConfigDict(extra="forbid", strict=True)

    anchor: Literal["created_at"] = "created_at"
    seconds: JsonInt = Field(default=600, ge=10, le=7200)


class ClientSecretRequest(BaseModel):
    """OpenAI's ``ClientSecretCreateParams``."""

    model_config = ConfigDict(strict=True)

    expires_after: ExpiresAfter | None = None
    session: dict[str, Any] | None = Field(
        default=None,
        description="A realtime session configuration (as in session.update), applied to every"
        " session opened with the secret.",
    )


class ClientSecret(BaseModel):
    """OpenAI's ``ClientSecretCreateResponse``."""

    value: str = Field(description="The secret: a browser sends it as a WebSocket subprotocol.")
    expires_at: int = Field(description="When it expires, in Unix seconds.")
    session: dict[str, Any] = Field(description="The session configuration it opens.")


def session_config(
    settings: Settings, session: dict[str, Any] | None, voices: tuple[str, ...] = ()
) -> SessionConfig:
    """A new session's configuration: the server's defaults with ``session`` applied the way a
    first ``session.update`` would be.

    Raises:
        InvalidInput: ``session`` is not one this server serves (the message names the field).
    """
    config = SessionConfig.from_settings(settings)
    if not session:
        return config
    parser = ClientEventParser(max_append_bytes=1, voices=lambda: voices)
    try:
        _, command = parser.parse(json.dumps({"type": "session.update", "session": session}))
    except BadClientEvent as exc:
        raise exc.error from None
    assert isinstance(command, UpdateSession)
    changes = command.changes(config, TurnDetection.from_settings(settings.session))
    try:
        config = dataclasses.replace(config, **changes)  # type: ignore[arg-type]
    except TypeError as exc:  # a field the session does not have: a bug of the parser
        raise InvalidInput(f"unknown session field: {exc}", param="session") from exc
    config.validate()
    return config


@router.post("/v1/realtime/client_secrets", status_code=200)
async def create_client_secret(
    body: ClientSecretRequest, state: Annotated[AppState, Depends(state_of)]
) -> ClientSecret:
    """Mint a client secret for the calling API key (scope ``realtime``).

    Raises:
        InvalidInput: a session configuration this server does not serve (400).
    """
    engines = state.engines
    voices = (
        state.voices.visible(engines.tts.capabilities.voices, identity.current())
        if engines is not None
        else ()
    )
    config = session_config(state.active_settings, body.session, voices)  # what sessions get
    ttl = (
        body.expires_after.seconds
        if body.expires_after
        else state.settings.edge.client_secret_ttl_s
    )
    model = str((body.session or {}).get("model") or "voxline")
    who = identity.current()
    if who is None:  # auth is off: nothing to act for, and nothing a browser would need
        raise InvalidInput(
            "client secrets act for an API key, and this server has none yet: create one with"
            " `voxline keys create NAME`",
            code="no_api_keys",
        )
    minted = await asyncio.to_thread(
        state.store.client_secrets.mint,
        who.key_id,
        ttl,
        scopes=[s for s in SCOPES if s in who.scopes],
        session=body.session,
    )
    stt = engines.stt.name if engines is not None else state.settings.stt.model
    shown = ServerEvents(
        model=model[:256],
        config=config,
        transcription_model=stt,
        release=state.releases.active_name,
    ).session()
    expires_at = int(minted.grant.expires_at)
    shown["expires_at"] = expires_at
    return ClientSecret(value=minted.secret, expires_at=expires_at, session=shown)
