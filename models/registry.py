"""Build each stage's engine from settings, and describe what is configured.

This is the only place that maps an engine name in the settings to a class; the pipeline sees
the abstract STT/LLM/TTS. Engine modules are imported lazily so an optional engine's missing
dependency (llama-cpp-python, a GPT-SoVITS checkout) only matters when it is selected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import importlib.util
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from models.weights import PACKAGED, ResolvedModel, resolve, size_bytes
from pipeline.errors import InvalidInput, Stage, VoxlineError
from pipeline.fallback import FallbackLLM, FallbackPolicy, FallbackSTT, FallbackTTS
from pipeline.router import Router, RouterPolicy
from pipeline.scheduler import EngineScheduler
from pipeline.settings import (
    BackendName,
    FallbackSettings,
    HostedSettings,
    LLMSettings,
    Settings,
    STTSettings,
    TTSSettings,
)
from pipeline.stages import LLM, STT, TTS
from pipeline.types import GenerationParams

B = TypeVar("B", STT, LLM, TTS)


def cuda_available() -> bool:
    """Whether a CUDA device is visible (asked of CTranslate2: cheaper to import than torch)."""
    try:
        import ctranslate2

        return bool(ctranslate2.get_cuda_device_count() > 0)
    except Exception:  # no CUDA runtime at all is the common CPU case
        return False


def onnxruntime_cuda() -> bool:
    """Whether onnxruntime-gpu is installed (asked of the package metadata: no import)."""
    try:
        importlib.metadata.distribution("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def gpu_tts_engine(
    cfg: TTSSettings, environ: Mapping[str, str] | None = None
) -> Literal["piper", "gpt_sovits"]:
    """The engine of the ``gpu`` TTS backend: ``tts.gpu.engine``, where ``auto`` is GPT-SoVITS
    when it is configured (home and python named) and Piper otherwise."""
    if cfg.gpu.engine != "auto":
        return cfg.gpu.engine
    from models.gpt_sovits_setup import configured

    return "gpt_sovits" if configured(cfg.gpt_sovits, environ or os.environ) else "piper"


def chain_of(
    cfg: STTSettings | LLMSettings | TTSSettings, *, cuda: bool | None = None
) -> list[BackendName]:
    """The stage's ordered backend names: its ``chain`` setting, or the machine's default.

    On a CUDA machine the default puts ``gpu`` first, except for a TTS whose ``gpu`` backend
    would be Piper without onnxruntime-gpu, which could not start (Piper then serves from the
    ``cpu`` backend; see docs/gpu.md for why the image keeps Piper on the CPU).
    """
    if cfg.chain:
        return list(dict.fromkeys(cfg.chain))  # a name twice would be the same engine twice
    if cfg.engine == "hosted":
        return ["hosted"]
    cuda = cuda_available() if cuda is None else cuda
    if cuda and isinstance(cfg, TTSSettings) and gpu_tts_engine(cfg) == "piper":
        cuda = onnxruntime_cuda()
    chain: list[BackendName] = ["gpu", "cpu"] if cuda else ["cpu"]
    if cfg.hosted.base_url:
        chain.append("hosted")
    return chain


def policy_of(fallback: FallbackSettings) -> FallbackPolicy:
    """The chain policy for a stage's fallback settings."""
    return FallbackPolicy(**fallback.model_dump())


def _ray(stage: Stage, settings: Settings) -> STT | LLM | TTS:
    from models.ray_stage import ray_backend  # ray is an optional extra

    ray = settings.ray
    fallback: FallbackSettings = getattr(settings, stage).fallback
    return ray_backend(stage, ray.app_name, retries=ray.replica_retries, policy=policy_of(fallback))


def _stt_backend(name: BackendName, settings: Settings) -> STT:
    cfg = settings.stt
    if name == "ray":
        stt = _ray("stt", settings)
        assert isinstance(stt, STT)
        return stt
    if name == "hosted":
        from models.stt_hosted import HostedSTT

        return HostedSTT(_require_url(cfg.hosted, "stt"))
    from models.stt_whisper import WhisperSTT

    if name == "gpu":
        cfg = cfg.model_copy(update={"device": "cuda", **cfg.gpu.model_dump()})
    else:
        cfg = cfg.model_copy(update={"device": "cpu"})
    return WhisperSTT(cfg, offline=settings.hf_offline)


