"""The FastAPI application factory and its lifespan.

``create_app(settings)`` builds an app whose lifespan loads and warms the engines in the
background: ``/healthz`` answers at once (liveness), ``/readyz`` says 503 until the engines are
warm, and model routes answer 503 (OpenAI error shape, Retry-After) until then. Settings and
engines live on ``app.state``; nothing is read from a module global. Tests may hand in
already-started engines so one model load serves many tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from models.registry import Engines, start_engines
from models.vad_silero import SileroVAD
from pipeline.errors import EngineUnavailable, VoxlineError
from pipeline.fallback_core import Chain
from pipeline.fallback_types import FallbackReport
from pipeline.ledger import Ledger
from pipeline.settings import Settings
from pipeline.vad import VAD
from server.errors import install_error_handlers
from server.limits import BodyLimitMiddleware
from server.logging_setup import RequestContextMiddleware, log_call
from server.metrics import Metrics, RequestMetricsMiddleware
from server.tracing import Tracing

log = logging.getLogger("voxline.server")


class AppState:
    """What the routes share: settings, engines once warm, and why they are not (if so).

    ``vad`` is the one loaded VAD model; each realtime session ``fork()`` s it (its own state,
    the same weights).
    """

    def __init__(self, settings: Settings, engines: Engines | None, vad: VAD | None = None) -> None:
        self.settings = settings
        self.engines = engines
        self.vad = vad
        self.startup_error: str | None = None
        self.warming: asyncio.Task[Engines] | None = None
        self.metrics = Metrics()
        self.ledger = Ledger.from_settings(settings.pricing)
        self.ledger.listeners.append(self.metrics.observe_charge)
        self.tracing = Tracing.from_settings(settings)
        self._listened: set[int] = set()
        if engines is not None:
            self.listen(engines)

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


def engines_of(request: Request) -> Engines:
    """The warm engines, or a 503 while they are loading (a FastAPI dependency)."""
    state = state_of(request)
    if state.engines is None:
        reason = state.startup_error or "the engines are still loading"
        raise EngineUnavailable(reason, stage="pipeline", backend="server")
    return state.engines


def create_app(
    settings: Settings | None = None, *, engines: Engines | None = None, vad: VAD | None = None
) -> FastAPI:
    """Build the voxline app.

    Args:
        settings: The settings tree (default: from the environment).
        engines: Already-started engines to serve with (tests); the lifespan then neither loads
            nor closes them.
        vad: An already-loaded VAD for the realtime sessions (default: loaded with the engines,
            or on the first realtime connection when ``engines`` are handed in).
    """
    settings = settings or Settings()
    state = AppState(settings, engines, vad)
    owns_engines = engines is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owns_engines:
            state.warming = asyncio.create_task(_warm(state))
        try:
            yield
        finally:
            state.ledger.close()
            await asyncio.to_thread(state.tracing.shutdown)
            if state.warming is not None and not state.warming.done():
                state.warming.cancel()
                await asyncio.gather(state.warming, return_exceptions=True)
            if owns_engines and state.engines is not None:
                await state.engines.aclose()

    app = FastAPI(title="voxline", version="0.1.0", lifespan=lifespan)
    app.state.voxline = state
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.audio.max_bytes + 1024 * 1024)
    # added last = outermost: every request is counted and carries a request id
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)
    _include_routes(app)
    if settings.demo_enabled:
        _mount_demo(app, settings)
    return app


async def _warm(state: AppState) -> Engines:
    try:
        state.engines = await start_engines(state.settings)
        state.listen(state.engines)
        log.info("engines ready")
    except VoxlineError as exc:
        state.startup_error = str(exc)
        log.error("engines failed to start: %s", exc)
        raise
    try:
        await state.load_vad()
    except VoxlineError as exc:  # only realtime needs it: its route retries and reports it
        log.error("the VAD failed to load: %s", exc)
    return state.engines


def _include_routes(app: FastAPI) -> None:
    from server import routes_health

    app.include_router(routes_health.router)
    for module in (
        "routes_chat",
        "routes_audio",
        "routes_turns",
        "routes_realtime",
        "routes_metrics",
        "routes_usage",
    ):
        try:
            routes = __import__(f"server.{module}", fromlist=["router"])
        except ModuleNotFoundError as exc:
            if exc.name != f"server.{module}":
                raise
            continue  # not written yet
        app.include_router(routes.router)


def _mount_demo(app: FastAPI, settings: Settings) -> None:
    try:
        from server.demo import mount_demo  # gradio is heavy: imported only when the demo is on
    except ModuleNotFoundError as exc:
        if exc.name != "gradio":
            raise
        log.warning("no demo at /demo: it needs gradio (the `demo` extra)")
        return
    mount_demo(app, settings)
