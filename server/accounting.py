"""The one accounting path: engine calls in, ledger charges and usage metrics out.

Every engine call is metered where it runs (``pipeline.metering``): the stage base class hands its
``CallRecord`` (audio seconds transcribed, the engine's own token counts, characters and audio
seconds spoken, compute time) to the meter bound in the caller's context. ``MeterMiddleware``
binds one meter per HTTP request and WebSocket connection; the realtime session binds its own per
transcription job and per response and reports them as ``UsageReported`` events. Whoever holds the
records hands them to ``Accounting.charge``, and only there are they priced, written to the ledger
and counted in the token and audio metrics: every route and the realtime session take this path.

What is billed: the work actually done, once. A call that failed is not billed (a fallback chain's
next backend did the work, or the request failed); a request whose response failed is not billed
at all (routes settle only on success, and what a request left unsettled is dropped). Work a client
abandoned midway (a cancelled response, a closed stream) is billed for what was done, and a
speculative reply dropped before anyone heard it is billed as ``speculative``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline import metering
from pipeline.events import UsageReported
from pipeline.ledger import Ledger
from pipeline.metering import Meter
from pipeline.stages import CallRecord
from server.metrics import Metrics

T = TypeVar("T")


class Accounting:
    """Prices engine calls into the ledger and counts their usage in the metrics.

    Args:
        ledger: Where charges go.
        metrics: Where token and audio counts go.
    """

    def __init__(self, ledger: Ledger, metrics: Metrics) -> None:
        self.ledger = ledger
        self.metrics = metrics

    def charge(
        self, calls: Iterable[CallRecord], *, request_id: str, speculative: bool = False
    ) -> float:
        """Bill the calls that did their work (failed ones are not) and return their cost."""
        cost = 0.0
        for call in calls:
            if call.error is not None:
                continue
            cost += self.ledger.record_call(request_id, call, speculative=speculative)
            self.metrics.count_usage(call)
        return cost

    def settle(self, request_id: str) -> float:
        """Bill what the current request's meter holds (see ``MeterMiddleware``) and return it.

        Routes call this once their response has succeeded: what a request never settles (it
        failed) is never billed.
        """
        meter = metering.current()
        return 0.0 if meter is None else self.charge(meter.take(), request_id=request_id)


class SessionUsage:
    """A realtime session's engine work (its ``UsageReported`` events) through ``Accounting``, and
    what each ``response.done`` reports: everything billed since the previous one (the speech it
    answers, partial and speculative transcriptions included, and dropped speculative replies,
    also shown apart as ``speculative``)."""

    def __init__(self, accounting: Accounting, session_id: str) -> None:
        self._accounting = accounting
        self._session_id = session_id
        self._cost = 0.0
        self._speculative: dict[str, float] = {}

    def charge(self, event: UsageReported) -> None:
        """Bill one piece of work (a failed response is not billed)."""
        if event.failed:
            return
        speculative = event.kind == "speculation"
        cost = self._accounting.charge(
            event.calls, request_id=event.response_id or self._session_id, speculative=speculative
        )
        self._cost += cost
        if speculative:
            spec = self._speculative
            spec["cost_usd"] = spec.get("cost_usd", 0.0) + cost
            for call in event.calls:
                if call.error is None and call.stage == "llm":
                    spec["input_tokens"] = spec.get("input_tokens", 0) + call.tokens_in
                    spec["output_tokens"] = spec.get("output_tokens", 0) + call.tokens_out

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
    stream: AsyncGenerator[T, None], on_done: Callable[[list[T], float], None]
) -> AsyncGenerator[T, None]:
    """``stream``, passed through; ``on_done(items, seconds)`` once it has finished or been
    closed by its consumer (not when it raised): the moment a streamed response settles."""
    start = time.perf_counter()
    items: list[T] = []
    try:
        async with contextlib.aclosing(stream):
            async for item in stream:
                items.append(item)
                yield item
    except GeneratorExit:  # closed by the consumer: what was produced was used
        on_done(items, time.perf_counter() - start)
        raise
    on_done(items, time.perf_counter() - start)
