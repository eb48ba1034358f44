"""Prometheus metrics and the usage summary: ``/metrics`` and ``/v1/usage`` on a minimal app,
fed by a real voice turn on the packaged models, real HTTP requests through the counting
middleware, and the Grafana dashboard checked against the metric names actually exposed."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml  # type: ignore[import-untyped]  # no stubs installed; a test-only use
from fastapi import APIRouter, FastAPI
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from models.registry import Engines
from pipeline.ledger import Ledger, PriceTable
from pipeline.metering import Meter
from pipeline.scheduler import EngineScheduler
from pipeline.stages import CallRecord
from pipeline.turn import TurnResult, run_turn
from pipeline.types import AudioChunk, GenerationParams, TurnTimings
from server import routes_metrics, routes_usage
from server.accounting import Accounting
from server.metrics import STAGE_BUCKETS, Metrics, RequestMetricsMiddleware
from server.state import AppState
from tests.server.conftest import http_client, make_settings

# one event loop for the module: the module-scoped engines live on it
module_loop = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_LABELS = {
    *("stage", "backend", "type", "direction", "route", "code", "from", "to", "reason", "kind")
}
EXPECTED = {
    "voxline_stage_duration_seconds": "histogram",
    "voxline_v2v_seconds": "histogram",
    "voxline_llm_ttft_seconds": "histogram",
    "voxline_tts_ttfb_seconds": "histogram",
    "voxline_llm_tokens": "counter",
    "voxline_audio_seconds": "counter",
    "voxline_requests": "counter",
    "voxline_fallback": "counter",
    "voxline_cost_usd": "counter",
    "voxline_active_sessions": "gauge",
    "voxline_engine_refusals": "counter",
    "voxline_admission_refusals": "counter",
    "voxline_engine_queue_depth": "gauge",
    "voxline_engine_in_flight": "gauge",
    "voxline_engine_capacity": "gauge",
}


def build_app(engines: Engines | None = None, metrics: Metrics | None = None) -> FastAPI:
    """Only the observability parts: the two routers, the middleware, probe routes."""
    app = FastAPI()
    state = AppState(make_settings(), engines)
    metrics = metrics or Metrics()
    # the attributes create_app will set (see the report): set by hand until then
    state.metrics = metrics  # type: ignore[attr-defined]
    state.ledger = Ledger(PriceTable())  # type: ignore[attr-defined]
    app.state.voxline = state
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    probe = APIRouter()

    @probe.get("/v1/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        return {"id": thing_id}

    @probe.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    app.include_router(probe)
    app.include_router(routes_metrics.router)
    app.include_router(routes_usage.router)
    return app


def metrics_of(app: FastAPI) -> Metrics:
    metrics = app.state.voxline.metrics
    assert isinstance(metrics, Metrics)
    return metrics


def ledger_of(app: FastAPI) -> Ledger:
    ledger = app.state.voxline.ledger
    assert isinstance(ledger, Ledger)
    return ledger


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def scrape(app: FastAPI) -> dict[str, Metric]:
    async with http_client(app) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


@module_loop
async def test_every_metric_is_exposed_with_its_type() -> None:
    families = await scrape(build_app())

    for name, kind in EXPECTED.items():
        assert name in families, name
        assert families[name].type == kind


@module_loop
async def test_requests_are_counted_by_route_template_and_status() -> None:
    app = build_app()
    metrics = metrics_of(app)

    async with http_client(app) as client:
        assert (await client.get("/v1/usage")).status_code == 200
        assert (await client.get("/v1/usage")).status_code == 200
        assert (await client.get("/v1/things/41")).status_code == 200
        assert (await client.get("/v1/things/42")).status_code == 200
        assert (await client.get("/v1/things/abc")).status_code == 422
        assert (await client.get("/no/such/page")).status_code == 404
        with pytest.raises(RuntimeError):  # the test client re-raises; a server answers 500
            await client.get("/v1/boom")

    assert sample(metrics, "voxline_requests_total", route="/v1/usage", code="200") == 2
    assert sample(metrics, "voxline_requests_total", route="/v1/things/{thing_id}", code="200") == 2
    assert sample(metrics, "voxline_requests_total", route="/v1/things/{thing_id}", code="422") == 1
    assert sample(metrics, "voxline_requests_total", route="unmatched", code="404") == 1
    assert sample(metrics, "voxline_requests_total", route="/v1/boom", code="500") == 1
    routes = {s.labels["route"] for s in _samples(metrics, "voxline_requests_total")}
    assert not any("41" in r or "42" in r or "/no/" in r for r in routes)  # no raw paths

    families = await scrape(app)  # and the scrape shows it
    shown = {
        (s.labels["route"], s.labels["code"]): s.value
        for s in families["voxline_requests"].samples
        if s.name == "voxline_requests_total"
    }
    assert shown[("/v1/usage", "200")] == 2


@module_loop
async def test_a_mounted_app_is_labelled_by_its_mount_point() -> None:
    app = build_app()
    inner = FastAPI()

    @inner.get("/page/{n}")
    async def page(n: int) -> dict[str, int]:
        return {"n": n}

    app.mount("/demo", inner)
    async with http_client(app) as client:
        assert (await client.get("/demo/page/3")).status_code == 200
        assert (await client.get("/demo/page/4")).status_code == 200
        assert (await client.get("/demo/nothing/here")).status_code == 404

    metrics = metrics_of(app)
    assert sample(metrics, "voxline_requests_total", route="/demo/page/{n}", code="200") == 2
    assert sample(metrics, "voxline_requests_total", route="/demo/*", code="404") == 1


def _samples(metrics: Metrics, name: str) -> list[Sample]:
    return [s for f in metrics.registry.collect() for s in f.samples if s.name == name]


@pytest.fixture
def turn_metrics(engines: Engines) -> Iterator[tuple[Metrics, list[CallRecord]]]:
    """A fresh ``Metrics`` listening to the module's engines, and the raw call records."""
    metrics = Metrics()
    calls: list[CallRecord] = []
    stages = (engines.stt, engines.llm, engines.tts)
    for stage in stages:
        stage.listeners += [metrics.observe_call, calls.append]
    try:
        yield metrics, calls
    finally:
        for stage in stages:
            stage.listeners.remove(metrics.observe_call)
            stage.listeners.remove(calls.append)


