"""Admission to an engine: its capacity, a bounded priority queue, and refusal at once.

An engine serves a few calls at once well: one Whisper decode on two CPU cores (CTranslate2
serializes the rest anyway), one llama.cpp reply, a pool of GPT-SoVITS workers, a hosted peer's
share. More calls only make every one of them slower, until all of them miss their deadlines
(measured before this existed: 50 realtime sessions asking at once, 0-1 answered). So each
engine has an :class:`EngineScheduler`, and a call takes one of its *slots* before the engine
works on it (docs/architecture.md, "Admission and scheduling"):

- a free slot is taken at once;
- otherwise the call waits in the engine's queue, served by priority (``pipeline.priority``:
  interactive, then speculative, then batch), first come first served within one;
- partial work (``Priority.PARTIAL``) never waits: with no free slot it is refused, and whoever
  asked tries later;
- a call that cannot be served soon is refused at once with :class:`EngineBusy` (retryable,
  with ``retry_after_s``): when the queue is full (a call of better priority than the worst
  waiter takes that waiter's place instead, and the waiter is refused), or when its estimated
  wait (calls ahead of it / capacity x the engine's mean time per call) is past ``max_wait_s``.
  A waiter still waiting at twice that bound is refused too: an engine that stopped finishing
  calls must not keep its callers forever. Each refusal has a reason (``REFUSAL_REASONS``),
  told to the scheduler's ``listeners`` (the server's metrics count them; ``in_use``,
  ``waiting`` and ``capacity`` are read at scrape time);
- waiting is not failing: the fallback chain takes the slot before its deadlines start, and a
  refusal never counts against a breaker (``pipeline.fallback_core``).

A slot is held until the engine's work has really ended. When that work runs in a worker
thread (``pipeline.offload``), the thread takes the slot over from the call (:func:`delegate`)
and frees it when it ends, not when the consumer has read the last item: a client that reads
slowly holds its own buffered output, never the engine, and a cancelled call frees its slot
when its engine has actually stopped (at most one step later), so the next call never runs
beside a stopping one.

Calls wait on their event loop; a slot may come back from any thread (the worker's own, at
its end, even if its loop has closed), so the scheduler's state is behind a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from pipeline.errors import EngineBusy, Stage
from pipeline.priority import Priority, current

_EWMA_WEIGHT = 0.2  # weight of the newest call in the mean time per call
_HARD_WAIT_FACTOR = 2.0  # a waiter is refused after this many times max_wait_s

REFUSAL_REASONS = ("partial", "estimated_wait", "queue_full", "displaced", "wait_timeout")
"""Why a scheduler refuses a call: partial work with no slot free; the estimated wait is past
``max_wait_s``; the queue is full of calls as urgent; a more urgent call took its place in the
queue; no slot came free within twice ``max_wait_s``."""

RefusalListener = Callable[["EngineScheduler", str], None]
"""Told of each refusal: the scheduler and the reason (one of ``REFUSAL_REASONS``)."""


class Slot:
    """One call's place in an engine. ``release()`` when the call ends; a worker thread that
    takes it over (:func:`delegate`) frees it when the thread ends instead."""

    __slots__ = ("_delegated", "_granted_at", "_holds", "_scheduler")

    def __init__(self, scheduler: EngineScheduler, granted_at: float) -> None:
        self._scheduler = scheduler
        self._granted_at = granted_at
        self._holds = 1  # the call's own hold
        self._delegated = False

    @property
    def freed(self) -> bool:
        """Whether the engine has this slot back."""
        return self._holds == 0

    def release(self) -> None:
        """The call is over: give the slot back, unless a worker thread took it over (it gives
        it back when it ends). Idempotent."""
        with self._scheduler._lock:
            if self._delegated or self._holds == 0:
                return
            self._delegated = True  # the call's own hold is gone either way
        self._drop()

    def _take_over(self) -> Callable[[], None] | None:
        with self._scheduler._lock:
            if self._holds == 0:
                return None  # a thread started after its call ended: nothing to hold
            if self._delegated:
                self._holds += 1  # a second thread of the same call
            else:
                self._delegated = True  # the first thread inherits the call's own hold
        return self._drop

    def _drop(self) -> None:
        """One hold ends (from any thread)."""
        scheduler = self._scheduler
        with scheduler._lock:
            if self._holds == 0:
                return
            self._holds -= 1
            if self._holds:
                return
            grants = scheduler._freed_locked(self._granted_at)
        for waiter, slot in grants:
            waiter.resolve(slot)


@dataclass(eq=False)
class _Waiter:
    priority: Priority
    order: int
    future: asyncio.Future[Slot] = field(repr=False)

    def resolve(self, outcome: Slot | EngineBusy) -> None:
        """Hand ``outcome`` to the waiter, on its own loop (from any thread)."""
        try:
            self.future.get_loop().call_soon_threadsafe(self._set, outcome)
        except RuntimeError:  # its loop is closed: nobody will take the slot
            if isinstance(outcome, Slot):
                outcome.release()

    def _set(self, outcome: Slot | EngineBusy) -> None:
        if self.future.done():  # the waiter gave up meanwhile: the slot goes back
            if isinstance(outcome, Slot):
                outcome.release()
        elif isinstance(outcome, Slot):
            self.future.set_result(outcome)
        else:
            self.future.set_exception(outcome)


class EngineScheduler:
    """The slots and wait queue of one engine.

    Calls wait on their own event loop; slots may be freed from any thread (a worker thread
    frees its slot when it ends, even after its loop has closed), so the state is locked.

    Args:
        name: The engine's backend name (named in refusals).
        stage: The engine's stage (for the error).
        capacity: Calls served at once.
        max_queue: Calls that may wait; past it, the worst-priority one is refused.
        max_wait_s: Estimated wait past which a call is refused at once (and twice this, the
            longest any call waits, on the loop's clock).
        clock: Monotonic seconds for the mean time per call (any thread may read it).
    """

    def __init__(
        self,
        name: str,
        *,
        stage: Stage,
        capacity: int = 1,
        max_queue: int = 8,
        max_wait_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1 or max_queue < 0 or max_wait_s <= 0:
            raise ValueError("capacity must be >= 1, max_queue >= 0 and max_wait_s > 0")
        self.name = name
        self.stage: Stage = stage
        self.capacity = capacity
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._lock = threading.Lock()
        self._in_use = 0
        self._waiters: list[_Waiter] = []
        self._order = 0
        self.mean_call_s: float | None = None
        """Mean time a slot is held (exponentially weighted; ``None`` before any call)."""
        self.refused = 0
        """Calls refused so far."""
        self.listeners: list[RefusalListener] = []
        """Told of each refusal, under the scheduler's lock: keep them quick (a counter) and
        never call back into the scheduler."""

    @property
    def in_use(self) -> int:
        """Slots taken now."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._waiters)

    def estimated_wait_s(self, priority: Priority) -> float:
        """How long a call of ``priority`` asking now would wait (0 with a slot free)."""
        with self._lock:
            return self._estimate_locked(priority)

    async def acquire(self, priority: Priority | None = None) -> Slot:
        """Take a slot, waiting for one by priority (default: the context's, ``current()``).

        Raises:
            EngineBusy: refused: partial work with no slot free, the queue is full of calls as
                urgent, the estimated wait is past ``max_wait_s``, or the wait reached twice it.
        """
        prio = current() if priority is None else priority
        future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._in_use < self.capacity:
                return self._grant_locked()
            if prio is Priority.PARTIAL:
                raise self._busy_locked(
                    "partial work does not wait for a busy engine", prio, "partial"
                )
            wait = self._estimate_locked(prio)
            if wait > self.max_wait_s:
                raise self._busy_locked(
                    f"the estimated wait is {wait:.1f} s", prio, "estimated_wait"
                )
            evicted: _Waiter | None = None
            if len(self._waiters) >= self.max_queue:
                worst = max(self._waiters, key=lambda w: (w.priority, w.order), default=None)
                if worst is None or worst.priority <= prio:
                    raise self._busy_locked(
                        f"{len(self._waiters)} calls are waiting", prio, "queue_full"
                    )
                self._waiters.remove(worst)
                evicted = worst
            self._order += 1
            waiter = _Waiter(prio, self._order, future)
            self._waiters.append(waiter)
            if evicted is not None:
                refusal = self._busy_locked(
                    "a more urgent call took its place", evicted.priority, "displaced"
                )
        if evicted is not None:
            evicted.resolve(refusal)
        limit = self.max_wait_s * _HARD_WAIT_FACTOR
        try:
            await asyncio.wait({future}, timeout=limit)
        except BaseException:
            self._abandon(waiter)
            raise
        if not future.done():
            self._abandon(waiter)
            with self._lock:
                raise self._busy_locked(
                    f"no slot came free within {limit:g} s", prio, "wait_timeout"
                )
        return future.result()  # EngineBusy if a more urgent call took its place

    def _grant_locked(self) -> Slot:
        self._in_use += 1
        return Slot(self, self._clock())

    def _estimate_locked(self, priority: Priority) -> float:
        if self._in_use < self.capacity:
            return 0.0
        ahead = sum(1 for w in self._waiters if w.priority <= priority)
        return (ahead + 1) / self.capacity * (self.mean_call_s or 0.0)

    def _freed_locked(self, granted_at: float) -> list[tuple[_Waiter, Slot]]:
        """A slot came back: learn how long it was held, and grant the waiters now served."""
        held = max(0.0, self._clock() - granted_at)
        mean = self.mean_call_s
        self.mean_call_s = held if mean is None else mean + _EWMA_WEIGHT * (held - mean)
        self._in_use -= 1
        grants = []
        while self._waiters and self._in_use < self.capacity:
            best = min(self._waiters, key=lambda w: (w.priority, w.order))
            self._waiters.remove(best)
            grants.append((best, self._grant_locked()))
        return grants

    def _abandon(self, waiter: _Waiter) -> None:
        """The waiter gave up (cancelled, or waited too long): out of the queue; a slot granted
        meanwhile goes back (``_Waiter._set`` releases one that arrives after this)."""
        with self._lock:
            queued = waiter in self._waiters
            if queued:
                self._waiters.remove(waiter)
        future = waiter.future
        if future.done() and not future.cancelled() and future.exception() is None:
            future.result().release()
        elif not future.done():
            future.cancel()

    def _busy_locked(self, why: str, priority: Priority, reason: str) -> EngineBusy:
        self.refused += 1
        for listener in self.listeners:
            listener(self, reason)
        retry = max(1.0, math.ceil(self._estimate_locked(priority)))
        return EngineBusy(
            f"{self.name} is busy ({self._in_use} of {self.capacity} calls running, "
            f"{len(self._waiters)} waiting): {why}",
            stage=self.stage,
            backend=self.name,
            retry_after_s=retry,
        )


# -- the slot of the call in progress, for the worker threads it starts ---------------------

_holding: ContextVar[Slot | None] = ContextVar("voxline_engine_slot", default=None)


@contextlib.contextmanager
def holding(slot: Slot | None) -> Iterator[None]:
    """Mark ``slot`` as the current call's while the block runs (the chain wraps each step of a
    backend in it, so the worker thread that step starts can take the slot over)."""
    token = _holding.set(slot)
    try:
        yield
    finally:
        _holding.reset(token)


def delegate() -> Callable[[], None] | None:
    """For engine work starting in a worker thread: take over the current call's slot.

    Returns the function the thread calls (from itself) when its work has ended, or ``None``
    when no slot is held here.
    """
    slot = _holding.get()
    return slot._take_over() if slot is not None else None
