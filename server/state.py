"""What the routes share: the application state and the FastAPI dependencies that reach it.

Its own module so that route modules, the demo and the app factory all depend on it and none on
each other (``server.app`` imports the routes; the routes import this).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from fastapi import Request
from starlette.requests import HTTPConnection

from models.registry import Engines
from models.vad_silero import SileroVAD
from pipeline.errors import Stage
from pipeline.fallback_core import Chain
from pipeline.fallback_types import FallbackReport
from pipeline.knowledge import KnowledgeReport
from pipeline.ledger import Ledger
from pipeline.router import Route
from pipeline.settings import Settings
from pipeline.stages import LLM, STT, TTS
from pipeline.vad import VAD
from server.accounting import Accounting
from server.admission import Admission
from server.jobs.service import JobService
from server.kb import KnowledgeBase, knowledge_base
from server.logging_setup import log_call
from server.metrics import Metrics
from server.releases import LiveRelease, ServerReleases, slot_release
from server.tracing import Tracing
from server.voices import VoiceService
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
    stopped by the lifespan). ``voices`` are the voices uploaded through the API
    (``server.voices``), registered with each release's engines when they start.
    ``admission`` is what the server serves now and whether it takes more (sessions, requests
    in flight, the drain).
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
        self.admission = Admission(settings.limits)
        self.warming: asyncio.Task[None] | None = None
        self.metrics = Metrics()
        self.admission.listeners.append(self.metrics.count_admission_refusal)
        self.ledger = Ledger.from_settings(settings.pricing)
        self.ledger.listeners.append(self.metrics.observe_charge)
        self.accounting = Accounting(self.ledger, self.metrics, self.store)
        self.tracing = Tracing.from_settings(settings)
        self.voices = VoiceService(self.store, settings.voices)
        self._listened: set[int] = set()
        self.releases = ServerReleases(
            settings,
            self.store,
            metrics=self.metrics,
            listen=self.listen,
            prepare=self._prepare_stage,  # a GPT-SoVITS backend starts only with a voice
        )
        self.kb: KnowledgeBase = knowledge_base(self.store, settings)
        """Files, vector stores and retrieval (its model loads on first use)."""
        self.ingestions: set[asyncio.Future[object]] = set()
        # one file indexed at a time, on a thread of its own: indexing never takes the default
        # executor's threads, which the turns need (VAD, store calls, retrieval)
        self._ingest_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-ingest")
        self._queued: set[tuple[str, str]] = set()
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

    async def _prepare_stage(self, stage: Stage, engine: STT | LLM | TTS) -> None:
        """A release's chain, built and not yet started: a TTS gets the stored voices."""
        if stage == "tts":
            await self.voices.restore_tts(cast(TTS, engine))

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
        tiers = list(engines.router.tiers.values()) if engines.router is not None else []
        for chain in (engines.stt, engines.llm, engines.tts, *tiers):
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
                if backend.scheduler is not None:  # its refusals and queue in /metrics
                    self.metrics.watch_scheduler(backend.scheduler)
            if isinstance(chain, Chain) and id(chain) not in self._listened:
                self._listened.add(id(chain))
                chain.report_listeners.append(self._count_fallbacks)

    def _count_fallbacks(self, report: FallbackReport) -> None:
        for switch in report.fallbacks:
            self.metrics.count_fallback(
                report.stage, switch.from_backend, switch.to_backend or "none", switch.reason
            )

    def observe_route(self, route: Route | None, where: str) -> None:
        """A turn's LLM tier and why, in the metrics and the log."""
        if route is None:
            return
        self.metrics.count_route(route.tier, route.reason)
        log.info("%s answered by LLM tier %s (%s)", where, route.tier, route.reason)

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

    def observe_knowledge(self, report: KnowledgeReport) -> None:
        """A grounded turn's metrics and log line (ids and numbers only: the question, the
        answer and the passages are content, logged only with ``log_content``)."""
        self.metrics.observe_knowledge(report)
        support = report.support
        log.info(
            "grounded answer",
            extra={
                "vector_store_ids": list(report.vector_store_ids),
                "retrieval_ms": report.retrieval_ms,
                "scores": list(report.scores),
                "citations": [
                    {"file_id": c.file_id, "chunk": c.chunk, "score": c.score}
                    for c in report.citations
                ],
                "dont_know": report.dont_know,
                "support": None if support is None else support.score,
                "flagged": bool(support and support.flagged),
                "replaced": bool(support and support.replaced),
            },
        )

    def ingest_later(self, vector_store_id: str, file_id: str) -> None:
        """Index a file into a store in the background, after the files queued before it (its
        record says ``in_progress`` until done); the app's shutdown stops it between batches
        (it ends ``failed``: add it again)."""
        key = (vector_store_id, file_id)
        self._queued.add(key)

        def run() -> object:
            self._queued.discard(key)
            return self.kb.ingest(vector_store_id, file_id)

        future = asyncio.get_running_loop().run_in_executor(self._ingest_pool, run)
        self.ingestions.add(future)
        future.add_done_callback(self.ingestions.discard)

    async def stop_ingestions(self) -> None:
        """Stop the files being added (they end ``failed``: add them again)."""
        self.kb.closing.set()
        self._ingest_pool.shutdown(wait=False, cancel_futures=True)  # queued files never start
        if self.ingestions:
            await asyncio.gather(*self.ingestions, return_exceptions=True)
        for vector_store_id, file_id in list(self._queued):  # say so, rather than in_progress
            await asyncio.to_thread(self.kb.abandon, vector_store_id, file_id)
        self._queued.clear()


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