async def _real_turn(engines: Engines, audio: AudioChunk) -> TurnResult:
    return await run_turn(
        audio,
        stt=engines.stt,
        llm=engines.llm,
        tts=engines.tts,
        system_prompt="Answer in one short sentence.",
        params=GenerationParams(max_tokens=16, temperature=0.0),
    )


@module_loop
async def test_a_real_turn_moves_the_metrics_and_the_ledger(
    engines: Engines,
    spoken_question: AudioChunk,
    turn_metrics: tuple[Metrics, list[CallRecord]],
) -> None:
    metrics, calls = turn_metrics
    app = build_app(engines, metrics)
    ledger = ledger_of(app)
    ledger.listeners.append(metrics.observe_charge)
    before = await scrape(app)
    assert before["voxline_stage_duration_seconds"].samples == []

    with Meter().bind() as meter:  # what a request's MeterMiddleware does
        result = await _real_turn(engines, spoken_question)
    metrics.observe_turn(result.timings)
    # with the app's store, as AppState builds it: /v1/usage reads the stored charges
    accounting = Accounting(ledger, metrics, app.state.voxline.store)
    cost, written = accounting.bill(meter.take(), "req-1", False, None, 1)
    assert written is not None
    await asyncio.wrap_future(written)

    b = result.backends
    for stage, backend in (("stt", b.stt), ("llm", b.llm), ("tts", b.tts)):
        stage_calls = [c for c in calls if c.stage == stage]
        count = sample(
            metrics, "voxline_stage_duration_seconds_count", stage=stage, backend=backend
        )
        total = sample(metrics, "voxline_stage_duration_seconds_sum", stage=stage, backend=backend)
        assert count == len(stage_calls) >= 1
        # base units: the histogram holds seconds, not milliseconds
        assert total == pytest.approx(sum(c.total_ms for c in stage_calls) / 1000)
    llm_call = next(c for c in calls if c.stage == "llm")
    assert llm_call.first_output_ms is not None
    assert sample(metrics, "voxline_llm_ttft_seconds_sum", backend=b.llm) == pytest.approx(
        llm_call.first_output_ms / 1000
    )
    tts_firsts = [c.first_output_ms for c in calls if c.stage == "tts" and c.first_output_ms]
    assert sample(metrics, "voxline_tts_ttfb_seconds_count", backend=b.tts) == len(tts_firsts)
    assert result.usage.completion_tokens > 0
    assert sample(metrics, "voxline_llm_tokens_total", type="prompt", backend=b.llm) == (
        result.usage.prompt_tokens
    )
    assert sample(metrics, "voxline_llm_tokens_total", type="completion", backend=b.llm) == (
        result.usage.completion_tokens
    )
    assert sample(metrics, "voxline_audio_seconds_total", direction="in", backend=b.stt) == (
        pytest.approx(spoken_question.duration)
    )
    assert sample(metrics, "voxline_audio_seconds_total", direction="out", backend=b.tts) == (
        pytest.approx(result.audio.duration)
    )
    # the ledger priced the turn (local CPU engines: engine seconds), and metrics summed it
    assert cost > 0
    for backend in (b.stt, b.llm, b.tts):
        assert sample(metrics, "voxline_cost_usd_total", backend=backend) == pytest.approx(
            ledger.by_backend()[backend].cost_usd
        )

    async with http_client(app) as client:
        usage = (await client.get("/v1/usage")).json()
    assert usage["total"]["tokens_in"] == result.usage.prompt_tokens
    assert usage["total"]["tokens_out"] == result.usage.completion_tokens
    assert usage["total"]["cost_usd"] == pytest.approx(cost, abs=1e-9)
    assert usage["by_backend"][b.stt]["audio_seconds"] == pytest.approx(
        spoken_question.duration, abs=1e-3
    )
    assert usage["by_backend"][b.tts]["chars"] == sum(len(p) for p in result.phrases)
    (day,) = usage["by_day"]
    assert usage["by_day"][day]["total"] == usage["total"]

    after = await scrape(app)
    shown = {s.labels.get("stage") for s in after["voxline_stage_duration_seconds"].samples}
    assert {"stt", "llm", "tts"} <= shown


