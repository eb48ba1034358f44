"""What the routes share: the application state and the FastAPI dependencies that reach it.

Its own module so that route modules, the demo and the app factory all depend on it and none on
each other (``server.app`` imports the routes; the routes import this).
"""

from __future__ import annotations

import asyncio
import functools
import logging

from fastapi import Request
from starlette.requests import HTTPConnection

from models.registry import Engines
from models.vad_silero import SileroVAD
from pipeline.fallback_core import Chain
from pipeline.fallback_types import FallbackReport
from pipeline.ledger import Ledger
from pipeline.settings import Settings
from pipeline.vad import VAD
from server.accounting import Accounting
from server.jobs.service import JobService
from server.logging_setup import log_call
from server.metrics import Metrics
from server.releases import LiveRelease, ServerReleases, slot_release
from server.tracing import Tracing
from store import Store

log = logging.getLogger("voxline.server")


class AppState:
    """What the routes share: settings, the releases and their engines once warm, and why
    they are not (if so).

    ``settings`` are the server's own; ``releases`` (``server.releases``) hold the active
    release (and a canary): each request or session gets its release, with its settings and
    engines, from ``release_of`` / ``engines_of`` / ``settings_of``; a job, from its claim to
    its end. ``engines`` are the active release's. ``vad`` is the one loaded VAD model; each
    realtime session ``fork()`` s it (its own state, the same weights). ``store`` is the
    durable state (``VOXLINE_STATE__URL``), opened here (its schema migrated) and closed by the
    app's lifespan. ``jobs`` is the job queue and this process's job worker (started and
    stopped by the lifespan).
    """

    def __init__(
        self,
        settings: Settings,
        engines: Engines | None,
        vad: VAD | None = None,
        *,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.vad = vad
        self.store = store or Store.open(settings.state)
        self.startup_error: str | None = None
        self.warming: asyncio.Task[None] | None = None
        self.metrics = Metrics()
        self.ledger = Ledger.from_settings(settings.pricing)
        self.ledger.listeners.append(self.metrics.observe_charge)
        self.accounting = Accounting(self.ledger, self.metrics, self.store)
        self.tracing = Tracing.from_settings(settings)
        self._listened: set[int] = set()
        self.releases = ServerReleases(
            settings, self.store, metrics=self.metrics, listen=self.listen
        )
        self.jobs = JobService(
            self.store,
            settings,
            lease=functools.partial(self.releases.lease, canary=False),
            unlease=self.releases.unlease,
            vad=self.load_vad,
            accounting=self.accounting,
        )
        if engines is not None:
            self.engines = engines

    @property
    def engines(self) -> Engines | None:
        """The active release's engines (``None`` while none is ready)."""
        active = self.releases.active
        return None if active is None else active.engines

    @engines.setter
    def engines(self, engines: Engines) -> None:
        """Serve ``engines`` (already started, never closed here) as the server's own
        settings' release."""
        self.releases.adopt(engines)
        self.listen(engines)

    @property
    def active_settings(self) -> Settings:
        """The active release's settings (the server's own while none is ready)."""
        active = self.releases.active
        return self.settings if active is None else active.settings

    def listen(self, engines: Engines) -> None:
        """Hook metrics, traces and stage logs into every backend of every chain (once each:
        tests hand the same engines to many apps). Per backend, so the ``backend`` label names
        the engine that served, and so a fallback is visible."""
        for chain in (engines.stt, engines.llm, engines.tts):
            backends = chain.backends if isinstance(chain, Chain) else [chain]
            for backend in backends:
                if id(backend) in self._listened:
                    continue
                self._listened.add(id(backend))
                backend.listeners += [
                    self.metrics.observe_call,
                    self.tracing.observe_call,
                    log_call,
                ]
            if isinstance(chain, Chain) and id(chain) not in self._listened:
                self._listened.add(id(chain))
                chain.report_listeners.append(self._count_fallbacks)

    def _count_fallbacks(self, report: FallbackReport) -> None:
        for switch in report.fallbacks:
            self.metrics.count_fallback(
                report.stage, switch.from_backend, switch.to_backend or "none", switch.reason
            )

    async def load_vad(self) -> VAD:
        """The shared VAD, loaded now if the warm-up has not (tests hand in engines only).

        Raises:
            ModelLoadError: the Silero model is missing or unreadable.
        """
        if self.vad is None:
            vad = SileroVAD()
            await asyncio.to_thread(vad.load)
            self.vad = self.vad or vad  # another connection may have loaded one meanwhile
        return self.vad


def state_of(request: Request) -> AppState:
    """The app's shared state (a FastAPI dependency)."""
    state = request.app.state.voxline
    assert isinstance(state, AppState)
    return state


def release_of(request: HTTPConnection) -> LiveRelease:
    """The release serving this request or connection: its name, settings and engines, the
    same for its whole life (a FastAPI dependency; ``server.releases``).

    Raises:
        EngineUnavailable: no release is ready yet (503).
    """
    state: AppState = request.app.state.voxline
    return slot_release(request, reason=state.startup_error or state.releases.error)


def engines_of(request: Request) -> Engines:
    """The warm engines of the request's release, or a 503 while they are loading (a FastAPI
    dependency)."""
    return release_of(request).engines


def settings_of(request: Request) -> Settings:
    """The settings of the request's release: the server's own with the release's overrides
    (prompt, sampling, voice...)."""
    return release_of(request).settings
