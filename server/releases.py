"""The releases a server holds, which one each session and turn gets, and following the store.

A *live release* is a release's settings (the server's own settings with the release's
overrides laid over them: ``pipeline.settings_env.apply``) and its started engines (shared
with the other live releases stage by stage: ``server.engine_pool``). The server holds the
active release and, while one runs, the canary.

Who gets which: every HTTP request and realtime connection has a slot (``ReleaseMiddleware``);
the first time a route asks for engines (``server.state.release_of``) the slot *leases* a live
release (the canary for its share of leases, spread evenly, else the active one) and keeps it
until the request's response is sent or the connection closes. So a session keeps the release
it started with, a turn in flight finishes on its own, and a release that stopped serving is
closed (through the pool: only the engines nobody else holds) when its last lease ends.

Following the store: ``follow()`` reads the pointer (``store.releases``) every
``release.poll_interval_s``; when it moved, the releases it names are built in the background
(only their new engines start) and swapped in at once; the ones no longer named retire. While a
canary runs, the same loop compares it with the active release (``server.canary``) and rolls it
back in the store when it is worse. A release that cannot start is logged and recorded; the
server keeps serving what it had.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from models.registry import Engines
from pipeline.errors import EngineUnavailable, VoxlineError
from pipeline.events import ResponseDone
from pipeline.settings import Settings
from pipeline.settings_env import apply
from pipeline.types import TurnTimings
from server.canary import Outcome, TurnStats, verdict
from server.engine_pool import EnginePool, Keys, StagePrepare
from server.logging_setup import release_var
from server.metrics import Metrics
from store import Pointer, Store
from store.release_types import IMPLICIT

log = logging.getLogger("voxline.server.releases")

SCOPE_KEY = "voxline.release"
"""Where ``ReleaseMiddleware`` keeps a request's slot in the ASGI scope."""


@dataclass(eq=False, slots=True)
class LiveRelease:
    """A release this server can serve: its settings and its started engines."""

    name: str
    settings: Settings
    engines: Engines
    keys: Keys
    users: int = 0
    """Leases held now (requests in flight, open sessions)."""
    serving: bool = True
    """Whether new leases may get it (it is active or the canary)."""


@dataclass(slots=True)
class _CanaryWatch:
    name: str
    percent: float
    stats: dict[str, TurnStats] = field(default_factory=dict)
    leases: int = 0