def test_histogram_buckets_are_seconds() -> None:
    metrics = Metrics()
    metrics.observe_call(
        CallRecord("tts", "piper:cpu", first_output_ms=80.0, total_ms=250.0, outputs=3)
    )
    metrics.observe_turn(TurnTimings(v2v_ms=640.0, endpoint_ms=400.0))

    bounds = {
        float(s.labels["le"])
        for s in _samples(metrics, "voxline_stage_duration_seconds_bucket")
        if s.labels["le"] != "+Inf"
    }
    assert bounds == set(STAGE_BUCKETS)
    assert max(bounds) <= 60  # seconds: a millisecond scale would reach into the thousands
    le = {
        s.labels["le"]: s.value
        for s in _samples(metrics, "voxline_stage_duration_seconds_bucket")
        if s.labels["stage"] == "tts"
    }
    assert le["0.2"] == 0 and le["0.3"] == 1  # 250 ms falls in (0.2, 0.3]
    assert sample(metrics, "voxline_tts_ttfb_seconds_sum", backend="piper:cpu") == 0.08
    assert sample(metrics, "voxline_v2v_seconds_sum", release="settings") == pytest.approx(0.64)
    assert sample(
        metrics, "voxline_stage_duration_seconds_sum", stage="endpoint", backend="vad"
    ) == pytest.approx(0.4)


