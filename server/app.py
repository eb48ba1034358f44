"""The FastAPI application factory and its lifespan.

``create_app(settings)`` builds an app whose lifespan loads and warms the engines of the active
release (the server's own settings when none was promoted: docs/releases.md) in the background:
``/healthz`` answers at once (liveness), ``/readyz`` says 503 until the engines are warm, and
model routes answer 503 (OpenAI error shape, Retry-After) until then. Then it follows the
store's active-release pointer (``server.releases``). Settings and engines live on
``app.state``; nothing is read from a module global. Tests may hand in already-started engines
so one model load serves many tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from models.registry import Engines
from pipeline.errors import VoxlineError
from pipeline.settings import Settings
from pipeline.vad import VAD
from server import (
    routes_audio,
    routes_chat,
    routes_client_secrets,
    routes_files,
    routes_health,
    routes_jobs,
    routes_metrics,
    routes_realtime,
    routes_turns,
    routes_usage,
    routes_vector_stores,
    routes_voices,
)
from server.accounting import MeterMiddleware
from server.admission import AdmissionMiddleware
from server.edge import EdgeMiddleware, install_handlers
from server.errors import install_error_handlers
from server.limits import BodyLimitMiddleware
from server.logging_setup import RequestContextMiddleware
from server.metrics import RequestMetricsMiddleware
from server.openapi import install_openapi
from server.releases import ReleaseMiddleware
from server.state import AppState

log = logging.getLogger("voxline.server")

_FORM_OVERHEAD = 1024 * 1024  # multipart boundaries and form fields around an upload

ROUTERS = (
    routes_health.router,
    routes_chat.router,
    routes_audio.router,
    routes_voices.router,
    routes_turns.router,
    routes_realtime.router,
    routes_client_secrets.router,
    routes_metrics.router,
    routes_usage.router,
    routes_files.router,
    routes_vector_stores.router,
    routes_jobs.router,
)
"""Every route of the API. Imported, not discovered: a route module that fails to import fails
the start, loudly."""


def create_app(
    settings: Settings | None = None, *, engines: Engines | None = None, vad: VAD | None = None
) -> FastAPI:
    """Build the voxline app.

    Args:
        settings: The settings tree (default: from the environment).
        engines: Already-started engines to serve with (tests) as the server's own settings'
            release; the lifespan then neither loads nor closes them (it still follows the
            store: a promoted release gets engines of its own where its settings differ).
        vad: An already-loaded VAD for the realtime sessions (default: loaded with the engines,
            or on the first realtime connection when ``engines`` are handed in).
    """
    settings = settings or Settings()
    state = AppState(settings, engines, vad)
    owns_engines = engines is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not owns_engines and state.engines is not None:
            await state.voices.restore(state.engines)  # engines handed in: already started
        state.warming = asyncio.create_task(_warm(state, load=owns_engines))
        state.jobs.runner.start()
        try:
            yield
        finally:
            await state.stop_ingestions()  # files being indexed end failed: add them again
            await state.voices.aclose()
            await state.jobs.runner.aclose()  # its jobs go back to the queue, resumable
            if not state.warming.done():
                state.warming.cancel()
            await asyncio.gather(state.warming, return_exceptions=True)
            await state.releases.aclose()  # the engines it started, not those handed in
            await asyncio.to_thread(state.accounting.close)  # the charges in flight first
            await asyncio.to_thread(state.store.close)
            await asyncio.to_thread(state.tracing.shutdown)

    app = FastAPI(title="voxline", version="0.1.0", lifespan=lifespan)
    app.state.voxline = state
    # added first = innermost; the order, outermost first, is drawn in server.edge's docstring
    app.add_middleware(ReleaseMiddleware, releases=state.releases)  # server.releases
    app.add_middleware(MeterMiddleware)  # a meter per request: server.accounting
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.edge.max_json_bytes,
        upload_max_bytes=settings.audio.max_bytes + _FORM_OVERHEAD,
        overrides={
            "/v1/jobs": settings.jobs.max_bytes + _FORM_OVERHEAD,  # long recordings
            "/v1/files": settings.kb.max_file_bytes + _FORM_OVERHEAD,  # documents
            "/v1/audio/voices": settings.voices.max_bytes + _FORM_OVERHEAD,  # reference clips
        },
    )
    # admission control (refusals while draining, requests in flight, stalled readers:
    # server.admission): behind the edge, so a refused key never takes a slot
    app.add_middleware(AdmissionMiddleware, admission=state.admission)
    app.add_middleware(EdgeMiddleware, state=state)
    # added last = outermost: every request is counted and carries a request id
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)
    install_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    if settings.demo_enabled:
        _mount_demo(app, settings)
    install_openapi(app)
    return app


async def _warm(state: AppState, *, load: bool) -> None:
    """Start the active release's engines (unless handed in), the VAD and the knowledge base's
    embedding model, then follow the store until the app stops. A release that cannot start
    leaves the server unready, still following: a rollback in the store makes it ready."""
    if load:
        try:
            await state.releases.start()
            log.info("engines ready", extra={"release": state.releases.active_name})
        except VoxlineError as exc:
            state.startup_error = str(exc)
            log.error("engines failed to start: %s", exc)
        else:
            try:
                await state.load_vad()
            except VoxlineError as exc:  # only realtime needs it: its route retries and reports
                log.error("the VAD failed to load: %s", exc)
            try:  # the first grounded turn must not pay for loading the embedding model
                await asyncio.to_thread(state.kb.query_embedder)
            except VoxlineError as exc:  # only file_search needs it: a search retries, reports
                log.error("the knowledge base's embedding model failed to load: %s", exc)
    await state.releases.follow()


def _mount_demo(app: FastAPI, settings: Settings) -> None:
    try:
        from server.demo import mount_demo  # gradio is heavy: imported only when the demo is on
    except ModuleNotFoundError as exc:
        if exc.name != "gradio":
            raise
        log.warning("no demo at /demo: it needs gradio (the `demo` extra)")
        return
    from server.edge.demo_login import router as demo_login

    app.include_router(demo_login)  # before the mount, which would otherwise match its path
    mount_demo(app, settings)
