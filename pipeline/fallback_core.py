"""The engine of a fallback chain: order, deadlines, breakers, probes and reports.

Stage-independent: :mod:`pipeline.fallback` builds the STT, LLM and TTS chains on it, each with a
:class:`StageCall` that knows how its stage starts a backend and takes over midway. The rules are
in that module's docstring; this one holds how they run:

- one call is :meth:`Chain._drive`: it walks the backends in order (demoted ones last), skips
  those whose breaker is open, and runs each through :meth:`Chain._attempt`, which reads the
  backend under ``asyncio.timeout`` per ``__anext__`` and turns every reason to move on into
  ``_Failed``. When every breaker is open the backends are tried in order anyway: a chain never
  fails without trying;
- an attempt first takes a slot of its backend's engine (``pipeline.scheduler``), and only then
  starts the deadline clock: time spent waiting for a busy engine is neither a timeout nor a
  latency sample. A refusal (``EngineBusy``) moves the call on to the next backend without a
  verdict on the refusing one (its breaker does not count it); when no backend admits the call,
  the refusal is what the caller gets (a 503 with ``Retry-After``);
- a failure counts against the backend's breaker; the breaker opening starts a probe task, which
  ends when the backend is healthy again; ``aclose()`` cancels the probes;
- the report of every call goes to the collector of the caller's context and to
  ``report_listeners`` (:mod:`pipeline.fallback_types`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

from pipeline.breaker import BackendState, CircuitBreaker, LatencyWindow
from pipeline.errors import (
    EngineBusy,
    EngineTimeout,
    EngineUnavailable,
    InvalidInput,
    ModelLoadError,
    Stage,
    StageError,
    VoxlineError,
)
from pipeline.fallback_types import (
    Fallback,
    FallbackPolicy,
    FallbackReason,
    FallbackReport,
    current_reports,
)
from pipeline.scheduler import holding
from pipeline.stages import _Stage

log = logging.getLogger("voxline.fallback")

B = TypeVar("B", bound=_Stage)
T = TypeVar("T")


class Unusable(Exception):
    """A backend's output cannot be used. ``salvage`` is what the last backend may still yield
    (``None``: nothing, the output is corrupt)."""

    def __init__(self, what: str, salvage: list[object] | None) -> None:
        super().__init__(what)
        self.salvage = salvage


class _Failed(Exception):
    """Raised by one attempt: the chain should move on (``error`` says why)."""

    def __init__(self, reason: FallbackReason, error: Exception) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class _Refused(Exception):
    """Raised by one attempt: the backend's scheduler refused the call (no verdict on it)."""

    def __init__(self, error: EngineBusy) -> None:
        super().__init__(error)
        self.error = error


class StageCall(abc.ABC, Generic[B, T]):
    """The stage-specific half of one chain call: how to start a backend, what to pass on."""

    produced = False  # the consumer has received output (set by the driver)
    done = False  # the answer is complete: stop reading the backend

    @abc.abstractmethod
    def begin(self, backend: B) -> AsyncGenerator[T, None]:
        """Start the call on ``backend``, taking over from what was already sent."""

    @abc.abstractmethod
    def accept(self, item: T) -> list[T]:
        """What to pass on for one backend item (raise ``Unusable`` for garbage)."""

    def finish(self) -> list[T]:
        """The backend's stream ended: what is left to pass on (raise ``Unusable``)."""
        return []


@dataclass(eq=False)
class _Entry(Generic[B]):
    backend: B
    breaker: CircuitBreaker
    latency: LatencyWindow
    start_failed: bool = False
    start_error: str | None = None
    probe_task: asyncio.Task[None] | None = None
    # one recovery (start again, probe) at a time: the probe loop and recover() may race
    recovering: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


