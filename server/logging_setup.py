"""JSON-lines logs that carry request and session ids, and never secrets or user content.

One JSON object per line (``timestamp``, ``level``, ``logger``, ``message``, ``request_id``,
``session_id``, ``release``, then any ``extra={...}`` fields) is what log shippers parse without
rules. The ids come from context variables that ``RequestContextMiddleware`` (per HTTP
request), ``bind(session_id=...)`` (per realtime session) and the release slot
(``server.releases``: the release serving the request or session) set, so no call site passes
them around.

What a log line may hold is decided here, once:

- user content (transcripts, replies) is passed wrapped in ``content(text)``; the formatter
  prints it only when ``log_content`` is on, and ``<redacted N chars>`` otherwise. Exception
  messages count as content (they may quote user input): by default an error is logged as its
  type and stack frames only;
- ``extra`` values are rendered when they are plain JSON values or one of the known value types
  (timings, usage, backends, call records, charges); any other object, audio above all, is
  logged as ``<TypeName>``;
- ``SecretStr`` renders as ``**********``, and bearer tokens or ``sk-`` keys that reach a
  message anyway (a library logging a header) are masked. Headers are never logged here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.ledger import Charge, Totals
from pipeline.settings import ObservabilitySettings
from pipeline.stages import CallRecord
from pipeline.types import Backends, TurnTimings, Usage
from server.metrics import route_template

request_id_var: ContextVar[str | None] = ContextVar("voxline_request_id", default=None)
session_id_var: ContextVar[str | None] = ContextVar("voxline_session_id", default=None)
key_id_var: ContextVar[str | None] = ContextVar("voxline_key_id", default=None)
release_var: ContextVar[str | None] = ContextVar("voxline_release", default=None)

_SAFE_VALUES = (TurnTimings, Usage, Backends, CallRecord, Charge, Totals)
"""Value types whose every field is a number, an id or a backend name: safe to log whole."""

# the LogRecord's own attributes: everything else in record.__dict__ came from `extra`
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

_SECRETS = (
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?:bearer\s+)?[^\s\"',;}]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"()\bsk-[A-Za-z0-9._-]{8,}"),
    # our own API keys and client secrets (store.keys), and a browser's realtime subprotocol
    re.compile(r"()\b(?:vx-|ek_)[A-Za-z0-9._-]{8,}"),
    re.compile(r"(openai-insecure-api-key\.)[^\s\"',;]+"),
)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class Content:
    """User content (a transcript, a reply) to be logged only when ``log_content`` is on."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def redacted(self) -> str:
        """The marker logged instead of the text."""
        return f"<redacted {len(self.text)} chars>"

    def __str__(self) -> str:
        # formatted outside our formatter (or eagerly, in an f-string): stay safe
        return self.redacted()

    __repr__ = __str__


def content(text: str) -> Content:
    """Mark ``text`` as user content: pass it as a ``%s`` argument or an ``extra`` value.

    It is printed verbatim only by a formatter configured with ``log_content=True``; otherwise
    it reads ``<redacted 42 chars>``. Formatting it yourself (an f-string) always redacts.
    """
    return Content(text)