def test_no_metric_has_a_per_user_label() -> None:
    metrics = Metrics()
    metrics.observe_call(CallRecord("llm", "transformers:cpu", 50.0, 90.0, 4))
    metrics.count_usage(CallRecord("llm", "transformers:cpu", 5.0, 9.0, 4, tokens_in=3))
    metrics.count_usage(CallRecord("stt", "whisper:cpu", 5.0, 9.0, 1, audio_in_seconds=1.0))
    metrics.count_request("/v1/turns", 200)
    metrics.count_fallback("llm", "transformers:cuda", "hosted:api.openai.com:443", "EngineTimeout")
    metrics.add_cost(0.01, "hosted:api.openai.com:443")
    metrics.count_admission_refusal("session", "capacity")
    scheduler = EngineScheduler("whisper:cpu", stage="stt")
    metrics.watch_scheduler(scheduler)
    metrics.watch_scheduler(scheduler)  # once each: its refusals are not counted twice
    for listener in scheduler.listeners:
        listener(scheduler, "queue_full")
    with metrics.session():
        pass

    labels = {k for f in metrics.registry.collect() for s in f.samples for k in s.labels}

    assert labels - {"le"} <= ALLOWED_LABELS
    assert (
        sample(
            metrics,
            "voxline_fallback_total",
            stage="llm",
            **{"from": "transformers:cuda", "to": "hosted:api.openai.com:443"},
            reason="EngineTimeout",
        )
        == 1
    )
    refusal = {"stage": "stt", "backend": "whisper:cpu", "reason": "queue_full"}
    assert sample(metrics, "voxline_engine_refusals_total", **refusal) == 1
    assert sample(metrics, "voxline_engine_capacity", stage="stt", backend="whisper:cpu") == 1


def test_sessions_gauge_and_separate_registries() -> None:
    a, b = Metrics(), Metrics()  # a second app in the same process does not clash

    with a.session(), a.session():
        assert sample(a, "voxline_active_sessions") == 2
        assert sample(b, "voxline_active_sessions") == 0
    with pytest.raises(ValueError), a.session():
        raise ValueError("the session failed")
    assert sample(a, "voxline_active_sessions") == 0


@module_loop
async def test_openmetrics_is_served_when_asked_for() -> None:
    app = build_app()
    async with http_client(app) as client:
        response = await client.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_the_dashboard_only_queries_exposed_metrics() -> None:
    metrics = Metrics()
    exposed = {s.name for f in metrics.registry.collect() for s in f.samples}
    exposed |= {f"{n}_{suffix}" for n in EXPECTED for suffix in ("bucket", "sum", "count")}
    exposed |= {f"{n}_total" for n, kind in EXPECTED.items() if kind == "counter"}
    exposed |= set(EXPECTED)
    dashboard = json.loads((ROOT / "deploy/grafana/voxline-dashboard.json").read_text())

    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    used = {m for e in exprs for m in re.findall(r"\bvoxline_[a-z0-9_]+", e)}

    assert len(exprs) >= 8
    assert used and used <= exposed, used - exposed
    for needed in ("voxline_v2v_seconds_bucket", "voxline_stage_duration_seconds_bucket"):
        assert needed in used
    assert any("histogram_quantile(0.99" in e for e in exprs)
    assert dashboard["uid"] and dashboard["title"]

    scrape_config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in scrape_config["scrape_configs"] if j["job_name"] == "voxline"]
    assert job["metrics_path"] == "/metrics"
    assert "localhost:8000" in job["static_configs"][0]["targets"]


@module_loop
async def test_the_app_factory_wires_metrics_and_request_counting() -> None:
    from server.app import create_app

    app = create_app(make_settings())  # no engines: the lifespan does not run here
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        assert (await client.get("/healthz")).status_code == 200
        body = (await client.get("/metrics")).text
    assert 'voxline_requests_total{code="200",route="/healthz"} 1.0' in body


@module_loop
async def test_a_request_the_client_abandoned_is_not_a_server_error() -> None:
    metrics = Metrics()

    async def hangs_up(scope: object, receive: object, send: object) -> None:
        raise asyncio.CancelledError  # what the server does to a request whose client left

    async def never(*_: object) -> None:
        raise AssertionError("nothing is sent")

    middleware = RequestMetricsMiddleware(hangs_up, metrics=metrics)  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        await middleware({"type": "http", "path": "/v1/turns"}, never, never)  # type: ignore[arg-type]

    assert sample(metrics, "voxline_requests_total", route="unmatched", code="499") == 1
    assert sample(metrics, "voxline_requests_total", route="unmatched", code="500") == 0
