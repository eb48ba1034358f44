"""The one accounting path: engine calls in, ledger charges and usage metrics out.

Every engine call is metered where it runs (``pipeline.metering``): the stage base class hands its
``CallRecord`` (audio seconds transcribed, the engine's own token counts, characters and audio
seconds spoken, compute time) to the meter bound in the caller's context. ``MeterMiddleware``
binds one meter per HTTP request and WebSocket connection; the realtime session binds its own per
transcription job and per response and reports them as ``UsageReported`` events. Whoever holds the
records hands them to ``Accounting.charge``, and only there are they priced, written to the ledger
and counted in the token and audio metrics: every route and the realtime session take this path.

Who pays: every charge carries the API key of the request or session it was for (the edge's
``server.identity``), and is stored durably with it in the state store (``store.charges``, one
transaction per request), while the key's usage totals (``store.usage``: requests, tokens, audio
seconds, USD per UTC day and month, which its quotas read) grow by the same amounts. An HTTP
request's charges are in the store before its response ends (``settle`` waits for the write),
so a ``kill -9`` right after an answer loses nothing; a realtime session's are written as each
piece of work is reported, off the event loop, and waited for when the session closes.

What is billed: the work actually done, once. A call that failed is not billed (a fallback chain's
next backend did the work, or the request failed); a request whose response failed is not billed
at all (routes settle only on success, and what a request left unsettled is dropped). Work a client
abandoned midway (a cancelled response, a closed stream) is billed for what was done, and a
speculative reply dropped before anyone heard it is billed as ``speculative``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline import metering
from pipeline.events import UsageReported
from pipeline.ledger import Charge, Ledger
from pipeline.metering import Meter
from pipeline.stages import CallRecord
from server import identity
from server.identity import Identity
from server.metrics import Metrics
from store import Store, StoreError, UsageAmounts

T = TypeVar("T")
log = logging.getLogger("voxline.server.accounting")


class Accounting:
    """Prices engine calls into the ledger, stores them for their key, counts them in metrics.

    Args:
        ledger: Prices charges and keeps this process's totals.
        metrics: Where token and audio counts go.
        store: Where charges and per-key usage are stored (``None``: the ledger only).
    """

    def __init__(self, ledger: Ledger, metrics: Metrics, store: Store | None = None) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.store = store
        # store writes leave the event loop; one thread keeps them in order and off the pool
        # the engines' own blocking work shares (started on first use, again after close())
        self._writer: ThreadPoolExecutor | None = None

    def charge(
        self,
        calls: Iterable[CallRecord],
        *,
        request_id: str,
        speculative: bool = False,
        who: Identity | Literal["current"] | None = "current",
        requests: int = 0,
    ) -> float:
        """Bill the calls that did their work (failed ones are not) and return their cost.

        Args:
            calls: The engine calls' records.
            request_id: The request (or realtime response) they belong to.
            speculative: Work for a speculative reply that was dropped.
            who: Who pays (default: the caller bound by the edge, ``server.identity``).
            requests: Requests to add to the key's usage (1 for a settled request).
        """
        return self.bill(calls, request_id, speculative, who, requests)[0]

    async def settle(self, request_id: str) -> float:
        """Bill what the current request's meter holds (see ``MeterMiddleware``), store it, and
        return its cost once it is stored.

        Routes call this once their response has succeeded: what a request never settles (it
        failed) is never billed.
        """
        meter = metering.current()
        if meter is None:
            return 0.0
        cost, written = self.bill(meter.take(), request_id, False, "current", 1)
        if written is not None:
            await asyncio.wrap_future(written)
        return cost

    def close(self) -> None:
        """Wait for the writes in flight, then stop the writer (the app's lifespan calls it)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)

    def bill(
        self,
        calls: Iterable[CallRecord],
        request_id: str,
        speculative: bool,
        who: Identity | Literal["current"] | None,
        requests: int,
    ) -> tuple[float, Future[None] | None]:
        """``charge``, returning also the store write in flight (``None``: nothing to store),
        for callers that wait for it themselves."""
        payer = identity.current() if who == "current" else who
        charges: list[Charge] = []
        for call in calls:
            if call.error is not None:
                continue
            charges.append(self.ledger.charge_call(request_id, call, speculative=speculative))
            self.metrics.count_usage(call)
        cost = sum(c.cost_usd for c in charges)
        if self.store is None or (not charges and not requests):
            return cost, None
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="voxline-accounting")
        key_id = payer.key_id if payer is not None else None
        written = self._writer.submit(self._store, charges, key_id, speculative, requests)
        return cost, written

    def _store(
        self, charges: list[Charge], key_id: str | None, speculative: bool, requests: int
    ) -> None:
        """Write one request's charges and its key's usage (in the writer thread)."""
        assert self.store is not None
        try:
            self.store.charges.append_many(charges, key_id=key_id, speculative=speculative)
            if key_id is not None:
                amounts = UsageAmounts(
                    requests=requests,
                    tokens=sum(c.tokens_in + c.tokens_out for c in charges),
                    audio_seconds=sum(c.audio_seconds for c in charges),
                    usd=sum(c.cost_usd for c in charges),
                )
                self.store.usage.add(key_id, amounts)
        except StoreError:  # the work was done and answered: say loudly that it went unbilled
            log.exception("could not store %d charge(s) of %s", len(charges), charges[:1])


