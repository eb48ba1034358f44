"""What every scenario shares: the settings, the inputs, the engines, and how runs repeat.

Engines are started lazily, per stage and only when a scenario needs them, and each start is
timed: loading and warming are the cold start, reported apart from the steady state. Repetition
is the same for every scenario (``repeat``): ``warmup`` runs on the first input whose numbers are
kept only as "first call", then ``runs`` passes over all inputs that make the statistics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.configs import ConfigSpec
from benchmarks.data import Clip
from pipeline.router import Router
from pipeline.settings import Settings
from pipeline.stages import LLM, STT, TTS
from pipeline.types import GenerationParams

Sample = dict[str, float | None]
"""One measurement: metric name -> value (``None``: not measured this time)."""

Progress = Callable[[str, int, int], None]
"""Called as ``progress(scenario, done, total)`` after each measurement."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """How hard to measure.

    Attributes:
        runs: passes over the inputs that count.
        warmup: extra runs on the first input, excluded from the statistics.
        quick: few inputs, one run: a smoke benchmark in under a minute.
        seed: LLM sampling seed (the same reply for the streaming and the naive pipeline).
        url: a running server for ``realtime``/``load`` (``None``: the benchmark starts one).
        api_key: sent as ``Authorization: Bearer`` to ``url`` (a server with API keys).
        out_dir: where results (and a started server's log) go.
        slo_v2v_p95_ms: the V2V p95 a ``load`` level must meet.
        max_sessions: the most concurrent sessions ``load`` tries.
        data: ``--data`` as given (``None``: the built-in questions, or a scenario's own set).
        limit: ``--limit``: the most inputs taken from a set.
    """

    runs: int = 3
    warmup: int = 1
    quick: bool = False
    seed: int = 0
    url: str | None = None
    api_key: str | None = None
    out_dir: Path = Path("bench-results")
    slo_v2v_p95_ms: float = 800.0
    max_sessions: int = 8
    data: str | None = None
    limit: int | None = None


@dataclass(slots=True)
class ScenarioResult:
    """What one scenario measured.

    Attributes:
        name: the scenario (``turn``, or ``turn@llamacpp`` in a comparison).
        samples: metric -> measured values, warm-up excluded.
        rows: one ``Sample`` per measurement, in order (per-turn breakdowns).
        first_call: the first warm-up measurement (cold-ish: engines loaded, caches cold).
        details: scalars and notes that are not distributions (corpus WER, ratios, levels).
    """

    name: str
    samples: dict[str, list[float]] = field(default_factory=dict)
    rows: list[Sample] = field(default_factory=list)
    first_call: Sample | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, sample: Sample) -> None:
        """Keep one measurement."""
        self.rows.append(sample)
        for metric, value in sample.items():
            if value is not None:
                self.samples.setdefault(metric, []).append(float(value))


@dataclass(slots=True)
class ColdStart:
    """Milliseconds to load and to warm each stage's engine (``stage -> ms``), and for a
    server the benchmark started, from launch to ``/readyz`` answering 200."""

    load_ms: dict[str, float] = field(default_factory=dict)
    warmup_ms: dict[str, float] = field(default_factory=dict)
    server_ready_ms: float | None = None


@dataclass(slots=True)
class BenchContext:
    """One configuration's settings, inputs and (lazily started) engines."""

    config: ConfigSpec
    settings: Settings
    options: BenchOptions
    clips: list[Clip]
    replies: list[str]
    progress: Progress | None = None
    url: str | None = None
    """The server of ``realtime``/``load`` (``--url``, or the one the benchmark started)."""
    cold: ColdStart = field(default_factory=ColdStart)
    _engines: dict[str, STT | LLM | TTS] = field(default_factory=dict)
    _starting: asyncio.Lock = field(default_factory=asyncio.Lock)
    _router: Router | None = None

    async def ensure(self, *stages: str) -> None:
        """Start (and warm) the engines of ``stages`` not started yet, concurrently."""
        from models.registry import build_llm, build_stt, build_tts

        builders: dict[str, Callable[[Settings], STT | LLM | TTS]] = {
            "stt": build_stt,
            "llm": build_llm,
            "tts": build_tts,
        }
        async with self._starting:
            missing = [s for s in stages if s not in self._engines]
            engines: dict[str, STT | LLM | TTS] = {s: builders[s](self.settings) for s in missing}
            try:
                await asyncio.gather(*(self._start(s, e) for s, e in engines.items()))
            except BaseException:
                await asyncio.gather(*(e.aclose() for e in engines.values()))
                raise
            self._engines.update(engines)

    async def _start(self, stage: str, engine: STT | LLM | TTS) -> None:
        start = time.perf_counter()
        await engine.start()
        loaded = time.perf_counter()
        await engine.warm()
        self.cold.load_ms[stage] = round((loaded - start) * 1000, 1)
        self.cold.warmup_ms[stage] = round((time.perf_counter() - loaded) * 1000, 1)

    @property
    def stt(self) -> STT:
        """The started STT engine (``ensure("stt")`` first)."""
        engine = self._engines["stt"]
        assert isinstance(engine, STT)
        return engine

    @property
    def llm(self) -> LLM:
        """The started LLM engine (``ensure("llm")`` first)."""
        engine = self._engines["llm"]
        assert isinstance(engine, LLM)
        return engine

    @property
    def tts(self) -> TTS:
        """The started TTS engine (``ensure("tts")`` first)."""
        engine = self._engines["tts"]
        assert isinstance(engine, TTS)
        return engine

    def backends(self) -> dict[str, str]:
        """The backend name of each started engine (``whisper:cpu``...)."""
        return {stage: engine.name for stage, engine in self._engines.items()}

    def params(self) -> GenerationParams:
        """The configured sampling options, seeded so every pipeline gets the same reply."""
        cfg = self.settings.llm
        return GenerationParams(
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=self.options.seed,
        )

    async def router(self) -> Router | None:
        """The LLM tiers' router, started and warmed (``None``: the settings have one tier,
        ``llm``). The default tier is the ``llm`` engine itself."""
        if not self.settings.llm.tiers:
            return None
        from models.registry import build_llm, router_of, tier_settings

        await self.ensure("llm")
        async with self._starting:
            if self._router is None:
                default = self.settings.router.default_tier
                tiers: dict[str, LLM] = {default: self.llm}
                for name in self.settings.llm.tiers:
                    if name != default:
                        tiers[name] = build_llm(tier_settings(self.settings, name))
                        await self._start(f"llm:{name}", tiers[name])
                        self._engines[f"llm:{name}"] = tiers[name]
                self._router = router_of(self.settings, tiers)
        return self._router

    async def aclose(self) -> None:
        """Close every started engine."""
        engines, self._engines = list(self._engines.values()), {}
        self._router = None
        await asyncio.gather(*(e.aclose() for e in engines), return_exceptions=True)


async def repeat(
    ctx: BenchContext,
    result: ScenarioResult,
    inputs: Sequence[T],
    once: Callable[[T, int], Awaitable[Sample]],
) -> ScenarioResult:
    """Warm up on ``inputs[0]``, then measure ``once(input, i)`` over ``runs`` passes.

    ``i`` counts measurements (warm-ups included) so a scenario can alternate orders.
    """
    warmup = ctx.options.warmup if inputs else 0
    total = warmup + ctx.options.runs * len(inputs)
    done = 0

    def tick() -> None:
        if ctx.progress is not None:
            ctx.progress(result.name, done, total)

    tick()
    for i in range(warmup):
        sample = await once(inputs[0], done)
        if i == 0:
            result.first_call = sample
        done += 1
        tick()
    for _ in range(ctx.options.runs):
        for item in inputs:
            result.add(await once(item, done))
            done += 1
            tick()
    return result


def ms_since(start: float, end: float | None = None) -> float:
    """Milliseconds from ``start`` to ``end`` (default now), on ``time.perf_counter``."""
    return round(((time.perf_counter() if end is None else end) - start) * 1000, 1)
