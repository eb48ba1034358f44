"""Price what a request used, once its engine stream has finished.

The HTTP routes hand their stage stream through :func:`metered`; when the stream ends, or when
the route closes it once it has what it needs (a final transcript), the callback gets the items
it produced and its wall time, and records metrics and a ledger charge. A stream that failed is
not charged. Turns and realtime responses are priced where they finish.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from typing import TypeVar

T = TypeVar("T")


async def metered(
    stream: AsyncGenerator[T, None], on_done: Callable[[list[T], float], None]
) -> AsyncGenerator[T, None]:
    """``stream``, passed through; ``on_done(items, seconds)`` once it has finished or been
    closed by its consumer (not when it raised)."""
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
