"""Prometheus metrics: one ``Metrics`` object per app, with its own registry.

Its own ``CollectorRegistry`` rather than the library's global one: the global registry refuses
a second metric of the same name, and tests (or anything embedding voxline) build many apps in
one process. Names follow Prometheus' conventions: the ``voxline_`` prefix, base units (seconds,
USD) and ``_total`` on counters. Every label has a bounded set of values (stage, backend, route
*template*, status code, token type, API key id: keys are few and made by an admin): never a
user, session, request id or raw path, each of which would create a series per user.

The object is fed through small hooks, so routes never touch ``prometheus_client``:

- ``observe_call``: a stage listener (``engine.listeners.append(metrics.observe_call)``) giving
  per-stage durations, LLM time to first token and TTS time to first audio;
- ``observe_turn``: a finished voice turn, by the release that served it (its outcome, whether
  a stage fell back, voice-to-voice latency) and the endpoint delay;
- ``set_releases``: the active release (and the canary), as ``voxline_release_active``;
- ``count_usage``: tokens and audio seconds of a billed engine call (``server.accounting``);
- ``observe_charge``: a ledger listener (``ledger.listeners.append(metrics.observe_charge)``);
- ``count_fallback``, ``session()``; and ``RequestMetricsMiddleware`` counts every HTTP request;
- ``count_key_request``, ``count_refusal``: the edge (``server.edge``), per key and per refusal;
- ``watch_scheduler``: an engine's scheduler (``pipeline.scheduler``), whose refusals are
  counted as they happen and whose queue depth, calls in flight and capacity are read at each
  scrape (the pipeline knows nothing of metrics: the server reads it);
- ``count_admission_refusal``: a session or request refused by the server's admission
  (``server.admission``: draining, or at ``VOXLINE_LIMITS__MAX_SESSIONS``).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.scheduler import EngineScheduler
from server.engine_metrics import SchedulerCollector

if TYPE_CHECKING:  # annotations only
    from pipeline.knowledge import KnowledgeReport
    from pipeline.ledger import Charge
    from pipeline.stages import CallRecord
    from pipeline.types import TurnTimings

STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
"""Seconds: a stage call takes from ~10 ms (Piper, one phrase on a GPU box) to tens of seconds
(a long transcription on a CPU)."""
FIRST_OUTPUT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
"""Seconds: time to the first token / first audio, where tens of milliseconds matter."""
V2V_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
"""Seconds: voice-to-voice, dense around the 0.5-1 s that separates snappy from sluggish."""

SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""Similarity and support scores, in [0, 1] (a negative cosine similarity lands in the first)."""
RETRIEVAL_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Seconds: query embedding plus search, where the budget is 20 ms."""

UNMATCHED_ROUTE = "unmatched"
"""The ``route`` label of a request no route matched (404s, or one answered before routing):
the raw path would make one series per scanned URL."""

CLIENT_CLOSED = 499
"""The ``code`` of a request the client abandoned before any answer (nginx's convention)."""


class Metrics:
    """voxline's Prometheus metrics (the names and labels of issue 6), in ``registry``.

    Args:
        registry: Where the metrics live (default: a new registry of their own).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.stage_duration = Histogram(
            "voxline_stage_duration_seconds",
            "Duration of one stage call (STT, LLM, TTS; endpoint: VAD decision delay).",
            ["stage", "backend"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.v2v = Histogram(
            "voxline_v2v_seconds",
            "Voice-to-voice latency: first audio byte sent - end of the user's speech.",
            ["release"],
            buckets=V2V_BUCKETS,
            registry=r,
        )
        self.turns = Counter(
            "voxline_turns",
            "Voice turns (realtime responses, /v1/turns) by release, outcome (completed, "
            "failed, cancelled) and whether a stage fell back.",
            ["release", "outcome", "fallback"],
            registry=r,
        )
        self.release_active = Gauge(
            "voxline_release_active",
            "1 for the release serving new sessions (role active) and the canary (role canary).",
            ["release", "role"],
            registry=r,
        )
        self.llm_ttft = Histogram(
            "voxline_llm_ttft_seconds",
            "LLM time to first output: first text delta - request.",
            ["backend"],
            buckets=FIRST_OUTPUT_BUCKETS,
            registry=r,
        )
        self.tts_ttfb = Histogram(
            "voxline_tts_ttfb_seconds",
            "TTS time to first audio: first audio chunk - text handed to TTS.",
            ["backend"],
            buckets=FIRST_OUTPUT_BUCKETS,
            registry=r,
        )
        # prometheus_client appends `_total` to counter names itself
        self.llm_tokens = Counter(
            "voxline_llm_tokens",
            "LLM tokens by type (prompt, completion).",
            ["type", "backend"],
            registry=r,
        )
        self.audio_seconds = Counter(
            "voxline_audio_seconds",
            "Seconds of audio processed: in (heard by STT) and out (spoken by TTS).",
            ["direction", "backend"],
            registry=r,
        )
        self.requests = Counter(
            "voxline_requests",
            "HTTP requests by route template and status code.",
            ["route", "code"],
            registry=r,
        )
        self.fallbacks = Counter(
            "voxline_fallback",
            "Stage calls moved from one backend to the next, and why.",
            ["stage", "from", "to", "reason"],
            registry=r,
        )
        self.cost = Counter(
            "voxline_cost_usd", "Cost charged by the ledger, in USD.", ["backend"], registry=r
        )
        self.routes = Counter(
            "voxline_llm_routes",
            "Turns answered by each LLM tier, and the router's reason.",
            ["tier", "reason"],
            registry=r,
        )
        self.kb_retrieval = Histogram(
            "voxline_kb_retrieval_seconds",
            "Retrieval in a turn: query embedding plus vector search.",
            buckets=RETRIEVAL_BUCKETS,
            registry=r,
        )
        self.kb_top_score = Histogram(
            "voxline_kb_top_score",
            "Cosine similarity of the best passage retrieved in a turn.",
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.kb_support = Histogram(
            "voxline_kb_support_score",
            "Support score of a grounded answer against its sources.",
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.kb_answers = Counter(
            "voxline_kb_answers",
            "Turns that searched vector stores, by outcome: grounded (supported), flagged "
            "(below the support threshold), replaced (a safe reply said instead), dont_know.",
            ["outcome"],
            registry=r,
        )
        self.active_sessions = Gauge(
            "voxline_active_sessions", "Realtime sessions open now.", registry=r
        )
        # key ids are few and chosen by an admin (`voxline keys create`): a bounded label
        self.key_requests = Counter(
            "voxline_key_requests",
            "Requests (and realtime sessions) the edge let through, by API key id.",
            ["key"],
            registry=r,
        )
        self.edge_refusals = Counter(
            "voxline_edge_refusals",
            "Requests the edge refused, by reason (invalid_api_key, rate_limit_exceeded...).",
            ["reason"],
            registry=r,
        )
        self.engine_refusals = Counter(
            "voxline_engine_refusals",
            "Engine calls refused by the engine's scheduler before any work (EngineBusy), by "
            "reason: partial, estimated_wait, queue_full, displaced, wait_timeout.",
            ["stage", "backend", "reason"],
            registry=r,
        )
        self.admission_refusals = Counter(
            "voxline_admission_refusals",
            "Realtime sessions and HTTP requests (kind) the server refused at admission, by "
            "reason: draining (shutting down) or capacity (VOXLINE_LIMITS__MAX_SESSIONS).",
            ["kind", "reason"],
            registry=r,
        )
        self._schedulers: weakref.WeakSet[EngineScheduler] = weakref.WeakSet()
        r.register(SchedulerCollector(self._schedulers))

    def observe_call(self, record: CallRecord) -> None:
        """Stage listener: the call's duration, and its time to first output (LLM, TTS).

        Attach it to every engine: ``engine.listeners.append(metrics.observe_call)``.
        """
        self.stage_duration.labels(record.stage, record.backend).observe(record.total_ms / 1000)
        if record.first_output_ms is None:
            return
        if record.stage == "llm":
            self.llm_ttft.labels(record.backend).observe(record.first_output_ms / 1000)
        elif record.stage == "tts":
            self.tts_ttfb.labels(record.backend).observe(record.first_output_ms / 1000)

    def observe_turn(
        self,
        timings: TurnTimings | None,
        *,
        release: str = "settings",
        outcome: str = "completed",
        fallback: bool = False,
    ) -> None:
        """A finished voice turn of ``release``: counted by outcome, and its voice-to-voice
        and endpoint delay where measured (``timings`` is ``None`` for a turn that failed
        before it had any).

        The STT/LLM/TTS durations are not taken from here: ``observe_call`` already saw each
        call, with the backend that served it.
        """
        self.turns.labels(release, outcome, "true" if fallback else "false").inc()
        if timings is None:
            return
        if timings.v2v_ms is not None:
            self.v2v.labels(release).observe(timings.v2v_ms / 1000)
        if timings.endpoint_ms is not None:
            self.stage_duration.labels("endpoint", "vad").observe(timings.endpoint_ms / 1000)

    def observe_knowledge(self, report: KnowledgeReport) -> None:
        """A turn that searched vector stores: retrieval time, best score, support, outcome."""
        self.kb_retrieval.observe(report.retrieval_ms / 1000)
        if report.top_score is not None:
            self.kb_top_score.observe(report.top_score)
        support = report.support
        if support is not None:
            self.kb_support.observe(support.score)
        if report.dont_know:
            outcome = "dont_know"
        elif support is not None and support.replaced:
            outcome = "replaced"
        elif support is not None and support.flagged:
            outcome = "flagged"
        else:
            outcome = "grounded"
        self.kb_answers.labels(outcome).inc()

    def count_usage(self, call: CallRecord) -> None:
        """Add a billed engine call's usage: LLM prompt and completion tokens, seconds of audio
        heard (``in``, STT) or spoken (``out``, TTS), labelled with the backend that did it."""
        if call.stage == "llm":
            self.llm_tokens.labels("prompt", call.backend).inc(call.tokens_in)
            self.llm_tokens.labels("completion", call.backend).inc(call.tokens_out)
        elif call.stage == "stt":
            self.audio_seconds.labels("in", call.backend).inc(call.audio_in_seconds)
        elif call.stage == "tts":
            self.audio_seconds.labels("out", call.backend).inc(call.audio_out_seconds)

    def count_request(self, route: str, code: int) -> None:
        """Count one HTTP request (``route``: the template, e.g. ``/v1/audio/speech``)."""
        self.requests.labels(route, str(code)).inc()

    def count_key_request(self, key_id: str) -> None:
        """Count one request (or realtime session) served for the key ``key_id``."""
        self.key_requests.labels(key_id).inc()

    def count_refusal(self, reason: str) -> None:
        """Count one request the edge refused (``reason``: its error code, a bounded word)."""
        self.edge_refusals.labels(reason).inc()

    def watch_scheduler(self, scheduler: EngineScheduler) -> None:
        """Count ``scheduler``'s refusals and expose its queue at every scrape (once each)."""
        if scheduler in self._schedulers:
            return
        self._schedulers.add(scheduler)
        scheduler.listeners.append(self._count_engine_refusal)

    def _count_engine_refusal(self, scheduler: EngineScheduler, reason: str) -> None:
        self.engine_refusals.labels(scheduler.stage, scheduler.name, reason).inc()

    def count_admission_refusal(self, kind: str, reason: str) -> None:
        """A realtime session or HTTP request (``kind``) refused by admission: ``draining``
        or ``capacity``."""
        self.admission_refusals.labels(kind, reason).inc()

    def count_fallback(self, stage: str, from_: str, to: str, reason: str) -> None:
        """Count a call handed from backend ``from_`` to ``to``.

        Args:
            stage: ``stt``, ``llm`` or ``tts``.
            from_: The backend that failed or was skipped.
            to: The backend tried next.
            reason: A bounded word: the error's type name (``EngineTimeout``) or
                ``circuit_open``, never an error message.
        """
        self.fallbacks.labels(stage, from_, to, reason).inc()

    def count_route(self, tier: str, reason: str) -> None:
        """A turn routed to an LLM tier."""
        self.routes.labels(tier, reason).inc()

    def add_cost(self, usd: float, backend: str) -> None:
        """Add ``usd`` spent on ``backend``."""
        self.cost.labels(backend).inc(usd)

    def observe_charge(self, charge: Charge) -> None:
        """Ledger listener: ``ledger.listeners.append(metrics.observe_charge)``."""
        self.add_cost(charge.cost_usd, charge.backend)

    def set_releases(self, active: str | None, canary: str | None) -> None:
        """Which releases serve now (the series of releases no longer serving are removed)."""
        self.release_active.clear()
        if active is not None:
            self.release_active.labels(active, "active").set(1)
        if canary is not None:
            self.release_active.labels(canary, "canary").set(1)

    @contextmanager
    def session(self) -> Iterator[None]:
        """Count a realtime session as active while the ``with`` block runs."""
        self.active_sessions.inc()
        try:
            yield
        finally:
            self.active_sessions.dec()

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (body, content type) for a scrape sending ``Accept: accept``."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def route_template(scope: Scope) -> str:
    """The template of the route that served ``scope`` (``/v1/items/{item_id}``), after routing.

    The router records the matched route in the scope. Inside a mounted app (the Gradio demo)
    that is the inner app's route, so the mount point is put back in front
    (``/demo/gradio_api/queue/join``), and a path the inner app did not match is
    ``<mount>/*``. A request no route matched is ``UNMATCHED_ROUTE``.
    """
    mount = ""
    if "app_root_path" in scope:  # set by Mount only: root_path then ends with the mount path
        mount = scope.get("root_path", "")[len(scope["app_root_path"]) :]
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return mount + path
    return f"{mount}/*" if mount else UNMATCHED_ROUTE


class RequestMetricsMiddleware:
    """Counts every HTTP request in ``voxline_requests_total{route, code}``.

    An exception that escapes the app counts as 500 (the server answers it so); a request
    cancelled before it was answered (the client left) as ``CLIENT_CLOSED``, so disconnects do
    not read as server errors. WebSockets are not requests here: ``voxline_active_sessions``
    follows the realtime sessions.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if not started:
                status = CLIENT_CLOSED
            raise
        finally:
            self.metrics.count_request(route_template(scope), status)
