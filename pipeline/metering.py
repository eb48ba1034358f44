"""Metering: the engine work done for one billable unit, collected where the work happens.

Every stage call of an engine ends in the stage base class (``pipeline.stages``), which knows what
the call consumed and produced: seconds of audio transcribed and the engine's own time, the LLM's
prompt and completion tokens as the engine counted them, characters spoken and seconds of audio
synthesized. It hands that ``CallRecord`` to the ``Meter`` of the current context, so whoever
opened the meter (an HTTP request, a realtime transcription job, a realtime response) gets exactly
the calls made on its behalf, including those made in tasks it created (context variables are
copied into child tasks) and those of every backend a fallback chain tried. A chain's own call is
not metered: its backends report theirs.

Nothing here prices anything or decides what is billed: the server's accounting does both, from
these records, for every route and the realtime session alike (docs/architecture.md, "Accounting").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the stage base class imports this module
    from pipeline.stages import CallRecord

_current: ContextVar[Meter | None] = ContextVar("voxline_meter", default=None)


class Meter:
    """Collects the records of the engine calls made while it is bound."""

    def __init__(self) -> None:
        self._calls: list[CallRecord] = []

    @property
    def calls(self) -> tuple[CallRecord, ...]:
        """The calls recorded so far, in the order they ended."""
        return tuple(self._calls)

    def add(self, record: CallRecord) -> None:
        """Record one finished call."""
        self._calls.append(record)

    def take(self) -> tuple[CallRecord, ...]:
        """The calls recorded so far, forgotten here (so they are accounted once)."""
        calls, self._calls = tuple(self._calls), []
        return calls

    @contextlib.contextmanager
    def bind(self) -> Iterator[Meter]:
        """Make this the meter of the current context (and of tasks created in it)."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)


def current() -> Meter | None:
    """The meter of the current context, if one is bound."""
    return _current.get()


def observe(record: CallRecord) -> None:
    """Hand a finished engine call to the current meter (none bound: nobody bills it)."""
    meter = _current.get()
    if meter is not None:
        meter.add(record)
