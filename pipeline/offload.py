"""Run blocking engine work off the event loop.

Inference libraries (CTranslate2, torch, onnxruntime, llama.cpp) are synchronous and hold the GIL
only part of the time. We drain their sync generators in a worker thread into an ``asyncio.Queue``
so the loop stays free for I/O, and we stop the worker through a ``threading.Event`` that the
engine checks between segments/tokens/chunks when the consumer goes away (cancel, disconnect,
``aclose()``). The thread is a daemon: a worker stuck inside one native call must not block
interpreter exit.

The worker takes over the engine slot of the call that started it (``pipeline.scheduler``) and
gives it back when it ends: the engine is busy exactly as long as its thread works, however
slowly the consumer reads what it produced, and a cancelled call's slot comes back only once its
engine has really stopped. The queue is unbounded on purpose: one call's output is bounded by
the call (a reply's ``max_tokens``, one phrase's audio, one clip's segments), and a thread that
never waits for its consumer is what lets the engine move on to the next caller.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import TypeVar

from pipeline import scheduler

T = TypeVar("T")

_ITEM, _ERROR, _END = 0, 1, 2


async def iterate_in_thread(
    make_iter: Callable[[threading.Event], Iterator[T]],
    *,
    thread_name: str,
) -> AsyncGenerator[T, None]:
    """Yield the items of ``make_iter(stop)`` as they are produced in a worker thread.

    Args:
        make_iter: Builds the blocking iterator. It receives the stop event and should check it
            between items (the items it has produced after the stop are dropped anyway).
        thread_name: Name of the worker thread (tests and debuggers find it by this name).

    The worker's exceptions are re-raised here, unchanged, so the caller translates them.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
    stop = threading.Event()
    free_slot = scheduler.delegate()

    def post(kind: int, value: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop closed under us: nobody is listening any more
            stop.set()

    def work() -> None:
        iterator: Iterator[T] | None = None
        try:
            iterator = make_iter(stop)
            for item in iterator:
                if stop.is_set():
                    break
                post(_ITEM, item)
        except BaseException as exc:  # delivered to the consumer, who translates it
            post(_ERROR, exc)
        else:
            post(_END, None)
        finally:
            try:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()  # a generator's finally blocks (free buffers, stop upstream) run now
            finally:
                if free_slot is not None:
                    free_slot()  # the engine is idle again (thread-safe)

    thread = threading.Thread(target=work, name=thread_name, daemon=True)
    try:
        thread.start()
    except BaseException:
        if free_slot is not None:
            free_slot()  # no thread will
        raise
    try:
        while True:
            kind, value = await queue.get()
            if kind == _ITEM:
                yield value  # type: ignore[misc]  # produced by make_iter, so a T
            elif kind == _ERROR:
                assert isinstance(value, BaseException)
                raise value
            else:
                return
    finally:
        stop.set()
