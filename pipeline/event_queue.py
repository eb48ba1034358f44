"""A queue of outgoing events bounded by their weight, never blocking where it need not.

Audio is almost all of what a session sends, and the only thing it makes faster than a client
plays it. So each event has a weight (seconds of audio, bytes on the wire; a transcript or a
marker weighs little or nothing), and whoever makes the heavy ones waits for room
(``wait_room``) before adding one: that is how a client that reads slowly pauses its own
synthesis. Adding (``put_nowait``) never waits, so callbacks that cannot wait still report
events; those are few per turn, and bounded by the turns in flight, which stop when the client's
commands stop being applied (the connection applies none while its outbox is full).

The bound is on the weight queued when an event is added, so the queue holds at most
``max_weight`` plus one event: a phrase of audio is one event, and it is not split here.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class EventQueue(Generic[T]):
    """FIFO of events whose total weight is bounded for those who wait for room.

    Args:
        max_weight: Room is left while less than this is queued.
        weight: The weight of an event (0: it never counts).
    """

    def __init__(self, max_weight: float, weight: Callable[[T], float]) -> None:
        if max_weight <= 0:
            raise ValueError("max_weight must be positive")
        self._queue: asyncio.Queue[tuple[T, float]] = asyncio.Queue()
        self._max = max_weight
        self._weigh = weight
        self._weight = 0.0
        self._room = asyncio.Event()
        self._room.set()

    @property
    def weight(self) -> float:
        """The weight queued now."""
        return self._weight

    def put_nowait(self, event: T) -> None:
        """Queue ``event`` now (a heavy one should have waited for room first)."""
        weight = self._weigh(event)
        self._weight += weight
        if self._weight >= self._max:
            self._room.clear()
        self._queue.put_nowait((event, weight))

    async def wait_room(self) -> None:
        """Wait until less than ``max_weight`` is queued."""
        await self._room.wait()

    def unbound(self) -> None:
        """Never wait for room again (the consumer is ending: what is left goes in at once)."""
        self._max = math.inf
        self._room.set()

    async def get(self) -> T:
        """The next event, waiting for one."""
        event, weight = await self._queue.get()
        self._weight -= weight
        if self._weight < self._max:
            self._room.set()
        return event
