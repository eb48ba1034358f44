"""One mapping from the error tree to HTTP, in the OpenAI error shape.

``{"error": {"message", "type", "param", "code"}}``: the shape OpenAI clients already parse.
Client mistakes are 4xx and never 500; engine failures are 5xx with the stage and backend in
the code so an operator can tell which engine failed. We never branch on message text.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from pipeline.errors import (
    AudioDecodeError,
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    InvalidInput,
    InvalidToolCall,
    ModelLoadError,
    StageError,
    VoxlineError,
)
from store.errors import Conflict, NotFound, StoreUnavailable

_AUDIO_STATUS = {"audio_too_large": 413, "unsupported_format": 415}
_INPUT_STATUS = {"request_too_large": 413, "file_too_large": 413}
_HTTP_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limit_exceeded",
}
"""Named codes for the HTTP errors Starlette raises itself (never a bare ``"413"``)."""


def status_of(exc: VoxlineError) -> int:
    """The HTTP status for an error of the tree."""
    if isinstance(exc, AudioDecodeError):
        return _AUDIO_STATUS.get(exc.code or "", 400)
    if isinstance(exc, InvalidInput):
        return _INPUT_STATUS.get(exc.code or "", 400)
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, EngineTimeout):
        return 504
    if isinstance(exc, InvalidToolCall):
        return 502  # the model's output broke the tool's schema: a bad answer from upstream
    if isinstance(exc, StoreUnavailable):
        return 503
    if isinstance(exc, EngineOverloaded | EngineUnavailable | ModelLoadError):
        return 503
    return 500


def error_body(
    message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def body_of(exc: VoxlineError) -> dict[str, Any]:
    """The OpenAI error body for an error of the tree."""
    if isinstance(exc, InvalidInput):
        return error_body(
            exc.message, type_="invalid_request_error", param=exc.param, code=exc.code
        )
    if isinstance(exc, StageError):
        return error_body(
            exc.message, type_="server_error", code=f"{exc.stage}_{type(exc).__name__}"
        )
    if isinstance(exc, NotFound | Conflict):
        code = "not_found" if isinstance(exc, NotFound) else "conflict"
        return error_body(str(exc), type_="invalid_request_error", code=code)
    return error_body(str(exc), type_="server_error")


def error_response(exc: VoxlineError) -> JSONResponse:
    """A JSON response for an error of the tree (with Retry-After when overloaded)."""
    status = status_of(exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(body_of(exc), status_code=status, headers=headers)


def _allowed(request: Request) -> str:
    """Every method the request's path serves: Starlette's 405 names only the first route
    that matched the path, and a path may have one route per method (GET and POST)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "__NONE__"})
        if match == Match.PARTIAL:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    """Map every error a route can raise to the OpenAI error shape."""

    async def voxline_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, VoxlineError)
        return error_response(exc)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "form")]
        message = first.get("msg", "invalid request")
        param = ".".join(loc) or None
        body = error_body(
            f"{param}: {message}" if param else message,
            type_="invalid_request_error",
            param=param,
            code="invalid_value",
        )
        return JSONResponse(body, status_code=400)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        body = error_body(str(exc.detail), type_=type_, code=code)
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed(request)}
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body("internal server error", type_="server_error"), 500)

    app.add_exception_handler(VoxlineError, voxline_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
