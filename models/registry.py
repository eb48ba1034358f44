"""Build each stage's engine from settings, and describe what is configured.

This is the only place that maps an engine name in the settings to a class; the pipeline sees
the abstract STT/LLM/TTS. Engine modules are imported lazily so an optional engine's missing
dependency (llama-cpp-python, a GPT-SoVITS checkout) only matters when it is selected.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from models.weights import ResolvedModel, resolve, size_bytes
from pipeline.errors import InvalidInput, Stage, VoxlineError
from pipeline.settings import HostedSettings, Settings
from pipeline.stages import LLM, STT, TTS
from pipeline.types import GenerationParams


def build_stt(settings: Settings) -> STT:
    """The STT engine selected by ``settings.stt.engine`` (not yet loaded)."""
    cfg = settings.stt
    if cfg.engine == "hosted":
        from models.stt_hosted import HostedSTT

        return HostedSTT(_require_url(cfg.hosted, "stt"))
    from models.stt_whisper import WhisperSTT

    return WhisperSTT(cfg, offline=settings.hf_offline)


def build_llm(settings: Settings) -> LLM:
    """The LLM engine selected by ``settings.llm.engine`` (not yet loaded)."""
    cfg = settings.llm
    if cfg.engine == "hosted":
        from models.llm_hosted import HostedLLM

        defaults = GenerationParams(
            max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p
        )
        return HostedLLM(
            _require_url(cfg.hosted, "llm"), defaults=defaults, context_tokens=cfg.context_tokens
        )
    if cfg.engine == "llamacpp":
        from models.llm_llamacpp import LlamaCppLLM

        return LlamaCppLLM(cfg)
    from models.llm_transformers import TransformersLLM

    return TransformersLLM(cfg, cache_dir=settings.cache_dir, offline=settings.hf_offline)


def build_tts(settings: Settings) -> TTS:
    """The TTS engine selected by ``settings.tts.engine`` (not yet started)."""
    cfg = settings.tts
    if cfg.engine == "hosted":
        from models.tts_hosted import HostedTTS

        return HostedTTS(_require_url(cfg.hosted, "tts"))
    if cfg.engine == "gpt_sovits":
        from models.tts_gpt_sovits import GptSovitsTTS

        gs = cfg.gpt_sovits
        return GptSovitsTTS(
            gs, env=gs.env, extra_pythonpath=gs.extra_pythonpath, run_options=gs.run_options
        )
    from models.tts_piper import PiperTTS

    return PiperTTS(cfg)


def _require_url(hosted: HostedSettings, stage: str) -> HostedSettings:
    if not hosted.base_url:
        raise InvalidInput(
            f"the {stage} engine is 'hosted' but "
            f"VOXLINE_{stage.upper()}__HOSTED__BASE_URL is unset",
            param=f"{stage}.hosted.base_url",
        )
    return hosted


@dataclass(slots=True)
class Engines:
    """One engine per stage, started and warmed."""

    stt: STT
    llm: LLM
    tts: TTS

    async def aclose(self) -> None:
        """Close every engine (errors in one do not keep the others open)."""
        await asyncio.gather(
            self.stt.aclose(), self.llm.aclose(), self.tts.aclose(), return_exceptions=True
        )


async def _start(engine: STT | LLM | TTS, warm: bool) -> None:
    await engine.start()
    if warm:
        await engine.warm()


async def start_engines(settings: Settings, *, warm: bool = True) -> Engines:
    """Build, load and (optionally) warm the three engines, loading them concurrently."""
    engines = Engines(build_stt(settings), build_llm(settings), build_tts(settings))
    try:
        await asyncio.gather(*(_start(e, warm) for e in (engines.stt, engines.llm, engines.tts)))
    except BaseException:
        await engines.aclose()
        raise
    return engines


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One configured model, for ``voxline models``."""

    stage: str
    engine: str
    ref: str
    source: str
    location: str
    size_bytes: int | None
    loads: bool | None  # None: not checked
    error: str | None = None


def _hosted_info(stage: str, hosted: HostedSettings) -> ModelInfo:
    return ModelInfo(
        stage, "hosted", hosted.model or "-", "hosted", hosted.base_url or "-", None, None
    )


def _local_info(stage: Stage, engine: str, ref: str) -> ModelInfo:
    try:
        resolved: ResolvedModel = resolve(ref, stage=stage)
    except VoxlineError as exc:
        return ModelInfo(stage, engine, ref, "?", "-", None, False, str(exc))
    size = size_bytes(resolved.path) if resolved.path is not None else None
    return ModelInfo(stage, engine, ref, resolved.source, resolved.location, size, None)


def describe_models(settings: Settings) -> list[ModelInfo]:
    """Where each configured model's weights come from, without loading them."""
    infos: list[ModelInfo] = []
    stt, llm, tts = settings.stt, settings.llm, settings.tts
    infos.append(
        _hosted_info("stt", stt.hosted)
        if stt.engine == "hosted"
        else _local_info("stt", stt.engine, stt.model)
    )
    infos.append(
        _hosted_info("llm", llm.hosted)
        if llm.engine == "hosted"
        else _local_info("llm", llm.engine, llm.model)
    )
    if tts.engine == "hosted":
        infos.append(_hosted_info("tts", tts.hosted))
    elif tts.engine == "gpt_sovits":
        gs = tts.gpt_sovits
        home = str(gs.home) if gs.home else "$GPT_SOVITS_HOME"
        infos.append(ModelInfo("tts", "gpt_sovits", gs.version, "local", home, None, None))
    else:
        infos.append(_local_info("tts", tts.engine, tts.model))
    return infos


async def check_loads(settings: Settings) -> list[ModelInfo]:
    """``describe_models`` plus an actual load of each stage's engine (one at a time)."""
    infos = describe_models(settings)
    builders = {"stt": build_stt, "llm": build_llm, "tts": build_tts}
    checked: list[ModelInfo] = []
    for info in infos:
        if info.loads is False:
            checked.append(info)
            continue
        try:
            engine = builders[info.stage](settings)
            await engine.start()
            await engine.aclose()
        except VoxlineError as exc:
            checked.append(_with(info, loads=False, error=str(exc)))
        else:
            checked.append(_with(info, loads=True, error=None))
    return checked


def _with(info: ModelInfo, *, loads: bool, error: str | None) -> ModelInfo:
    return ModelInfo(
        info.stage, info.engine, info.ref, info.source, info.location, info.size_bytes, loads, error
    )