def _llm_backend(name: BackendName, settings: Settings) -> LLM:
    cfg = settings.llm
    if name == "ray":
        llm = _ray("llm", settings)
        assert isinstance(llm, LLM)
        return llm
    if name == "hosted":
        from models.llm_hosted import HostedLLM

        defaults = GenerationParams(
            max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p
        )
        return HostedLLM(
            _require_url(cfg.hosted, "llm"), defaults=defaults, context_tokens=cfg.context_tokens
        )
    if name == "gpu":
        cfg = cfg.model_copy(update={"device": "cuda", **cfg.gpu.model_dump()})
    else:
        cfg = cfg.model_copy(update={"device": "cpu"})
    if _llm_engine(cfg.engine) == "llamacpp":
        from models.llm_llamacpp import LlamaCppLLM

        return LlamaCppLLM(cfg)
    from models.llm_transformers import TransformersLLM

    return TransformersLLM(cfg, cache_dir=settings.cache_dir, offline=settings.hf_offline)


def _llm_engine(engine: str) -> str:
    """``auto`` resolved: llama.cpp when installed (much faster on a CPU), else transformers."""
    if engine != "auto":
        return engine
    return "llamacpp" if importlib.util.find_spec("llama_cpp") is not None else "transformers"


def _tts_backend(name: BackendName, settings: Settings) -> TTS:
    cfg = settings.tts
    if name == "ray":
        tts = _ray("tts", settings)
        assert isinstance(tts, TTS)
        return tts
    if name == "hosted":
        from models.tts_hosted import HostedTTS

        return HostedTTS(_require_url(cfg.hosted, "tts"))
    device: Literal["cpu", "cuda"] = "cuda" if name == "gpu" else "cpu"
    engine = gpu_tts_engine(cfg) if name == "gpu" else cfg.engine
    if engine == "gpt_sovits":
        from models.tts_gpt_sovits import GptSovitsTTS

        # constructs without checking anything: start() reports a missing checkout or weights
        return GptSovitsTTS(cfg.gpt_sovits.model_copy(update={"device": device}))
    from models.tts_piper import PiperTTS

    model = cfg.gpu.model if name == "gpu" and cfg.gpu.model else cfg.model
    return PiperTTS(cfg.model_copy(update={"device": device, "model": model}))


def _scheduled(backend: B, name: BackendName, settings: Settings) -> B:
    """``backend`` with its scheduler (``pipeline.scheduler``): its capacity from its stage's
    settings (a hosted endpoint's own, GPT-SoVITS's pool), its queue from ``limits``."""
    cfg: STTSettings | LLMSettings | TTSSettings = getattr(settings, backend.stage)
    capacity = cfg.hosted.capacity if name == "hosted" else cfg.capacity
    if isinstance(cfg, TTSSettings) and name != "hosted":
        engine = cfg.gpu.engine if name == "gpu" else cfg.engine
        capacity = cfg.gpt_sovits.pool_size if engine == "gpt_sovits" else capacity
    limits = settings.limits
    backend.scheduler = EngineScheduler(
        backend.name,
        stage=backend.stage,
        capacity=capacity,
        max_queue=limits.engine_queue,
        max_wait_s=limits.engine_max_wait_s,
    )
    return backend


def build_stt(settings: Settings) -> FallbackSTT:
    """The STT chain of ``settings.stt`` (not yet started)."""
    names = chain_of(settings.stt)
    backends = [_scheduled(_stt_backend(n, settings), n, settings) for n in names]
    return FallbackSTT(backends, policy_of(settings.stt.fallback))


def build_llm(settings: Settings) -> FallbackLLM:
    """The LLM chain of ``settings.llm`` (not yet started)."""
    names = chain_of(settings.llm)
    backends = [_scheduled(_llm_backend(n, settings), n, settings) for n in names]
    return FallbackLLM(backends, policy_of(settings.llm.fallback))


def tier_settings(settings: Settings, tier: str) -> Settings:
    """``settings`` with the ``llm`` section of ``tier`` (the section itself for the default
    tier; another tier's fields replace the section's where set).

    Raises:
        InvalidInput: no such tier.
    """
    if tier == settings.router.default_tier:
        return settings
    override = settings.llm.tiers.get(tier)
    if override is None:
        known = ", ".join([settings.router.default_tier, *settings.llm.tiers])
        raise InvalidInput(f"unknown LLM tier {tier!r}; tiers: {known}", param="llm.tiers")
    changes = {k: v for k, v in override.model_dump().items() if v is not None}
    # validated whole, so nested sections (hosted, gpu) become their models again
    merged = {**settings.llm.model_dump(), **changes, "tiers": {}}
    return settings.model_copy(update={"llm": type(settings.llm).model_validate(merged)})


