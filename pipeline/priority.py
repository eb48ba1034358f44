"""Who a piece of engine work is for: the priority every engine call inherits from its context.

Interactive work comes first, always: a user is waiting on it. Work that may be thrown away
(speculative transcriptions and replies) comes next, partial transcripts after it (a courtesy,
dropped rather than queued when the engine is busy), and durable batch jobs use spare capacity
only. Whoever starts a piece of work sets its priority around it (``with priority(...)``); the
engine scheduler reads ``current()`` when a call asks for a slot (docs/architecture.md,
"Admission and scheduling"). Like the meter (``pipeline.metering``), it is a context variable, so
tasks created inside inherit it.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from contextvars import ContextVar


class Priority(enum.IntEnum):
    """Lower value, served first."""

    INTERACTIVE = 0
    """A user is waiting: final transcripts, replies being heard, HTTP requests."""
    SPECULATIVE = 1
    """Work that may be dropped: speculative transcriptions and replies."""
    PARTIAL = 2
    """Partial transcripts: never queued behind busy engines, dropped instead."""
    BATCH = 3
    """Durable jobs: only on capacity no interactive work wants."""


_current: ContextVar[Priority] = ContextVar("voxline_priority", default=Priority.INTERACTIVE)


def current() -> Priority:
    """The priority of the work being done in this context (default: interactive)."""
    return _current.get()


@contextlib.contextmanager
def priority(value: Priority) -> Iterator[Priority]:
    """Run the block (and the tasks it creates) at ``value``."""
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)
