"""The OpenAPI document, made to say what the server does.

FastAPI's generated document promises a 422 ``HTTPValidationError`` on every operation, while
every invalid request gets a 400 in OpenAI's error shape (``server.errors``); it knows nothing
of the edge (401, 403, 429), of body limits (413), of engines that are loading (503) or of the
audio and event-stream bodies some routes answer with. This module rewrites the generated
document once: the error responses each operation can really give, all with one ``Error``
schema, the media types of each 200, ``/readyz``'s 503, and bearer authentication on the
``/v1`` routes. ``tests/server/test_openapi.py`` holds the server to it with schemathesis.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from server.audio_schemas import SPEECH_MEDIA_TYPES
from server.edge.policy import rule_for

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_WHY = {
    "400": "Invalid request (a field, the audio, the Host header).",
    "401": "No API key, or an unknown, revoked or expired one.",
    "403": "A key without the route's scope, a foreign Origin, or a remote client while no key"
    " exists.",
    "404": "Not found.",
    "413": "The request body (or the audio) is too large.",
    "415": "An audio format this server cannot decode.",
    "429": "A rate limit (rate_limit_exceeded) or a quota (insufficient_quota) of the key;"
    " Retry-After says when to try again.",
    "503": "The engines are loading or unavailable, or the state store is; Retry-After.",
    "504": "An engine timed out.",
}

# events are JSON objects, and a chat stream ends with "[DONE]": any event data
_STREAM: dict[str, Any] = {"text/event-stream": {"schema": {}}}
_TEXT = {"schema": {"type": "string"}}
_CONTENT: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/audio/speech"): {
        **{
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in sorted(set(SPEECH_MEDIA_TYPES.values()))
        },
        **_STREAM,
    },
    ("post", "/v1/audio/transcriptions"): {
        "application/json": {"schema": {"type": "object"}},
        "text/plain": _TEXT,
        "text/vtt": _TEXT,
        **_STREAM,
    },
    ("post", "/v1/chat/completions"): {
        "application/json": {"schema": {"type": "object"}},
        **_STREAM,
    },
    ("post", "/v1/turns"): {"application/json": {"schema": {"type": "object"}}, **_STREAM},
    ("get", "/v1/files/{file_id}/content"): {
        media: {"schema": {"type": "string", "format": "binary"}}
        for media in ("application/pdf", "text/html", "text/markdown", "text/plain")
    },
}


def _errors(path: str, method: str, op: dict[str, Any]) -> list[str]:
    """The error statuses ``method path`` can answer with."""
    rule = rule_for(path, method)
    codes = ["400", "403"]  # the edge's Host and Origin checks apply to every route
    if not rule.open:
        codes += ["401", "429", "503"]  # a key, its limits; the store behind them
    if method in ("post", "put", "patch"):
        codes.append("413")
    if rule.spends or path.startswith("/v1/audio/voices"):
        codes += ["503", "504"]  # the engines
    if rule.upload:
        codes.append("415")
    if "{" in path or path.startswith("/v1/vector_stores"):
        codes.append("404")  # an id that does not exist (or is another key's)
    if path == "/readyz":
        codes.append("503")
    return sorted(set(codes))


def _error_response(status: str) -> dict[str, Any]:
    return {
        "description": _WHY[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, rewritten as the module docstring says."""
    schema = get_openapi(
        title=app.title, version=app.version, routes=app.routes, description=app.description
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            responses: dict[str, Any] = op.setdefault("responses", {})
            responses.pop("422", None)
            for status in _errors(path, method, op):
                responses[status] = _error_response(status)
            if (content := _CONTENT.get((method, path))) is not None:
                responses.setdefault("200", {"description": "OK"})["content"] = content
            if path == "/readyz":
                responses["503"] = {
                    "description": "Not ready: the engines are loading, or a stage has no"
                    " usable backend (the body says which).",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            if not rule_for(path, method).open:
                op["security"] = [{"bearer": []}]
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve ``document(app)`` at ``/openapi.json`` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