class Chain(Generic[B]):
    """The stage-independent half of a chain: ordering, deadlines, breakers, probes, reports."""

    name: str
    stage: Stage
    device: str
    metered = False  # its backends' calls are metered, each where it ran (pipeline.metering)

    def _setup(self, backends: Sequence[B], policy: FallbackPolicy | None) -> None:
        names = [b.name for b in backends]
        if not backends:
            raise ValueError("a fallback chain needs at least one backend")
        if len(set(names)) != len(names):
            raise ValueError(f"backend names must be unique within a chain: {names}")
        self.policy = policy = policy or FallbackPolicy()
        self.report_listeners: list[Callable[[FallbackReport], None]] = []
        self._closed = False
        self._entries = [
            _Entry(
                b,
                CircuitBreaker(
                    threshold=policy.failure_threshold,
                    retry_after_s=policy.trial_interval_s,
                    clock=_loop_time,
                ),
                LatencyWindow(
                    budget_s=policy.first_output_budget_s,
                    size=policy.latency_window,
                    min_samples=policy.latency_min_samples,
                    demote_for_s=policy.trial_interval_s,
                    clock=_loop_time,
                ),
            )
            for b in backends
        ]

    @property
    def backends(self) -> tuple[B, ...]:
        """The backends, in order of preference."""
        return tuple(e.backend for e in self._entries)

    def backend_states(self) -> tuple[BackendState, ...]:
        """Each backend's health, in order of preference (for ``/readyz``)."""
        return tuple(
            BackendState(
                name=e.backend.name,
                device=e.backend.device,
                state=e.breaker.state,
                consecutive_failures=e.breaker.consecutive_failures,
                last_error=e.breaker.last_error,
                demoted=e.latency.demoted,
                p95_first_output_ms=None if (p95 := e.latency.p95()) is None else p95 * 1000,
                started=not e.start_failed,
                start_error=e.start_error if e.start_failed else None,
            )
            for e in self._entries
        )

    def serving_backends(self) -> tuple[B, ...]:
        """The backends whose ``start()`` succeeded, in order (all of them before ``start()``,
        or when none started)."""
        started = tuple(e.backend for e in self._entries if not e.start_failed)
        return started or self.backends

    async def start(self) -> None:
        """Start every backend, one at a time. A backend that fails to start is skipped (its
        breaker opens and its probe retries the start); the chain fails only when none starts.

        Raises:
            VoxlineError: no backend started (the error itself when the chain has one backend).
        """
        errors: list[tuple[str, Exception]] = []
        for entry in self._entries:
            try:
                await entry.backend.start()
            except Exception as exc:  # one backend's failure must not stop the others
                log.warning("%s: backend %s did not start: %s", self.name, entry.backend.name, exc)
                entry.start_failed = True
                entry.start_error = _start_error(exc)
                self._failed(entry, exc, force=True)
                errors.append((entry.backend.name, exc))
            else:
                entry.start_failed = False
                entry.start_error = None
        self._refresh_capabilities()
        if len(errors) == len(self._entries):
            _raise_all(self.stage, self.name, "start", errors)

    async def warm(self) -> None:
        """Warm up every started backend; a failure counts against that backend's breaker.

        Raises:
            VoxlineError: every backend failed to warm up.
        """
        errors: list[tuple[str, Exception]] = []
        entries = [e for e in self._entries if not e.start_failed]
        for entry in entries:
            try:
                await entry.backend.warm()
            except Exception as exc:  # one backend's failure must not stop the others
                log.warning(
                    "%s: backend %s did not warm up: %s", self.name, entry.backend.name, exc
                )
                self._failed(entry, exc)
                errors.append((entry.backend.name, exc))
        if entries and len(errors) == len(entries):
            _raise_all(self.stage, self.name, "warm up", errors)

    async def aclose(self) -> None:
        """Stop the probes, then close every backend."""
        self._closed = True
        probes = [e.probe_task for e in self._entries if e.probe_task is not None]
        for probe in probes:
            probe.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
        for entry in self._entries:
            try:
                await entry.backend.aclose()
            except Exception as exc:  # closing the others matters more than this error
                log.warning("%s: closing %s failed: %s", self.name, entry.backend.name, exc)

    def refresh_capabilities(self) -> None:
        """Derive the chain's capabilities from its backends' again: call it after changing a
        backend's (a GPT-SoVITS voice added or removed at run time)."""
        self._refresh_capabilities()

    def _refresh_capabilities(self) -> None:
        """Derive the chain's capabilities from its backends' (some know theirs after a load)."""

    def _order(self, skipped: list[Fallback]) -> list[_Entry[B]]:
        """The backends in the order this call tries them: demoted ones last."""
        ordered = [e for e in self._entries if not e.latency.demoted]
        demoted = [e for e in self._entries if e.latency.demoted]
        if ordered:  # all demoted is the same as none
            skipped += [Fallback(e.backend.name, None, "demoted") for e in demoted]
        return ordered + demoted

    async def _drive(
        self, call: StageCall[B, T], *, extra_s: float = 0.0
    ) -> AsyncGenerator[T, None]:
        """Run ``call`` on the backends in order: the body of every chain call."""
        collector = current_reports()  # taken now: the report belongs to the caller's context
        fallbacks: list[Fallback] = []
        skipped: list[Fallback] = []  # given up on, waiting for the name of the next backend
        served: str | None = None
        error: str | None = "CancelledError"
        ordered = self._order(skipped)
        try:
            failure: tuple[str, Exception] | None = None  # the last backend and its error
            busy: EngineBusy | None = None  # the last refusal by a backend's scheduler
            for last_resort in (False, True):
                for index, entry in enumerate(ordered):
                    name = entry.backend.name
                    if not (last_resort or entry.breaker.try_acquire()):
                        last = entry.breaker.last_error
                        skipped.append(Fallback(name, None, "circuit_open", last, call.produced))
                        continue
                    fallbacks += [dataclasses.replace(s, to_backend=name) for s in skipped]
                    skipped.clear()
                    try:
                        attempt = self._attempt(entry, call, extra_s)
                        async with contextlib.aclosing(attempt):
                            async for out in attempt:
                                yield out
                    except _Refused as refused:
                        entry.breaker.release()  # busy is not broken: no verdict
                        busy = refused.error
                        log.debug("%s: %s refused the call: %s", self.name, name, busy.message)
                        skipped.append(
                            Fallback(name, None, "overloaded", "EngineBusy", call.produced)
                        )
                    except _Failed as failed:
                        exc = failed.error
                        failure = (name, exc)
                        self._failed(entry, exc, force=isinstance(exc, ModelLoadError))
                        log.warning("%s: %s failed (%s): %s", self.name, name, failed.reason, exc)
                        more = self._has_next(ordered, index, last_resort)
                        if isinstance(exc, Unusable) and exc.salvage is not None and not more:
                            for salvaged in exc.salvage:
                                yield cast(T, salvaged)  # made by this stage's call: one of its T
                            served, error = name, None
                            return
                        skipped.append(
                            Fallback(name, None, failed.reason, _error_name(exc), call.produced)
                        )
                        if not more:
                            break
                    except BaseException as exc:
                        entry.breaker.release()  # no verdict on the backend: not its doing
                        stopped = isinstance(exc, GeneratorExit | asyncio.CancelledError)
                        error = "CancelledError" if stopped else type(exc).__name__
                        raise
                    else:
                        served, error = name, None
                        return
                if failure is not None or busy is not None:
                    break
                skipped.clear()  # every breaker was open: try each of them after all
                log.warning("%s: every backend's breaker is open; trying them all", self.name)
            if busy is not None:  # trying again soon may work: say so rather than "failed"
                error = "EngineBusy"
                raise busy
            assert failure is not None
            error = _error_name(failure[1])
            raise _stage_error(self.stage, *failure)
        finally:
            fallbacks += skipped
            report = FallbackReport(self.stage, self.name, served, tuple(fallbacks), error)
            if collector is not None:
                collector.add(report)
            for listener in self.report_listeners:
                listener(report)

    async def _attempt(
        self, entry: _Entry[B], call: StageCall[B, T], extra_s: float
    ) -> AsyncGenerator[T, None]:
        """Take a slot of the backend's engine, then pass on ``call``'s output from it, under
        the deadlines.

        Raises:
            _Refused: the engine's scheduler refused the call (before any work).
            _Failed: the chain should move on to the next backend.
        """
        loop = asyncio.get_running_loop()
        name = entry.backend.name
        scheduler = entry.backend.scheduler
        try:
            # waiting for the engine is not the engine's failure: the slot is taken before
            # the deadline clock starts, and a refusal is no verdict on the backend
            slot = await scheduler.acquire() if scheduler is not None else None
        except EngineBusy as exc:
            raise _Refused(exc) from exc
        call.done = False
        try:
            source = call.begin(entry.backend)
        except BaseException:  # e.g. a function call that cannot move on: the slot goes back
            if slot is not None:
                slot.release()
            raise
        started = loop.time()
        first = True
        try:
            while not call.done:
                limit = self.policy.first_output_timeout_s + extra_s
                if not first:
                    limit = self.policy.gap_timeout_s
                deadline = asyncio.timeout(limit)
                try:
                    async with deadline:
                        with holding(slot):  # a worker thread this step starts takes it over
                            item = await anext(source)
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    if not deadline.expired():
                        raise  # the backend's own, not our deadline
                    if first:
                        entry.latency.add(loop.time() - started)
                    what = "first output" if first else "next output"
                    timeout = EngineTimeout(
                        f"no {what} within {limit:.3g} s", stage=self.stage, backend=name
                    )
                    reason: FallbackReason = "first_output_timeout" if first else "gap_timeout"
                    raise _Failed(reason, timeout) from exc
                if first:
                    first = False
                    if entry.latency.add(loop.time() - started):
                        log.warning("%s: demoting %s (slow first output)", self.name, name)
                for out in call.accept(item):
                    call.produced = True
                    yield out
            tail = call.finish()
            entry.breaker.record_success()  # before the tail: a consumer may stop at a yield
            for out in tail:
                call.produced = True
                yield out
        except (_Failed, InvalidInput):
            raise
        except StageError as exc:
            if not exc.retryable and not isinstance(exc, ModelLoadError):
                raise  # the input's fault: no other backend would do better
            raise _Failed("error", exc) from exc
        except Unusable as exc:
            raise _Failed("unusable_output", exc) from exc
        except VoxlineError:
            raise
        except Exception as exc:  # a backend outside the stage contract: still a failure
            raise _Failed("error", exc) from exc
        finally:
            try:
                await source.aclose()
            finally:
                if slot is not None:
                    slot.release()

    def _has_next(self, ordered: list[_Entry[B]], index: int, last_resort: bool) -> bool:
        rest = ordered[index + 1 :]
        return bool(rest) and (last_resort or any(e.breaker.would_admit() for e in rest))

    def _failed(self, entry: _Entry[B], exc: BaseException, *, force: bool = False) -> None:
        """Count a failure against ``entry`` and start its probe if its breaker is open now."""
        if force:
            entry.breaker.force_open(_error_name(exc))
        else:
            entry.breaker.record_failure(_error_name(exc))
        if not entry.breaker.is_closed and not self._closed:
            if entry.probe_task is None or entry.probe_task.done():
                entry.probe_task = asyncio.create_task(
                    self._probe_loop(entry), name=f"probe {entry.backend.name}"
                )

    async def _probe_loop(self, entry: _Entry[B]) -> None:
        """Probe an open backend every interval until it passes (or a real call closes it)."""
        while not entry.breaker.is_closed:
            await asyncio.sleep(self.policy.probe_interval_s)
            if entry.breaker.is_closed:
                return  # a real call closed it meanwhile
            if await self._recover(entry):
                return

    async def recover(self, backend: B) -> bool:
        """Try ``backend`` now, as its next probe would (start it again if its start failed,
        then probe it), rather than after ``probe_interval_s``: call it once what the backend
        lacked is there (a GPT-SoVITS voice added to a backend that had none).

        Returns:
            Whether the backend serves now (also when it never stopped).

        Raises:
            ValueError: ``backend`` is not one of this chain's.
        """
        entry = next((e for e in self._entries if e.backend is backend), None)
        if entry is None:
            raise ValueError(f"{backend.name} is not a backend of {self.name}")
        return await self._recover(entry)

    async def _recover(self, entry: _Entry[B]) -> bool:
        name = entry.backend.name
        async with entry.recovering:
            if entry.breaker.is_closed and not entry.start_failed:
                return True  # recovered while this call waited for the lock
            try:
                async with asyncio.timeout(self.policy.probe_timeout_s):
                    if entry.start_failed:
                        try:
                            await entry.backend.start()
                        except Exception as exc:
                            entry.start_error = _start_error(exc)
                            raise
                        entry.start_failed = False
                        entry.start_error = None
                        self._refresh_capabilities()
                    probe = getattr(entry.backend, "probe", None)
                    await (probe() if callable(probe) else entry.backend.warm())
            except Exception as exc:  # any failure means "still down"
                entry.breaker.probe_failed(_error_name(exc))
                log.info("%s: probe of %s failed: %s", self.name, name, _error_name(exc))
                return False
            entry.breaker.probe_succeeded()
            log.warning("%s: %s passed its probe; serving again", self.name, name)
            return True


