"""Run a plan: each configuration in turn, its in-process scenarios, then its server scenarios.

One configuration's engines are loaded once and shared by its scenarios, and closed before the
next configuration loads (two LLMs in memory would also share the CPU). The in-process engines
are closed before a server is started for ``realtime``/``load``, so the server does not compete
with idle copies of the same models. In a comparison every scenario's result is named
``<scenario>@<config label>``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from benchmarks.configs import ConfigSpec
from benchmarks.context import BenchContext, BenchOptions, ColdStart, Progress, ScenarioResult
from benchmarks.data import Clip
from benchmarks.scenarios import COMPARE, SCENARIOS, SERVER, STAGES, STANDARD
from pipeline.errors import InvalidInput
from pipeline.settings import HostedSettings, Settings


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run.

    Attributes:
        scenarios: scenario names, in order (``compare`` already taken out).
        configs: the configurations; more than one makes a comparison.
        options: runs, warm-up, server...
        clips: spoken inputs.
        replies: texts for the TTS scenario.
    """

    scenarios: tuple[str, ...]
    configs: tuple[ConfigSpec, ...]
    options: BenchOptions
    clips: list[Clip]
    replies: list[str]

    @property
    def compare(self) -> bool:
        """Whether results are named per configuration."""
        return len(self.configs) > 1


def plan_scenarios(names: list[str], configs: int, url: str | None) -> tuple[str, ...]:
    """Validate the scenario names of the command line and expand the defaults.

    Raises:
        InvalidInput: an unknown name, or a comparison that cannot be run.
    """
    unknown = [n for n in names if n not in SCENARIOS and n != COMPARE]
    if unknown:
        known = ", ".join([*SCENARIOS, COMPARE])
        raise InvalidInput(f"unknown scenario {unknown[0]!r}; known: {known}", param="scenario")
    comparing = COMPARE in names or configs > 1
    chosen = tuple(dict.fromkeys(n for n in names if n != COMPARE))
    if comparing:
        if configs < 2:
            raise InvalidInput("compare needs two or more --config", param="config")
        chosen = chosen or ("turn",)
        if url is not None and SERVER.intersection(chosen):
            raise InvalidInput(
                "a comparison of realtime/load starts one server per --config: drop --url",
                param="url",
            )
    return chosen or STANDARD


@dataclass(slots=True)
class ConfigRun:
    """What one configuration produced."""

    config: ConfigSpec
    settings: Settings
    results: list[ScenarioResult] = field(default_factory=list)
    cold: ColdStart = field(default_factory=ColdStart)
    backends: dict[str, str] = field(default_factory=dict)


async def run_plan(plan: Plan, progress: Progress | None = None) -> list[ConfigRun]:
    """Run every configuration of ``plan`` in order."""
    return [await _run_config(plan, config, progress) for config in plan.configs]


async def _run_config(plan: Plan, config: ConfigSpec, progress: Progress | None) -> ConfigRun:
    settings = config.settings()
    suffix = f"@{config.label}" if plan.compare else ""
    ctx = BenchContext(
        config,
        settings,
        plan.options,
        plan.clips,
        plan.replies,
        progress,
        url=plan.options.url,
    )
    run = ConfigRun(config, settings, cold=ctx.cold)
    local = [n for n in plan.scenarios if n not in SERVER]
    remote = [n for n in plan.scenarios if n in SERVER]
    try:
        stages = list(dict.fromkeys(s for n in local for s in STAGES[n]))
        if stages:
            step = f"load {config.label}"
            if progress is not None:
                progress(step, 0, 1)
            await ctx.ensure(*stages)
            run.backends.update(ctx.backends())
            if progress is not None:
                progress(step, 1, 1)
        for name in local:
            run.results.append(await SCENARIOS[name](ctx, name + suffix))
    finally:
        await ctx.aclose()
    if remote:
        async with _server(ctx) as url:
            ctx.url = url
            for name in remote:
                run.results.append(await SCENARIOS[name](ctx, name + suffix))
    return run


@contextlib.asynccontextmanager
async def _server(ctx: BenchContext) -> AsyncIterator[str]:
    if ctx.url is not None:
        yield ctx.url
        return
    from benchmarks.server_proc import local_server

    log = ctx.options.out_dir / f"server-{ctx.config.label}.log"
    async with local_server(ctx.config, log) as server:
        ctx.cold.server_ready_ms = server.ready_ms
        yield server.url


def _ref(engine: str, model: str, hosted: HostedSettings) -> str:
    return f"{hosted.model or '-'} @ {hosted.base_url}" if engine == "hosted" else model


def model_refs(run: ConfigRun) -> dict[str, dict[str, Any]]:
    """Engine, model reference, device and serving backend of each stage of one run."""
    s = run.settings
    tts_ref = s.tts.gpt_sovits.version if s.tts.engine == "gpt_sovits" else s.tts.model
    refs = {
        "stt": (s.stt.engine, _ref(s.stt.engine, s.stt.model, s.stt.hosted), s.stt.device),
        "llm": (s.llm.engine, _ref(s.llm.engine, s.llm.model, s.llm.hosted), s.llm.device),
        "tts": (s.tts.engine, _ref(s.tts.engine, tts_ref, s.tts.hosted), s.tts.device),
    }
    return {
        stage: {"engine": e, "ref": r, "device": d, "backend": run.backends.get(stage)}
        for stage, (e, r, d) in refs.items()
    }
