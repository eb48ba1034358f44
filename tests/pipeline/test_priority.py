"""The priority context: set around work, inherited by the tasks it creates, restored after."""

from __future__ import annotations

import asyncio

from pipeline.priority import Priority, current, priority


async def test_priority_is_inherited_by_tasks_and_restored() -> None:
    seen: list[Priority] = []

    async def work() -> None:
        seen.append(current())

    assert current() is Priority.INTERACTIVE
    with priority(Priority.BATCH):
        task = asyncio.create_task(work())
        with priority(Priority.PARTIAL):
            await work()
        await work()
    await task
    await work()
    assert seen == [Priority.PARTIAL, Priority.BATCH, Priority.BATCH, Priority.INTERACTIVE]
    assert sorted(Priority) == [
        Priority.INTERACTIVE,
        Priority.SPECULATIVE,
        Priority.PARTIAL,
        Priority.BATCH,
    ]
