"""A realtime session's key limits, inside the session (as OpenAI's Realtime API reports them).

The handshake was admitted by the edge (its quotas, its rpm, a session slot). After that each
response counts as one request of the key, checked when the response starts
(``response.created``): within the limits, the client gets ``rate_limits.updated`` with the
key's request and token windows; over one, the response is cancelled at once and the client
gets an ``error`` event (``rate_limit_exceeded`` or ``insufficient_quota``). The session stays
open either way.

Transcribing is work a session does without any response (``create_response: false``, or a
client that commits audio and never asks for an answer), so each completed transcription is
checked too: once the key's audio or spending quota is spent, the client gets the
``insufficient_quota`` error and the session ends (close code 1008), its usage billed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from server.edge import quotas
from server.edge.refusal import Refusal
from server.identity import Identity
from server.realtime_wire import wire_event
from store import Store, StoreError

log = logging.getLogger("voxline.server.edge")

Wire = dict[str, Any]


_TRANSCRIPTION_QUOTAS = frozenset({"audio_seconds_per_day", "usd_per_month"})
"""The quotas a transcription spends (tokens are a response's)."""
_POLICY_VIOLATION = 1008  # RFC 6455: the session may not go on


def _error(refusal: Refusal) -> Wire:
    error = {
        "type": refusal.type,
        "code": refusal.code,
        "message": refusal.message,
        "param": None,
        "event_id": None,
    }
    return wire_event("error", error=error)


class RealtimeLimits:
    """Checks each response of one session against its key's limits.

    Args:
        store: The state store.
        who: The session's caller.
        emit: Queues server events for the client.
        cancel: Cancels the response in progress.
        end: Ends the session from the server's side with a WebSocket close code.
        billed: Waits until the session's work billed so far is stored, so that a check sees
            the previous response's usage however soon the client asks again.
    """

    def __init__(
        self,
        store: Store,
        who: Identity,
        emit: Callable[[list[Wire]], None],
        cancel: Callable[[], Awaitable[None]],
        end: Callable[[int], None],
        billed: Callable[[], Awaitable[None]],
    ) -> None:
        self._store = store
        self._who = who
        self._emit = emit
        self._cancel = cancel
        self._end = end
        self._billed = billed
        self._tasks: set[asyncio.Task[None]] = set()

    def response_started(self) -> None:
        """Check the response that just started (never waits: the check runs in a task)."""
        self._spawn(self._check())

    def transcribed(self) -> None:
        """Check after a transcription: end the session once audio can no longer be paid for."""
        self._spawn(self._check_transcription())

    def _spawn(self, check: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(check, name="realtime-limits")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop the checks in flight (the session is closing)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _check(self) -> None:
        await self._billed()
        try:
            refusal, windows = await asyncio.to_thread(self._decide)
        except StoreError:
            log.warning("could not check a realtime response against its key's limits")
            return
        if refusal is not None:
            await self._cancel()
            self._emit([_error(refusal)])
            return
        if windows:
            self._emit([wire_event("rate_limits.updated", rate_limits=windows)])

    async def _check_transcription(self) -> None:
        store, who = self._store, self._who
        await self._billed()
        try:
            quota = await asyncio.to_thread(store.usage.check, who.key_id, who.limits)
        except StoreError:
            log.warning("could not check a realtime transcription against its key's limits")
            return
        if quota.allowed or quota.quota not in _TRANSCRIPTION_QUOTAS:
            return
        log.info("realtime session ended: its key's %s is spent", quota.quota)
        self._emit([_error(quotas.over_quota(quota))])
        self._end(_POLICY_VIOLATION)

    def _decide(self) -> tuple[Refusal | None, list[dict[str, Any]]]:
        store, who = self._store, self._who
        quota = store.usage.check(who.key_id, who.limits)
        if not quota.allowed:
            return quotas.over_quota(quota), []
        if who.limits.rpm is not None:
            hit = store.rate_limits.hit(
                quotas.rpm_scope(who.key_id), who.limits.rpm, quotas.RPM_WINDOW_S
            )
            if not hit.allowed:
                return quotas.over_rate(hit), []
        return None, [w.event() for w in quotas.windows(store, who)]
