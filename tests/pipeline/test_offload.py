"""Blocking generators drained in a worker thread: order, errors, stopping, a free event loop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import cast

import pytest

from pipeline.offload import iterate_in_thread


def _name() -> str:
    return f"test-offload-{uuid.uuid4().hex[:8]}"


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


async def _until(condition: Callable[[], bool], within: float = 60.0) -> bool:
    """Poll ``condition()`` on the loop (so finalizers and callbacks get to run); ``within`` only
    guards against a hang (a loaded machine is slow, and speed is not what these tests test)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


class Endless:
    """A blocking producer that checks the stop event between items, as engines must."""

    def __init__(self, delay: float = 0.005) -> None:
        self.delay = delay
        self.stop: threading.Event | None = None
        self.produced = 0
        self.closed = threading.Event()

    def __call__(self, stop: threading.Event) -> Iterator[int]:
        self.stop = stop
        return self._run(stop)

    def _run(self, stop: threading.Event) -> Iterator[int]:
        try:
            for i in itertools.count():
                if stop.is_set():
                    return
                time.sleep(self.delay)  # blocking "inference"
                self.produced += 1
                yield i
        finally:
            self.closed.set()


async def test_items_arrive_in_order_then_the_iteration_ends() -> None:
    name = _name()

    def make(stop: threading.Event) -> Iterator[int]:
        return iter(range(500))

    out = [item async for item in iterate_in_thread(make, thread_name=name)]

    assert out == list(range(500))
    assert await _until(lambda: not _threads(name))


async def test_items_are_produced_in_the_named_thread() -> None:
    name = _name()
    seen: list[str] = []

    def make(stop: threading.Event) -> Iterator[str]:
        seen.append(threading.current_thread().name)
        yield threading.current_thread().name

    out = [item async for item in iterate_in_thread(make, thread_name=name)]

    assert out == [name]
    assert seen == [name]
    assert name != threading.current_thread().name


class EngineCrash(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


async def test_worker_exception_is_reraised_unchanged_after_earlier_items() -> None:
    def make(stop: threading.Event) -> Iterator[int]:
        yield 1
        yield 2
        raise EngineCrash("cuda lost")

    received: list[int] = []
    with pytest.raises(EngineCrash) as info:
        async for item in iterate_in_thread(make, thread_name=_name()):
            received.append(item)

    assert received == [1, 2]
    assert info.value.detail == "cuda lost"


async def test_exception_while_building_the_iterator_is_reraised() -> None:
    def make(stop: threading.Event) -> Iterator[int]:
        raise FileNotFoundError("model.bin")

    with pytest.raises(FileNotFoundError, match=r"model\.bin"):
        async for _ in iterate_in_thread(make, thread_name=_name()):
            pass


async def test_breaking_out_stops_the_worker() -> None:
    name = _name()
    producer = Endless()

    async for item in iterate_in_thread(producer, thread_name=name):
        if item == 3:
            break

    # the abandoned async generator is closed by the loop's finalizer hook, which sets the event
    assert await _until(lambda: producer.stop is not None and producer.stop.is_set())
    assert await _until(lambda: not _threads(name))
    assert producer.closed.is_set()  # the generator's finally ran: engines free buffers there
    produced = producer.produced
    await asyncio.sleep(0.05)
    assert producer.produced == produced


async def test_aclose_stops_the_worker_at_once() -> None:
    name = _name()
    producer = Endless()
    # typed AsyncIterator, but it is an async generator: aclose() is what a server calls
    stream = cast(AsyncGenerator[int, None], iterate_in_thread(producer, thread_name=name))

    async with contextlib.aclosing(stream):
        assert await anext(stream) == 0

    assert producer.stop is not None
    assert producer.stop.is_set()
    assert await _until(lambda: not _threads(name))


async def test_cancelling_the_consumer_stops_the_worker() -> None:
    name = _name()
    producer = Endless()
    received: list[int] = []

    async def consume() -> None:
        async for item in iterate_in_thread(producer, thread_name=name):
            received.append(item)

    task = asyncio.create_task(consume())
    assert await _until(lambda: len(received) >= 3)
    assert _threads(name)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert producer.stop is not None
    assert producer.stop.is_set()
    assert await _until(lambda: not _threads(name))
    assert producer.closed.is_set()


async def test_the_event_loop_stays_responsive_while_the_worker_blocks() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1
            if ticks == 3:
                ticked.set()

    def make(stop: threading.Event) -> Iterator[str]:
        # one long blocking call (e.g. an encoder pass) that ends only once the loop has ticked:
        # run on the loop itself, it would wait out its 60 s guard and fail
        assert ticked.wait(60), "the event loop did not run while the work blocked"
        yield "done"

    ticked = threading.Event()
    ticking = asyncio.create_task(ticker())
    try:
        out = [item async for item in iterate_in_thread(make, thread_name=_name())]
    finally:
        ticking.cancel()

    assert out == ["done"] and ticks >= 3