class ServerReleases:
    """The live releases of one server, following the store's pointer.

    Args:
        settings: The server's own settings (the base every release is laid over).
        store: The state store holding the releases and the pointer.
        metrics: Where per-release turns go (``voxline_turns_total{release}``...).
        listen: Hooks metrics, traces and logs into newly started engines.
        prepare: Called with each chain the pool builds, before it starts (the server registers
            the stored GPT-SoVITS voices with a TTS there: that backend starts only with one).
        pool: The shared engines (default: a new pool on the engine registry).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        metrics: Metrics,
        listen: Callable[[Engines], None],
        prepare: StagePrepare | None = None,
        pool: EnginePool | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.pool = pool or EnginePool(prepare=prepare)
        self._listen = listen
        self.active: LiveRelease | None = None
        self.canary: LiveRelease | None = None
        self._watch: _CanaryWatch | None = None
        self._held: dict[str, LiveRelease] = {}
        self._version = -1  # the pointer version applied (-1: none yet)
        self._failed_version = -1  # a version whose releases could not start: not retried
        self._closing: set[asyncio.Task[None]] = set()
        self.error: str | None = None
        """Why the pointer's releases are not served (they could not start), if so."""

    @property
    def active_name(self) -> str | None:
        """The active release's name (``None`` while none is ready)."""
        return None if self.active is None else self.active.name

    # ------------------------------------------------------------------ serving

    def adopt(self, engines: Engines) -> None:
        """Serve already-started engines (handed to the app) as the implicit release."""
        keys = self.pool.adopt(self.settings, engines)
        live = LiveRelease(IMPLICIT, self.settings, engines, keys)
        self._held[IMPLICIT] = live
        self.active = live
        self._version = 0  # the implicit pointer: a stored one (version >= 1) is applied
        self._publish()

    def lease(self, *, canary: bool = True) -> LiveRelease | None:
        """A live release for a new session or turn (the canary for its share), counted as
        used until ``unlease``; ``None`` while nothing is ready. ``canary=False``: the active
        release, and no place in the canary's share (jobs: the canary is for live traffic)."""
        live = self.active
        if live is None:
            return None
        watch = self._watch
        if canary and watch is not None and self.canary is not None:
            watch.leases += 1
            n, share = watch.leases, watch.percent / 100
            # an even spread: lease n goes to the canary when n * share crosses an integer
            if math.floor(n * share) > math.floor((n - 1) * share):
                live = self.canary
        live.users += 1
        return live

    def unlease(self, live: LiveRelease) -> None:
        """A session or turn is done with ``live``."""
        live.users -= 1
        if not live.serving and live.users <= 0:
            self._retire(live)

    def observe_turn(
        self,
        release: str,
        timings: TurnTimings | None,
        *,
        outcome: Outcome | Literal["cancelled"],
        fallback: bool,
    ) -> None:
        """A voice turn served by ``release`` ended: metrics, and the canary's watch (which
        does not judge by cancelled turns: a barge-in is the user's doing)."""
        self.metrics.observe_turn(timings, release=release, outcome=outcome, fallback=fallback)
        watch = self._watch
        if watch is not None and release in watch.stats and outcome != "cancelled":
            v2v = None if timings is None else timings.v2v_ms
            watch.stats[release].add(outcome, fallback=fallback, v2v_ms=v2v)

    def observe_response(self, release: str, done: ResponseDone) -> None:
        """A realtime response of a session served by ``release`` ended."""
        outcome: Outcome | Literal["cancelled"] = (
            "cancelled"
            if done.status == "cancelled"
            else "failed"
            if done.status == "failed"
            else "completed"
        )
        self.observe_turn(release, done.timings, outcome=outcome, fallback=bool(done.fallbacks))

    # ------------------------------------------------------------------ following the store

    async def start(self) -> None:
        """Serve what the store's pointer says (the server's own settings without one).

        Raises:
            VoxlineError: the active release could not start (nothing is served).
        """
        try:
            pointer = await asyncio.to_thread(self.store.releases.pointer)
        except VoxlineError as exc:  # no store: serve the server's own settings
            log.error("cannot read the active release (%s): serving the server's settings", exc)
            pointer = Pointer()
        await self._apply(pointer)
        if self.active is None:
            raise EngineUnavailable(
                self.error or "no release could start", stage="pipeline", backend="server"
            )

    async def follow(self) -> None:
        """Poll the pointer until cancelled (the app's lifespan runs this)."""
        while True:
            await asyncio.sleep(self.settings.release.poll_interval_s)
            try:
                await self.poll()
            except VoxlineError as exc:  # the store is down: keep serving, try again
                log.warning("release poll failed: %s", exc)
            except Exception:  # a bug must not stop the server from following the store
                log.exception("release poll failed")

    async def poll(self) -> None:
        """One step: apply the pointer if it moved; judge the canary."""
        pointer = await asyncio.to_thread(self.store.releases.pointer)
        if pointer.version != self._version and pointer.version != self._failed_version:
            await self._apply(pointer)
        await self._judge()

    async def _apply(self, pointer: Pointer) -> None:
        wanted = pointer.serving()
        built: dict[str, LiveRelease] = {}
        try:
            for name in wanted:
                built[name] = self._held.get(name) or await self._build(name)
        except VoxlineError as exc:
            self._failed_version = pointer.version
            self.error = f"release {name!r} could not start: {exc}"
            log.error("%s; still serving %s", self.error, self.active and self.active.name)
            for live in built.values():
                if live.name not in self._held:
                    await self.pool.release(live.keys)
            return
        for live in built.values():
            self._held[live.name] = live
            live.serving = True
        before = (self.active, self.canary)
        self.active = built[pointer.active]
        self.canary = built[pointer.canary.name] if pointer.canary is not None else None
        self._version, self.error = pointer.version, None
        self._watch_canary(pointer)
        for live in list(self._held.values()):
            if live.name not in wanted:
                live.serving = False
                if live.users <= 0:
                    self._retire(live)
        self._publish()
        if before != (self.active, self.canary):
            canary = pointer.canary
            log.info(
                "release %s active%s",
                pointer.active,
                f", canary {canary.name} at {canary.percent:g}%" if canary else "",
                extra={"release": pointer.active, "canary": canary.name if canary else None},
            )

    async def _build(self, name: str) -> LiveRelease:
        release = await asyncio.to_thread(self.store.releases.require, name)
        settings = apply(self.settings, release.overrides)
        engines, keys = await self.pool.acquire(settings)
        self._listen(engines)
        return LiveRelease(name, settings, engines, keys)

    def _watch_canary(self, pointer: Pointer) -> None:
        canary = pointer.canary
        if canary is None:
            self._watch = None
        elif (
            self._watch is None
            or self._watch.name != canary.name
            or pointer.active not in self._watch.stats
        ):
            stats = {pointer.active: TurnStats(), canary.name: TurnStats()}
            self._watch = _CanaryWatch(canary.name, canary.percent, stats)

    async def _judge(self) -> None:
        watch, active = self._watch, self.active
        if watch is None or active is None:
            return
        reason = verdict(watch.stats[watch.name], watch.stats[active.name], self.settings.release)
        if reason is None:
            return
        log.warning(
            "canary %s is worse than %s: %s; rolling it back",
            watch.name,
            active.name,
            reason,
            extra={"release": watch.name, **watch.stats[watch.name].as_json()},
        )
        moved = await asyncio.to_thread(
            self.store.releases.end_canary,
            watch.name,
            reason=f"canary rolled back automatically: {reason}",
            expect_version=self._version,
        )
        if moved is not None:
            await self._apply(moved)

    def _retire(self, live: LiveRelease) -> None:
        if self._held.get(live.name) is live:
            del self._held[live.name]
        task = asyncio.get_running_loop().create_task(self.pool.release(live.keys))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        log.info("release %s closed (no session uses it)", live.name)

    def _publish(self) -> None:
        self.metrics.set_releases(
            None if self.active is None else self.active.name,
            None if self.canary is None else self.canary.name,
        )

    async def settle(self) -> None:
        """Wait for the engine closes already scheduled (retired releases') to finish."""
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def aclose(self) -> None:
        """Close every engine this server started (at shutdown). Releases served only by
        engines handed to the app stay (an app's lifespan may run again: tests)."""
        await self.settle()
        await self.pool.aclose()
        held = self.pool.held()
        self._held = {
            name: live
            for name, live in self._held.items()
            if all(key in held for key in live.keys.values())
        }
        if self.active not in self._held.values():
            self.active = None
        if self.canary not in self._held.values():
            self.canary, self._watch = None, None
        self._publish()


