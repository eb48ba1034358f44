"""Streaming responses: server-sent events, and stopping the work when the client leaves.

``EventStream`` always closes its generator and runs its ``on_close`` hook, so a client that
leaves, even before the headers went out, stops the engines; ``cancel_on_disconnect`` does the
same for a response that is not streamed (and answers 499).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


# -- server-sent events -----------------------------------------------------------------------


def sse(data: Mapping[str, Any] | BaseModel | str, *, event: str | None = None) -> bytes:
    """One server-sent event (``data`` as JSON unless it is already a string)."""
    if isinstance(data, BaseModel):
        payload = data.model_dump_json()
    elif isinstance(data, str):
        payload = data
    else:
        payload = json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response that always releases what feeds it when it ends.

    Starlette cancels a streaming response when the client disconnects, but a generator parked
    at ``yield``, or one never started (the client left before the headers went out), is only
    closed later by the garbage collector, and a task feeding it runs on regardless: the engine
    work behind it would go on for nobody. So, whatever ends the response, the generator is
    closed and ``on_close`` (stop the engine work: cancel a task, close a stage's iterator) runs.

    Args:
        events: The SSE body, one encoded event per item.
        on_close: Called once the response is over, however it ended.
    """

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        *,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._events = events
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()
            if self._on_close is not None:
                await self._on_close()


def client_gone() -> Response:
    """What a route returns for a client that disconnected (nginx's "client closed request"):
    nobody reads it, and it is not an error of ours to log."""
    return Response(status_code=499)


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first.

    Until a response starts, nothing notices a client that went away: without this, a client
    that gave up would leave the engines working for nobody until the answer is complete. Call
    it once the request body has been read: the next ASGI message is then the disconnect.

    Raises:
        ClientDisconnect: the client went away (``work`` was cancelled and awaited); answer
            with ``client_gone()``.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnect()
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
