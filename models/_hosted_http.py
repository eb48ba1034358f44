"""HTTP plumbing shared by the hosted (OpenAI-compatible) adapters.

The three hosted adapters differ only in the request they build and in how they read the answer.
Connecting, authenticating, timeouts, retrying and the mapping of HTTP failures onto the error
tree live here once, so a fallback chain sees the same error for the same failure whichever stage
hit it.

We speak HTTP through httpx rather than the ``openai`` SDK: the SDK is only a dev dependency, it
retries on its own schedule (we must never retry once output has been yielded, or the listener
would hear a sentence twice), and it hides the raw byte stream we read PCM from.

Timeouts: ``connect_timeout_s`` bounds establishing the connection; ``timeout_s`` bounds every
read, so it limits both the wait for the response to start and the gap between two streamed
chunks. There is no whole-call deadline here: a peer that keeps streaming keeps the call alive.

How failures map (``retryable`` is what a fallback chain reads; "retried" means this client tries
the same peer again, at most ``max_retries`` times and only before the first output)::

    failure                                          error              retryable  retried
    connection refused, DNS, unreachable             EngineUnavailable  yes        yes
    connection dropped mid-response, broken HTTP     EngineUnavailable  yes        yes
    connect, read, write or pool timeout             EngineTimeout      yes        no
    HTTP 408                                         EngineTimeout      yes        no
    HTTP 429, 503                                    EngineOverloaded   yes        yes
    HTTP 401, 403 (the key was refused or missing)   EngineUnavailable  yes        no
    other HTTP 5xx                                   EngineUnavailable  yes        yes
    other HTTP 4xx (400, 404, 413, 422, ...)         StageError         yes        no
    2xx with a body we cannot parse                  EngineUnavailable  yes        no

A timeout is not retried: the deadline has already been spent once, and the caller is better
served by the next backend than by waiting for it again. Another 4xx is not ``InvalidInput``: the
public stage methods validate the caller's input before we get here, so a 4xx means this peer and
our request disagree (a model name it does not serve, a parameter it does not know, its own size
limit). The same peer will refuse again, but another backend may well serve the same input, and
the caller, who did nothing wrong, must not be answered with a 4xx. A 429 whose ``Retry-After``
asks for more than ``MAX_RETRY_AFTER_S`` is not retried either: a voice turn cannot wait that long.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any, TypeVar

import httpx

from pipeline.errors import (
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    ModelLoadError,
    Stage,
    StageError,
)
from pipeline.settings import HostedSettings

log = logging.getLogger("voxline.hosted")

T = TypeVar("T")

MAX_RETRY_AFTER_S = 2.0
"""Longest ``Retry-After`` we wait for before retrying; a longer one fails over instead."""
_BACKOFF_S = 0.1
"""First retry delay; doubled on each further attempt."""
_MAX_MESSAGE_CHARS = 300


class PeerStatusError(Exception):
    """The peer answered with an HTTP error status (raised before any output is read).

    Args:
        status: The HTTP status code.
        detail: The peer's error message (OpenAI's ``error.message``), shortened.
        retry_after: The ``Retry-After`` header in seconds, if it held a number.
    """

    def __init__(self, status: int, detail: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class PeerProtocolError(Exception):
    """The peer answered 2xx with something that is not what the OpenAI API sends."""


_PEER_ERRORS = (httpx.HTTPError, httpx.StreamError, PeerStatusError, PeerProtocolError)


class HostedClient:
    """One ``httpx.AsyncClient`` bound to one OpenAI-compatible base URL, for one stage.

    Args:
        settings: The endpoint, key, model and timeouts.
        stage: The stage this client serves (for errors).
        default_model: Model name sent when ``settings.model`` is unset.
        transport: An httpx transport to use instead of the network (e.g. ``httpx.ASGITransport``
            to talk to an in-process app).

    Raises:
        ModelLoadError: ``settings.base_url`` is unset or not an ``http(s)`` URL.
    """

    def __init__(
        self,
        settings: HostedSettings,
        *,
        stage: Stage,
        default_model: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        variable = f"VOXLINE_{stage.upper()}__HOSTED__BASE_URL"
        if not settings.base_url:
            raise ModelLoadError(
                f"no hosted endpoint configured: set {variable} (e.g. http://127.0.0.1:8001/v1)",
                stage=stage,
                backend="hosted",
            )
        url = httpx.URL(settings.base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ModelLoadError(
                f"{variable} must be an http(s) URL including /v1, not {settings.base_url!r}",
                stage=stage,
                backend="hosted",
            )
        port = url.port or (443 if url.scheme == "https" else 80)
        self.stage: Stage = stage
        self.name = f"hosted:{url.host}:{port}"
        self.base_url = str(url)
        self.model = settings.model or default_model
        self.max_retries = settings.max_retries
        self.has_key = settings.api_key is not None
        headers: dict[str, str] = {}
        if settings.api_key is not None:
            # httpx masks this header in its reprs; we never log headers ourselves.
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self.http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(
                settings.timeout_s,
                connect=settings.connect_timeout_s,
            ),
            transport=transport,
        )

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` (e.g. ``"/chat/completions"``) under the base URL."""
        return self.base_url + path

    @asynccontextmanager
    async def open(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """Send a request and hand over the streaming response once its status is a success.

        Raises:
            PeerStatusError: the status was 4xx or 5xx (the body has been read for its message).
            httpx.HTTPError: a transport failure.
        """
        async with self.http.stream(method, self.url(path), **kwargs) as response:
            if response.status_code >= 400:
                await response.aread()
                raise PeerStatusError(
                    response.status_code,
                    _error_detail(response),
                    _retry_after(response.headers.get("retry-after")),
                )
            yield response

    async def retrying(self, attempt: Callable[[], AsyncGenerator[T, None]]) -> AsyncIterator[T]:
        """Yield what ``attempt()`` yields, calling it again on a retryable failure before its
        first item, and translate every failure into the error tree.

        Args:
            attempt: Makes a fresh async iterator that sends the request and reads the answer.
        """
        tries = 0
        while True:
            produced = False
            try:
                async with aclosing(attempt()) as items:
                    async for item in items:
                        produced = True
                        yield item
                return
            except _PEER_ERRORS as exc:
                error = self.translate(exc)
                delay = None if produced or tries >= self.max_retries else _retry_delay(exc, tries)
                if delay is None:
                    raise error from exc
                tries += 1
                log.info(
                    "%s: %s; retry %d/%d in %.2f s",
                    self.name,
                    type(error).__name__,
                    tries,
                    self.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)

    def translate(self, exc: BaseException) -> StageError:
        """Map an httpx failure or a peer error onto the error tree (see the module docstring)."""
        kind, message = self._classify(exc)
        return kind(message, stage=self.stage, backend=self.name)

    def _classify(self, exc: BaseException) -> tuple[type[StageError], str]:
        if isinstance(exc, PeerStatusError):
            status, detail = exc.status, exc.detail
            if status in (429, 503):
                return EngineOverloaded, f"peer is overloaded (HTTP {status}): {detail}"
            if status in (401, 403):
                key = "the configured API key was refused" if self.has_key else "no API key is set"
                return EngineUnavailable, f"peer refused access (HTTP {status}): {key}"
            if status == 408:
                return EngineTimeout, f"peer timed out (HTTP 408): {detail}"
            if status >= 500:
                return EngineUnavailable, f"peer failed (HTTP {status}): {detail}"
            return StageError, f"peer rejected the request (HTTP {status}): {detail}"
        if isinstance(exc, httpx.TimeoutException):
            what = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting for data"
            return EngineTimeout, f"timed out {what} ({type(exc).__name__})"
        if isinstance(exc, httpx.ConnectError):
            return EngineUnavailable, f"cannot connect to {self.base_url}: {exc}"
        if isinstance(exc, httpx.TransportError):
            return EngineUnavailable, f"connection failed ({type(exc).__name__}): {exc}"
        return EngineUnavailable, f"bad response ({type(exc).__name__}): {exc}"

    async def probe(self) -> tuple[str, ...]:
        """Ask the peer which models it serves (``GET {base}/models``), once, without retrying.

        Returns:
            The model ids the peer lists.

        Raises:
            StageError: the peer cannot be reached or answered an error (see the mapping above).
        """
        try:
            async with self.open("GET", "/models") as response:
                await response.aread()
                body = json_object(response.text)
            data = body.get("data")
            if not isinstance(data, list):
                raise PeerProtocolError("GET /models answered without a 'data' list")
            return tuple(str(m["id"]) for m in data if isinstance(m, dict) and "id" in m)
        except _PEER_ERRORS as exc:
            raise self.translate(exc) from exc

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()


async def iter_sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """Yield the ``data`` of each server-sent event in ``response``, as the events arrive.

    Follows the SSE framing rules: ``data:`` lines of one event are joined by newlines, an event
    ends at a blank line, comments (``:``) and other fields are ignored, and an event left
    unterminated when the stream ends is dropped.
    """
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        field, _, value = line.partition(":")
        if field == "data":
            lines.append(value.removeprefix(" "))


def json_object(data: str) -> dict[str, Any]:
    """Parse a JSON object sent by the peer.

    Raises:
        PeerProtocolError: not JSON, or not an object.
    """
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise PeerProtocolError(f"peer sent invalid JSON: {data[:80]!r}") from exc
    if not isinstance(value, dict):
        raise PeerProtocolError(f"peer sent JSON that is not an object: {data[:80]!r}")
    return value


def raise_for_error_event(event: dict[str, Any]) -> None:
    """Raise if a streamed event is an error (llama.cpp and vLLM send ``{"error": ...}``).

    Raises:
        PeerStatusError: the event carries an error; a 500 unless it names an HTTP ``code``.
    """
    error = event.get("error")
    if error is None:
        return
    detail = error.get("message", "") if isinstance(error, dict) else str(error)
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    raise PeerStatusError(status, str(detail)[:_MAX_MESSAGE_CHARS])


def _error_detail(response: httpx.Response) -> str:
    # OpenAI's shape is {"error": {"message": ...}}; FastAPI's {"detail": ...}; others plain text.
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:_MAX_MESSAGE_CHARS] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])[:_MAX_MESSAGE_CHARS]
        if "detail" in body:
            return str(body["detail"])[:_MAX_MESSAGE_CHARS]
    return text.strip()[:_MAX_MESSAGE_CHARS]


def _retry_after(value: str | None) -> float | None:
    # Only the delta-seconds form; an HTTP date means "much later" in practice: no retry then.
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return float("inf")


def _retry_delay(exc: BaseException, tries: int) -> float | None:
    """Seconds to wait before retrying after ``exc``, or ``None`` if it must not be retried."""
    if isinstance(exc, PeerStatusError):
        if exc.status != 429 and exc.status < 500:
            return None
        if exc.retry_after is not None:
            return exc.retry_after if exc.retry_after <= MAX_RETRY_AFTER_S else None
    elif not isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return None  # timeouts, malformed bodies, our own protocol errors: retrying cannot help
    # Jitter spreads the retries of many sessions that failed together.
    return _BACKOFF_S * 2.0**tries * (1 + 0.2 * random.random())