class _Slot:
    """A request's or connection's lease, taken on first use and given back at its end."""

    __slots__ = ("_live", "_releases")

    def __init__(self, releases: ServerReleases) -> None:
        self._releases = releases
        self._live: LiveRelease | None = None

    def get(self) -> LiveRelease | None:
        if self._live is None:
            self._live = self._releases.lease()
            if self._live is not None:
                release_var.set(self._live.name)  # on every log line of this request
        return self._live

    def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            self._releases.unlease(live)


class ReleaseMiddleware:
    """Gives every HTTP request and WebSocket connection a release slot (see the module)."""

    def __init__(self, app: ASGIApp, *, releases: ServerReleases) -> None:
        self.app = app
        self.releases = releases

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        slot = _Slot(self.releases)
        scope[SCOPE_KEY] = slot
        try:
            await self.app(scope, receive, send)
        finally:
            slot.close()


def slot_release(conn: HTTPConnection, *, reason: str | None = None) -> LiveRelease:
    """The release serving this request or connection (leased on first call).

    Raises:
        EngineUnavailable: no release is ready yet (503 with ``Retry-After``).
    """
    slot = conn.scope.get(SCOPE_KEY)
    live = slot.get() if isinstance(slot, _Slot) else None
    if live is None:
        raise EngineUnavailable(
            reason or "the engines are still loading", stage="pipeline", backend="server"
        )
    return live
