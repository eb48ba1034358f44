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
from pipeline.errors import EngineUnavailable, VoxlineError
from pipeline.settings import Settings
from server.errors import install_error_handlers
from server.limits import BodyLimitMiddleware

log = logging.getLogger("voxline.server")


class AppState:
    """What the routes share: settings, engines once warm, and why they are not (if so)."""

    def __init__(self, settings: Settings, engines: Engines | None) -> None:
        self.settings = settings
        self.engines = engines
        self.startup_error: str | None = None
        self.warming: asyncio.Task[Engines] | None = None


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


def create_app(settings: Settings | None = None, *, engines: Engines | None = None) -> FastAPI:
    """Build the voxline app.

    Args:
        settings: The settings tree (default: from the environment).
        engines: Already-started engines to serve with (tests); the lifespan then neither loads
            nor closes them.
    """
    settings = settings or Settings()
    state = AppState(settings, engines)
    owns_engines = engines is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owns_engines:
            state.warming = asyncio.create_task(_warm(state))
        try:
            yield
        finally:
            if state.warming is not None and not state.warming.done():
                state.warming.cancel()
                await asyncio.gather(state.warming, return_exceptions=True)
            if owns_engines and state.engines is not None:
                await state.engines.aclose()

    app = FastAPI(title="voxline", version="0.1.0", lifespan=lifespan)
    app.state.voxline = state
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.audio.max_bytes + 1024 * 1024)
    install_error_handlers(app)
    _include_routes(app)
    return app


async def _warm(state: AppState) -> Engines:
    try:
        state.engines = await start_engines(state.settings)
        log.info("engines ready")
        return state.engines
    except VoxlineError as exc:
        state.startup_error = str(exc)
        log.error("engines failed to start: %s", exc)
        raise


def _include_routes(app: FastAPI) -> None:
    from server import routes_health

    app.include_router(routes_health.router)
    for module in ("routes_chat", "routes_audio", "routes_turns", "routes_realtime"):
        try:
            routes = __import__(f"server.{module}", fromlist=["router"])
        except ModuleNotFoundError as exc:
            if exc.name != f"server.{module}":
                raise
            continue  # not written yet
        app.include_router(routes.router)