class SessionUsage:
    """A realtime session's engine work (its ``UsageReported`` events) through ``Accounting``, and
    what each ``response.done`` reports: everything billed since the previous one (the speech it
    answers, partial and speculative transcriptions included, and dropped speculative replies,
    also shown apart as ``speculative``)."""

    def __init__(
        self, accounting: Accounting, session_id: str, who: Identity | None = None
    ) -> None:
        self._accounting = accounting
        self._session_id = session_id
        self._who = who
        self._cost = 0.0
        self._speculative: dict[str, float] = {}
        self._writes: set[Future[None]] = set()

    def charge(self, event: UsageReported) -> None:
        """Bill one piece of work (a failed response is not billed) for the session's key."""
        if event.failed:
            return
        speculative = event.kind == "speculation"
        cost, written = self._accounting.bill(
            event.calls,
            event.response_id or self._session_id,
            speculative,
            self._who,
            1 if event.kind == "response" else 0,
        )
        if written is not None:
            self._writes.add(written)
            written.add_done_callback(self._writes.discard)
        self._cost += cost
        if speculative:
            spec = self._speculative
            spec["cost_usd"] = spec.get("cost_usd", 0.0) + cost
            for call in event.calls:
                if call.error is None and call.stage == "llm":
                    spec["input_tokens"] = spec.get("input_tokens", 0) + call.tokens_in
                    spec["output_tokens"] = spec.get("output_tokens", 0) + call.tokens_out

    async def flush(self) -> None:
        """Wait until everything billed so far is stored (the connection calls it at its end)."""
        pending = [asyncio.wrap_future(f) for f in list(self._writes)]
        await asyncio.gather(*pending, return_exceptions=True)

    def report(self) -> dict[str, Any]:
        """What was billed since the previous report (``cost_usd``, and ``speculative`` when a
        dropped speculation was among it), for the next ``response.done``'s ``usage``."""
        out: dict[str, Any] = {"cost_usd": round(self._cost, 8)}
        if self._speculative:
            spec: dict[str, Any] = dict(self._speculative)
            spec["cost_usd"] = round(spec["cost_usd"], 8)
            out["speculative"] = spec
        self._cost, self._speculative = 0.0, {}
        return out


class MeterMiddleware:
    """Binds a fresh ``Meter`` for each HTTP request and WebSocket connection (pure ASGI, so the
    meter is visible to the route and to every task the route or its streaming response creates)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        with Meter().bind():
            await self.app(scope, receive, send)


async def metered(
    stream: AsyncGenerator[T, None], on_done: Callable[[list[T], float], Awaitable[object]]
) -> AsyncGenerator[T, None]:
    """``stream``, passed through; ``await on_done(items, seconds)`` once it has finished or
    been closed by its consumer (not when it raised): the moment a streamed response settles.
    The stream ends only after ``on_done`` (the bill is stored before the answer completes)."""
    start = time.perf_counter()
    items: list[T] = []
    try:
        async with contextlib.aclosing(stream):
            async for item in stream:
                items.append(item)
                yield item
    except GeneratorExit:  # closed by the consumer: what was produced was used
        await on_done(items, time.perf_counter() - start)
        raise
    await on_done(items, time.perf_counter() - start)
