"""The engine scheduler: capacity, the priority queue, refusals, and slots held by threads.

Everything waits on the event loop's virtual clock (``looptime``), which is also the
scheduler's clock here: a 5 s bound costs no real time, and who got a slot when is exact.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pipeline.errors import EngineBusy
from pipeline.offload import iterate_in_thread
from pipeline.priority import Priority, priority
from pipeline.scheduler import EngineScheduler, Slot, holding
from tests.fakes import loop_time

pytestmark = pytest.mark.looptime

P = Priority


def engine(
    capacity: int = 1,
    max_queue: int = 8,
    max_wait_s: float = 5.0,
    clock: Callable[[], float] = loop_time,
) -> EngineScheduler:
    return EngineScheduler(
        "whisper:cpu",
        stage="stt",
        capacity=capacity,
        max_queue=max_queue,
        max_wait_s=max_wait_s,
        clock=clock,
    )


async def hold(sched: EngineScheduler, seconds: float, prio: Priority, log: list[str]) -> None:
    """A call that takes a slot at ``prio`` and keeps it ``seconds``; logs when it got it."""
    slot = await sched.acquire(prio)
    log.append(f"{prio.name}@{loop_time():g}")
    await asyncio.sleep(seconds)
    slot.release()


async def started(*coros: object) -> list[asyncio.Task[None]]:
    """Start each call in order, letting each reach the scheduler before the next."""
    tasks = []
    for coro in coros:
        tasks.append(asyncio.create_task(coro))  # type: ignore[arg-type]
        await asyncio.sleep(0)
    return tasks


async def test_a_free_slot_is_taken_at_once_and_capacity_is_never_exceeded() -> None:
    sched, log = engine(capacity=2), []
    tasks = await started(*(hold(sched, 1.0, P.INTERACTIVE, log) for _ in range(5)))
    assert sched.in_use == 2 and sched.waiting == 3
    await asyncio.gather(*tasks)
    # two at a time, each starting when one ends
    assert log == [f"INTERACTIVE@{t}" for t in (0, 0, 1, 1, 2)]
    assert sched.in_use == 0 and sched.mean_call_s == pytest.approx(1.0)


async def test_waiters_are_served_by_priority_then_in_order_of_arrival() -> None:
    sched, log = engine(), []
    tasks = await started(
        hold(sched, 1.0, P.INTERACTIVE, log),  # takes the engine
        hold(sched, 1.0, P.BATCH, log),
        hold(sched, 1.0, P.SPECULATIVE, log),
        hold(sched, 1.0, P.INTERACTIVE, log),
        hold(sched, 1.0, P.SPECULATIVE, log),
    )
    await asyncio.gather(*tasks)
    assert log == [
        "INTERACTIVE@0",
        "INTERACTIVE@1",  # the final that came last goes first
        "SPECULATIVE@2",
        "SPECULATIVE@3",
        "BATCH@4",  # batch work only gets what nobody else wants
    ]


async def test_the_priority_comes_from_the_context_by_default() -> None:
    sched, log = engine(), []
    first = await started(hold(sched, 1.0, P.INTERACTIVE, log))
    with priority(P.PARTIAL):
        with pytest.raises(EngineBusy):
            await sched.acquire()
    await asyncio.gather(*first)
    with priority(P.PARTIAL):
        (await sched.acquire()).release()  # a free engine serves partials too


async def test_partial_work_is_refused_when_the_engine_is_busy_never_queued() -> None:
    sched, log = engine(), []
    tasks = await started(hold(sched, 1.0, P.INTERACTIVE, log))
    before = loop_time()
    with pytest.raises(EngineBusy) as refused:
        await sched.acquire(P.PARTIAL)
    assert loop_time() == before  # at once: no waiting
    assert sched.waiting == 0
    assert refused.value.retryable and refused.value.retry_after_s is not None
    assert refused.value.retry_after_s >= 1
    await asyncio.gather(*tasks)


async def test_a_full_queue_refuses_at_once_unless_a_more_urgent_call_displaces_the_worst() -> None:
    sched, log = engine(max_queue=2), []
    tasks = await started(
        hold(sched, 1.0, P.INTERACTIVE, log),
        hold(sched, 1.0, P.SPECULATIVE, log),
        hold(sched, 1.0, P.BATCH, log),
    )
    assert sched.waiting == 2
    with pytest.raises(EngineBusy):  # as urgent as the worst waiter: refused
        await sched.acquire(P.BATCH)
    displaced = tasks[2]
    tasks.append(asyncio.create_task(hold(sched, 1.0, P.INTERACTIVE, log)))
    with pytest.raises(EngineBusy):  # the batch waiter gave its place to the final
        await displaced
    await asyncio.gather(*tasks[:2], tasks[3])
    assert log == ["INTERACTIVE@0", "INTERACTIVE@1", "SPECULATIVE@2"]


async def test_a_call_whose_estimated_wait_is_too_long_is_refused_at_once() -> None:
    sched, log = engine(max_wait_s=2.5), []
    await hold(sched, 1.0, P.INTERACTIVE, log)  # the engine takes about 1 s a call
    tasks = await started(
        hold(sched, 1.0, P.INTERACTIVE, log),  # running
        hold(sched, 1.0, P.INTERACTIVE, log),  # waits ~1 s
        hold(sched, 1.0, P.INTERACTIVE, log),  # waits ~2 s
    )
    before = loop_time()
    with pytest.raises(EngineBusy) as refused:  # would wait ~3 s
        await sched.acquire(P.INTERACTIVE)
    assert loop_time() == before
    assert refused.value.retry_after_s == 3
    # a speculative call behind them all would wait longer still; a batch one too
    assert sched.estimated_wait_s(P.BATCH) == pytest.approx(3.0)
    await asyncio.gather(*tasks)


async def test_a_waiter_gives_up_at_twice_the_bound_when_no_slot_comes_free() -> None:
    sched = engine(max_wait_s=1.0)
    stuck = await sched.acquire(P.INTERACTIVE)  # an engine that stopped finishing calls
    before = loop_time()
    with pytest.raises(EngineBusy):
        await sched.acquire(P.INTERACTIVE)
    assert loop_time() - before == pytest.approx(2.0)
    assert sched.waiting == 0
    stuck.release()
    (await sched.acquire(P.INTERACTIVE)).release()


async def test_a_cancelled_waiter_leaves_the_queue_and_a_slot_granted_to_it_comes_back() -> None:
    sched = engine()
    first = await sched.acquire(P.INTERACTIVE)
    waiter = asyncio.create_task(sched.acquire(P.INTERACTIVE))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert sched.waiting == 0
    # granted, then cancelled before it could run: the slot is not lost
    granted = asyncio.create_task(sched.acquire(P.INTERACTIVE))
    await asyncio.sleep(0)
    first.release()
    granted.cancel()
    await asyncio.gather(granted, return_exceptions=True)
    await asyncio.sleep(0)
    assert sched.in_use == 0
    (await sched.acquire(P.PARTIAL)).release()


async def test_release_is_idempotent() -> None:
    sched = engine(capacity=2)
    slot = await sched.acquire(P.INTERACTIVE)
    other = await sched.acquire(P.INTERACTIVE)
    slot.release()
    slot.release()
    assert sched.in_use == 1
    other.release()


# -- a worker thread holds its call's slot until it ends ---------------------------------------


def _worker(gate: threading.Event, done: threading.Event, items: int) -> object:
    def make(stop: threading.Event) -> Iterator[int]:
        try:
            for i in range(items):
                yield i
                gate.wait(5)  # the engine's next step takes until the test says so
        finally:
            done.set()

    return make


async def test_a_worker_thread_frees_the_slot_when_it_ends_not_when_its_consumer_does() -> None:
    sched = engine(clock=time.monotonic)  # read by the worker thread: no loop there
    gate, done = threading.Event(), threading.Event()
    slot: Slot = await sched.acquire(P.INTERACTIVE)
    with holding(slot):
        items = iterate_in_thread(_worker(gate, done, 3), thread_name="test-worker")
        first = await anext(items)
    slot.release()  # the call's end: the thread has taken the slot over
    assert first == 0
    await items.aclose()  # the consumer left; the engine is still inside its step
    assert sched.in_use == 1 and not slot.freed
    gate.set()  # the step ends, the thread sees the stop event and ends
    await asyncio.to_thread(done.wait, 60)
    for _ in range(3000):  # the thread frees the slot as its very last act (a hang guard)
        if slot.freed:
            break
        await asyncio.to_thread(threading.Event().wait, 0.01)
    assert slot.freed and sched.in_use == 0


async def test_a_slow_consumer_does_not_hold_the_engine_once_the_thread_is_done() -> None:
    sched = engine(clock=time.monotonic)
    gate, done = threading.Event(), threading.Event()
    gate.set()
    slot = await sched.acquire(P.INTERACTIVE)
    with holding(slot):
        items = iterate_in_thread(_worker(gate, done, 3), thread_name="test-worker")
        assert await anext(items) == 0
    await asyncio.to_thread(done.wait, 60)
    for _ in range(3000):  # a hang guard, not a budget
        if slot.freed:
            break
        await asyncio.to_thread(threading.Event().wait, 0.01)
    # the consumer has read one item of three and not released: the engine is free anyway
    assert slot.freed and sched.in_use == 0
    assert [item async for item in items] == [1, 2]
    slot.release()  # the call's end after its thread's: nothing more to give back
    assert sched.in_use == 0