def build_tiers(settings: Settings) -> dict[str, FallbackLLM]:
    """Every LLM tier's chain by name, the default tier first (not yet started)."""
    names = [settings.router.default_tier, *settings.llm.tiers]
    return {name: build_llm(tier_settings(settings, name)) for name in dict.fromkeys(names)}


def router_of(settings: Settings, tiers: Mapping[str, LLM]) -> Router:
    """The router over ``tiers`` with the ``router`` section's policy."""
    r = settings.router
    policy = RouterPolicy(**r.model_dump())
    return Router(tiers, policy)


def build_tts(settings: Settings) -> FallbackTTS:
    """The TTS chain of ``settings.tts`` (not yet started)."""
    names = chain_of(settings.tts)
    backends = [_scheduled(_tts_backend(n, settings), n, settings) for n in names]
    return FallbackTTS(backends, policy_of(settings.tts.fallback))


def _require_url(hosted: HostedSettings, stage: str) -> HostedSettings:
    if not hosted.base_url:
        raise InvalidInput(
            f"the {stage} chain names 'hosted' but "
            f"VOXLINE_{stage.upper()}__HOSTED__BASE_URL is unset",
            param=f"{stage}.hosted.base_url",
        )
    return hosted


@dataclass(slots=True)
class Engines:
    """One engine per stage, started and warmed; and the LLM tiers with their router.

    ``llm`` is the default tier's; ``router`` (``None``: only ``llm``) picks a tier per turn.
    """

    stt: STT  # FallbackSTT from the registry; tests may hand in a single engine
    llm: LLM
    tts: TTS
    router: Router | None = None

    def llm_for(self, tier: str) -> LLM:
        """The LLM of ``tier`` (``llm`` when there is no router or no such tier)."""
        if self.router is None:
            return self.llm
        return self.router.tiers.get(tier, self.llm)

    async def aclose(self) -> None:
        """Close every engine (errors in one do not keep the others open)."""
        llms = {id(self.llm): self.llm}
        if self.router is not None:
            llms.update({id(t): t for t in self.router.tiers.values()})
        await asyncio.gather(
            self.stt.aclose(),
            *(llm.aclose() for llm in llms.values()),
            self.tts.aclose(),
            return_exceptions=True,
        )


async def _start(engine: STT | LLM | TTS, warm: bool) -> None:
    await engine.start()
    if warm:
        await engine.warm()


STAGE_BUILDERS: dict[str, Callable[[Settings], STT | LLM | TTS]] = {
    "stt": build_stt,
    "llm": build_llm,
    "tts": build_tts,
}
"""Each stage's chain builder, by stage name."""


async def start_stage(
    stage: Stage,
    settings: Settings,
    *,
    warm: bool = True,
    prepare: Callable[[STT | LLM | TTS], Awaitable[object]] | None = None,
) -> STT | LLM | TTS:
    """Build, load and (optionally) warm one stage's chain (a server's releases share stages);
    ``prepare`` is called with the built chain before it starts (as in ``start_engines``).

    Raises:
        InvalidInput: ``stage`` is not ``stt``, ``llm`` or ``tts``.
    """
    builder = STAGE_BUILDERS.get(stage)
    if builder is None:
        raise InvalidInput(f"no engine stage {stage!r}", param="stage")
    engine: STT | LLM | TTS = builder(settings)
    try:
        if prepare is not None:
            await prepare(engine)
        await _start(engine, warm)
    except BaseException:
        await engine.aclose()
        raise
    return engine


