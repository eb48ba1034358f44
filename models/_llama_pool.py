"""The llama.cpp contexts of one engine, one per reply decoded at once.

A ``Llama`` object is one context: one KV cache, one sequence, not thread-safe. To decode
several replies at once (the LLM's ``capacity``) the engine opens that many over the same GGUF
file. The weights are memory-mapped, so on a CPU the copies share one set of pages; each context
adds its own KV cache (for SmolLM2-135M at 2048 tokens, about 50 MB).

llama.cpp reuses the longest prefix of the previous prompt that its context still holds (a
session's whole conversation so far). So a reply whose messages continue those of a free
context's last call (the same conversation, one turn on, or read ahead by ``prefill``) takes
that context; any other reply takes the context used least recently, keeping the others'
conversations warm. (Choosing by the longest shared token prefix would not: every conversation
shares the system prompt, so each new one would land on, and evict, the last conversation that
ran with it; and a prefilled conversation's tokens end in an assistant cue that the next turn's
prompt does not continue.)

llama.cpp can also decode several sequences in one context, in one batch, but llama-cpp-python
0.3 exposes that only as its low-level C API: generation, sampling and grammars in ``Llama`` are
single-sequence.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

_POLL_S = 0.05  # how often a waiting reply looks at its stop event


@dataclass(eq=False)
class _Context:
    llama: Any  # llama_cpp.Llama
    busy: bool = False
    last_used: int = 0
    messages: tuple[Any, ...] = ()  # of the last call it served


class ContextPool:
    """Hands out free contexts, the warmest for the prompt first.

    Args:
        llamas: The contexts (``llama_cpp.Llama`` objects over the same model).
    """

    def __init__(self, llamas: Sequence[Any]) -> None:
        if not llamas:
            raise ValueError("a pool needs at least one context")
        self._contexts = [_Context(llama) for llama in llamas]
        self._ready = threading.Condition()
        self._uses = itertools.count(1)
        self._closed = False

    @property
    def llamas(self) -> list[Any]:
        """Every context, in the order given."""
        return [c.llama for c in self._contexts]

    @contextlib.contextmanager
    def take(
        self,
        messages: Sequence[Any],
        stop: threading.Event,
        *,
        only: int | None = None,
        wait: bool = True,
    ) -> Iterator[Any | None]:
        """Hold a free context for one call: the one whose last call's messages ``messages``
        continue (the longest such), else the one used least recently.

        Waits while every context is busy (more replies than contexts: calls that did not go
        through the engine's scheduler); yields ``None`` instead if ``stop`` is set meanwhile
        (the consumer went away), the pool was closed, or ``wait`` is false.

        Args:
            messages: The call's conversation (``Message`` values, compared by value).
            stop: Set when the consumer goes away.
            only: Take this context (by index) and no other (warming each one up).
            wait: Whether to wait for a busy context (``False``: best-effort work).
        """
        context = self._acquire(tuple(messages), stop, only, wait)
        if context is None:
            yield None
            return
        try:
            yield context.llama
        finally:
            self._release(context)

    def close(self) -> None:
        """Free every idle context now; a busy one is freed when its reply ends."""
        with self._ready:
            self._closed = True
            idle = [c for c in self._contexts if not c.busy]
            self._ready.notify_all()
        for context in idle:
            context.llama.close()

    def _acquire(
        self, messages: tuple[Any, ...], stop: threading.Event, only: int | None, wait: bool
    ) -> _Context | None:
        candidates = self._contexts if only is None else [self._contexts[only]]
        with self._ready:
            while not self._closed and not stop.is_set():
                free = [c for c in candidates if not c.busy]
                if free:
                    best = _warmest(free, messages)
                    best.busy, best.messages = True, messages
                    return best
                if not wait:
                    break
                self._ready.wait(_POLL_S)
        return None

    def _release(self, context: _Context) -> None:
        with self._ready:
            context.busy = False
            context.last_used = next(self._uses)
            closed = self._closed
            self._ready.notify()
        if closed:  # the engine closed during this reply: free its context now
            context.llama.close()


def _warmest(free: Sequence[_Context], messages: tuple[Any, ...]) -> _Context:
    """The free context to serve ``messages`` in."""
    continued = [c for c in free if c.messages and messages[: len(c.messages)] == c.messages]
    if continued:
        return max(continued, key=lambda c: len(c.messages))
    return min(free, key=lambda c: c.last_used)