def _start_error(exc: BaseException) -> str:
    """Why a start failed, for ``/readyz``: a start-up error names a missing checkout, driver,
    library or weights file, never a user's text, so its message is shown."""
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _loop_time() -> float:
    # Breakers and demotions share the event loop's clock with the deadlines and latency samples
    # (one clock for the whole chain, which tests can make virtual); it is time.monotonic()
    # unless a loop brings its own, and a read with no loop running (a sync caller of
    # backend_states()) falls back to that.
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def _error_name(exc: BaseException) -> str:
    return "UnusableOutput" if isinstance(exc, Unusable) else type(exc).__name__


def _stage_error(stage: Stage, backend: str, exc: Exception) -> StageError:
    """What a call that no backend could serve raises: the last backend's failure."""
    if isinstance(exc, StageError):
        return exc
    what = "unusable output" if isinstance(exc, Unusable) else type(exc).__name__
    error = EngineUnavailable(f"{what}: {exc}", stage=stage, backend=backend)
    error.__cause__ = exc
    return error


def _raise_all(stage: Stage, chain: str, what: str, errors: list[tuple[str, Exception]]) -> None:
    if len(errors) == 1:
        # the backend's own error, with its fix; an engine library's own (CTranslate2's
        # RuntimeError for a missing cuBLAS) as EngineUnavailable, which callers handle
        name, exc = errors[0]
        raise exc if isinstance(exc, VoxlineError) else _stage_error(stage, name, exc)
    summary = "; ".join(f"{name}: {exc}" for name, exc in errors)
    raise EngineUnavailable(
        f"no backend of {chain} could {what}: {summary}", stage=stage, backend=chain
    ) from errors[0][1]