async def start_engines(
    settings: Settings,
    *,
    warm: bool = True,
    prepare: Callable[[Engines], Awaitable[object]] | None = None,
) -> Engines:
    """Build, load and (optionally) warm the engines (every LLM tier), loading them concurrently.

    Args:
        settings: The settings tree.
        warm: Warm each engine up after loading it.
        prepare: Called with the built engines before any starts (the server registers the
            stored GPT-SoVITS voices there: that backend starts only with a voice).
    """
    tiers = build_tiers(settings)
    default = tiers[settings.router.default_tier]
    engines = Engines(build_stt(settings), default, build_tts(settings), router_of(settings, tiers))
    others = [t for name, t in tiers.items() if t is not default]
    try:
        if prepare is not None:
            await prepare(engines)
        stages: list[STT | LLM | TTS] = [engines.stt, engines.llm, engines.tts, *others]
        await asyncio.gather(*(_start(e, warm) for e in stages))
    except BaseException:
        await engines.aclose()
        raise
    return engines


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One backend of one stage's chain, for ``voxline models``."""

    stage: Stage
    backend: BackendName
    engine: str
    ref: str
    source: str
    location: str
    size_bytes: int | None
    license: str | None
    loads: bool | None  # None: not checked
    error: str | None = None
    tier: str | None = None  # an LLM tier other than the default (``llm.tiers``)


def _info(stage: Stage, backend: BackendName, engine: str, ref: str) -> ModelInfo:
    try:
        resolved: ResolvedModel = resolve(ref, stage=stage)
    except VoxlineError as exc:
        return ModelInfo(stage, backend, engine, ref, "?", "-", None, None, False, str(exc))
    size = size_bytes(resolved.path) if resolved.path is not None else None
    packaged = (
        PACKAGED.get(ref.removeprefix("packaged:")) if resolved.source == "packaged" else None
    )
    license_ = packaged.license if packaged else None
    return ModelInfo(
        stage, backend, engine, ref, resolved.source, resolved.location, size, license_, None
    )


def _backend_info(stage: Stage, backend: BackendName, settings: Settings) -> ModelInfo:
    cfg: STTSettings | LLMSettings | TTSSettings = getattr(settings, stage)
    if backend == "ray":
        where = f"{settings.ray.address or '(VOXLINE_RAY__ADDRESS unset)'} {settings.ray.app_name}"
        return ModelInfo(stage, backend, "ray", "-", "ray", where, None, None, None)
    if backend == "hosted":
        hosted = cfg.hosted
        where = hosted.base_url or "(VOXLINE_" + stage.upper() + "__HOSTED__BASE_URL unset)"
        return ModelInfo(
            stage, backend, "hosted", hosted.model or "-", "hosted", where, None, None, None
        )
    if isinstance(cfg, STTSettings):
        return _info(stage, backend, "whisper", cfg.gpu.model if backend == "gpu" else cfg.model)
    if isinstance(cfg, LLMSettings):
        if backend == "gpu":
            return _info(stage, backend, cfg.gpu.engine, cfg.gpu.model)
        return _info(stage, backend, _llm_engine(cfg.engine), cfg.model)
    engine = gpu_tts_engine(cfg) if backend == "gpu" else cfg.engine
    if engine == "gpt_sovits":
        gs = cfg.gpt_sovits
        home = str(gs.home) if gs.home else "$GPT_SOVITS_HOME"
        return ModelInfo(stage, backend, engine, gs.version, "local", home, None, None, None)
    model = cfg.gpu.model if backend == "gpu" and cfg.gpu.model else cfg.model
    return _info(stage, backend, engine, model)


_STAGES: tuple[Stage, ...] = ("stt", "llm", "tts")
_BUILDERS = {"stt": _stt_backend, "llm": _llm_backend, "tts": _tts_backend}


def describe_models(settings: Settings) -> list[ModelInfo]:
    """Every backend of every stage's chain: engine, model, where its weights come from, size."""
    infos = [
        _backend_info(stage, backend, settings)
        for stage in _STAGES
        for backend in chain_of(getattr(settings, stage))
    ]
    for tier in settings.llm.tiers:
        if tier == settings.router.default_tier:
            continue
        tiered = tier_settings(settings, tier)
        infos += [
            dataclasses.replace(_backend_info("llm", backend, tiered), tier=tier)
            for backend in chain_of(tiered.llm)
        ]
    return infos


async def check_loads(settings: Settings) -> list[ModelInfo]:
    """``describe_models`` plus an actual start of each backend (one at a time)."""
    checked: list[ModelInfo] = []
    for info in describe_models(settings):
        if info.loads is False:
            checked.append(info)
            continue
        try:
            scope = settings if info.tier is None else tier_settings(settings, info.tier)
            engine = _BUILDERS[info.stage](info.backend, scope)
            try:
                await engine.start()
            finally:
                await engine.aclose()
        except VoxlineError as exc:
            checked.append(dataclasses.replace(info, loads=False, error=str(exc)))
        else:
            checked.append(dataclasses.replace(info, loads=True))
    return checked
