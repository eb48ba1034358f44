"""A model loaded once, on first use or ahead of it, from whichever thread asks first.

Engines keep construction cheap and load in ``load()`` (off the event loop) or lazily in their
worker thread; ``aclose()`` may run while a load is in progress. This holds the one lock and the
closed flag that make those three meet safely.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from pipeline.errors import EngineUnavailable, Stage

T = TypeVar("T")


class LazyModel(Generic[T]):
    """Loads with ``load()`` once; after ``close()`` it refuses to load again.

    Args:
        load: The blocking loader.
        stage: The engine's stage (for the error).
        backend: The engine's backend name (for the error).
    """

    def __init__(self, load: Callable[[], T], *, stage: Stage, backend: str) -> None:
        self._load = load
        self._stage = stage
        self._backend = backend
        self._value: T | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._value is not None

    def get(self) -> T:
        """The model, loaded now if it is not yet.

        Raises:
            EngineUnavailable: the engine was closed (before or during the load).
        """
        value = self._value
        if value is not None:
            return value
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._value is None:
                self._value = self._load()
                if self._closed:  # close() ran while we were loading
                    self._value = None
                    raise self._closed_error()
            return self._value

    def close(self) -> T | None:
        """Refuse later loads; return the loaded model (if any) for the caller to free."""
        self._closed = True
        value, self._value = self._value, None
        return value

    def _closed_error(self) -> EngineUnavailable:
        return EngineUnavailable("the engine is closed", stage=self._stage, backend=self._backend)


@contextlib.contextmanager
def decoding_slot(lock: threading.Lock, stop: threading.Event) -> Iterator[bool]:
    """Hold an engine's one decoding slot (its model decodes one reply at a time); yields
    ``False`` instead if ``stop`` is set while waiting for it (the consumer went away)."""
    while not lock.acquire(timeout=0.05):
        if stop.is_set():
            yield False
            return
    try:
        yield True
    finally:
        lock.release()