def new_request_id() -> str:
    """A fresh request id."""
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the HTTP request being served in this context, if any."""
    return request_id_var.get()


@contextmanager
def bind(
    *, request_id: str | None = None, session_id: str | None = None, key_id: str | None = None
) -> Iterator[None]:
    """Put ``request_id`` / ``session_id`` / ``key_id`` (the caller's API key, bound by the
    edge) on every log line written inside the block."""
    tokens = []
    if request_id is not None:
        tokens.append((request_id_var, request_id_var.set(request_id)))
    if session_id is not None:
        tokens.append((session_id_var, session_id_var.set(session_id)))
    if key_id is not None:
        tokens.append((key_id_var, key_id_var.set(key_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def scrub(text: str) -> str:
    """``text`` with bearer tokens, Authorization values and ``sk-`` keys masked."""
    for pattern in _SECRETS:
        text = pattern.sub(r"\1<secret>", text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for what it may contain).

    Args:
        log_content: Print ``content(...)`` values and exception messages verbatim.
    """

    def __init__(self, *, log_content: bool = False) -> None:
        super().__init__()
        self.log_content = log_content

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        return json.dumps(self.fields(record), default=str, ensure_ascii=False)

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record as a JSON-ready dict."""
        out: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(self._message(record)),
        }
        request_id, session_id = request_id_var.get(), session_id_var.get()
        if request_id is not None:
            out["request_id"] = request_id
        if session_id is not None:
            out["session_id"] = session_id
        if (key_id := key_id_var.get()) is not None:
            out["key_id"] = key_id
        if (release := release_var.get()) is not None:
            out["release"] = release
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                out[key] = self._value(value)
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, tb = record.exc_info
            out["error_type"] = exc_type.__name__
            if self.log_content:
                out["traceback"] = scrub("".join(traceback.format_exception(exc_type, exc, tb)))
            else:  # the frames say where; the message (maybe quoting user input) stays out
                out["traceback"] = "".join(traceback.format_tb(tb))
        return out

    def _message(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple):
            args = tuple(self._value(a) if isinstance(a, Content) else a for a in args)
        elif isinstance(args, dict):
            args = {k: self._value(v) if isinstance(v, Content) else v for k, v in args.items()}
        message = str(record.msg)
        return message % args if args else message

    def _value(self, value: Any) -> Any:
        if isinstance(value, Content):
            return value.text if self.log_content else value.redacted()
        if isinstance(value, SecretStr):
            return "**********"
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return scrub(value)
        if isinstance(value, _SAFE_VALUES):
            return dataclasses.asdict(value)
        if isinstance(value, list | tuple):
            return [self._value(v) for v in value]
        if isinstance(value, dict):
            return {str(k): self._value(v) for k, v in value.items()}
        return f"<{type(value).__name__}>"  # audio arrays, results holding transcripts, ...


class TextFormatter(JsonFormatter):
    """Human-readable lines with the same redaction rules (``log_format=text``)."""

    def format(self, record: logging.LogRecord) -> str:
        """``<time> <LEVEL> <logger> [ids]: <message> key=value ...``."""
        data = self.fields(record)
        head = f"{data.pop('timestamp')} {data.pop('level')} {data.pop('logger')}"
        message = data.pop("message")
        trace = data.pop("traceback", None)
        ids = " ".join(
            f"{k}={data.pop(k)}" for k in ("request_id", "session_id", "release") if k in data
        )
        rest = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in data.items())
        line = f"{head}{f' [{ids}]' if ids else ''}: {message}{f' {rest}' if rest else ''}"
        return f"{line}\n{trace.rstrip()}" if trace else line


_HANDLER_NAME = "voxline"


def configure_logging(
    settings: ObservabilitySettings, stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record to ``stream`` (default stderr) in the configured format.

    Call once at process start (``voxline serve``), not in ``create_app``: logging is process
    wide. Calling again replaces the handler this function installed before.

    Returns:
        The installed handler (on the root logger).
    """
    formatter_type = JsonFormatter if settings.log_format == "json" else TextFormatter
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter_type(log_content=settings.log_content))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    return handler


_stage_log = logging.getLogger("voxline.stage")


def log_call(record: CallRecord) -> None:
    """Stage listener: each call's timings (DEBUG), or WARNING with the error type if it failed.

    ``engine.listeners.append(log_call)``; the line carries the request or session id of the
    caller's context.
    """
    level = logging.WARNING if record.error else logging.DEBUG
    if not _stage_log.isEnabledFor(level):
        return
    outcome = f"failed ({record.error})" if record.error else "done"
    _stage_log.log(
        level,
        "%s call %s in %.1f ms",
        record.stage,
        outcome,
        record.total_ms,
        extra={
            "stage": record.stage,
            "backend": record.backend,
            "total_ms": round(record.total_ms, 1),
            "first_output_ms": None
            if record.first_output_ms is None
            else round(record.first_output_ms, 1),
            "outputs": record.outputs,
            "error_type": record.error,
        },
    )


_access_log = logging.getLogger("voxline.access")


class RequestContextMiddleware:
    """Gives every HTTP request an id, binds it for logging and logs one access line.

    The id is the client's ``X-Request-ID`` when it is a sane token (1-64 of ``[A-Za-z0-9._:-]``)
    and a fresh one otherwise; it is echoed in the response's ``X-Request-ID``. The access line
    holds the method, route template, status and duration: never headers, query or body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _client_request_id(scope) or new_request_id()
        start = time.perf_counter()
        status = 500

        async def tagging_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        with bind(request_id=request_id):
            try:
                await self.app(scope, receive, tagging_send)
            finally:
                if scope["type"] == "http":
                    _access_log.info(
                        "%s %s %d",
                        scope["method"],
                        route_template(scope),
                        status,
                        extra={
                            "key_id": scope.get("voxline.key_id"),
                            "method": scope["method"],
                            "route": route_template(scope),
                            "status": status,
                            "duration_ms": round((time.perf_counter() - start) * 1000, 1),
                        },
                    )


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.fullmatch(text) else None
    return None
