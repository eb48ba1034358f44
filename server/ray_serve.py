"""voxline on Ray Serve: the stages as deployments, the API as their ingress (docs/ray.md).

Four deployments in one Serve application (``VOXLINE_RAY__APP_NAME``):

- ``VoxlineSTT``, ``VoxlineLLM``, ``VoxlineTTS``: each replica builds its stage's own chain of
  local backends (``VOXLINE_RAY__<STAGE>__CHAIN``: ``cpu``, ``gpu``, ``hosted``), loads and warms
  it, and streams its items to the caller. Replicas, autoscaling, CPUs and GPU fractions are
  ``VOXLINE_RAY__<STAGE>__*``.
- ``VoxlineAPI``: the FastAPI app (HTTP routes and the realtime WebSocket) as the ingress. Its
  stage chains name ``ray`` (:mod:`models.ray_stage`), so every stage call goes to a stage
  replica; a WebSocket stays on the ingress replica that accepted it (the session lives there)
  while its calls go to any stage replica. Its job worker runs chunks as Ray tasks
  (:mod:`server.ray_tasks`).

``voxline serve --ray ADDRESS`` deploys it (:func:`run`); ``serve run deploy/ray/voxline.yaml``
builds the same application from the environment (:func:`build`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ray import serve
from ray.serve.deployment import Application

from models.ray_stage import DEPLOYMENTS
from models.registry import build_llm, build_stt, build_tts
from pipeline.errors import Stage
from pipeline.settings import RayStageSettings, Settings
from pipeline.stages import LLM, STT, TTS
from pipeline.types import (
    AudioChunk,
    GenerationParams,
    LLMCapabilities,
    Message,
    STTCapabilities,
    TextDelta,
    Transcript,
    TTSCapabilities,
)

log = logging.getLogger("voxline.ray")


def _local(settings: Settings, stage: str) -> Settings:
    """``settings`` with the stage's chain set to what runs inside its replicas."""
    cfg = getattr(settings, stage)
    chain = getattr(settings.ray, stage).chain
    return settings.model_copy(update={stage: cfg.model_copy(update={"chain": chain})})


class _Replica:
    engine: STT | LLM | TTS

    async def _start(self) -> None:
        await self.engine.start()
        await self.engine.warm()

    async def ping(self) -> bool:
        """Liveness, for the ingress's breaker probes."""
        return True


class STTReplica(_Replica):
    """One STT replica: the stage's local chain."""

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Ray awaits it
        self.engine = self.stt = build_stt(_local(settings, "stt"))
        await self._start()

    async def capabilities(self) -> STTCapabilities:
        """What the engine declares."""
        return self.stt.capabilities

    async def transcribe(
        self, audio: AudioChunk, language: str | None, prompt: str | None
    ) -> AsyncIterator[Transcript]:
        """The engine's transcripts, streamed."""
        async for transcript in self.stt.transcribe(audio, language=language, prompt=prompt):
            yield transcript


class LLMReplica(_Replica):
    """One LLM replica: the stage's local chain."""

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Ray awaits it
        self.engine = self.llm = build_llm(_local(settings, "llm"))
        await self._start()

    async def capabilities(self) -> LLMCapabilities:
        """What the engine declares."""
        return self.llm.capabilities

    async def stream(
        self, messages: list[Message], params: GenerationParams
    ) -> AsyncIterator[TextDelta]:
        """The engine's deltas, streamed."""
        async for delta in self.llm.stream(messages, params):
            yield delta


class TTSReplica(_Replica):
    """One TTS replica: the stage's local chain."""

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Ray awaits it
        self.engine = self.tts = build_tts(_local(settings, "tts"))
        await self._start()

    async def capabilities(self) -> TTSCapabilities:
        """What the engine declares."""
        return self.tts.capabilities

    async def synthesize(
        self, text: str, voice: str | None, speed: float, language: str | None = None
    ) -> AsyncIterator[AudioChunk]:
        """The engine's audio, streamed (``language`` as the TTS contract takes it)."""
        async for chunk in self.tts.synthesize(text, voice, speed=speed, language=language):
            yield chunk


class APIIngress:
    """The FastAPI app of this settings tree, served by Serve's HTTP proxy."""

    def __init__(self, settings: Settings, *stages: Any) -> None:
        self.settings = settings  # the stage deployments' handles are not used: see application()

    def __serve_build_asgi_app__(self) -> Any:
        from server.app import create_app

        return create_app(self.settings)


def ingress_settings(settings: Settings, address: str | None = None) -> Settings:
    """``settings`` for the API on Ray: every stage's chain starts with ``ray`` (a chain that
    already names it is kept, e.g. ``["ray","hosted"]``) and the Ray address is set."""
    updates: dict[str, Any] = {}
    for stage in ("stt", "llm", "tts"):
        cfg = getattr(settings, stage)
        if not cfg.chain or "ray" not in cfg.chain:
            updates[stage] = cfg.model_copy(update={"chain": ["ray"]})
    ray = settings.ray.model_copy(update={"address": address or settings.ray.address or "auto"})
    return settings.model_copy(update={**updates, "ray": ray})


def _options(cfg: RayStageSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
    }
    if cfg.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": cfg.min_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = cfg.num_replicas
    return options


def application(settings: Settings, *, address: str | None = None) -> Application:
    """The Serve application: the three stage deployments and the API ingress."""
    ray = settings.ray
    parts: list[Application] = []
    stages: tuple[tuple[Stage, type], ...] = (
        ("stt", STTReplica),
        ("llm", LLMReplica),
        ("tts", TTSReplica),
    )
    for stage, cls in stages:
        cfg: RayStageSettings = getattr(ray, stage)
        deployment = serve.deployment(name=DEPLOYMENTS[stage], **_options(cfg))(cls)
        parts.append(deployment.bind(settings))
    api = serve.deployment(name="VoxlineAPI", **_options(ray.ingress))(serve.ingress()(APIIngress))
    # The stage deployments are passed to the ingress so Serve deploys them with it; the
    # ingress reaches them by name (models.ray_stage), like any chain backend.
    return api.bind(ingress_settings(settings, address), *parts)


def build(args: Mapping[str, Any] | None = None) -> Application:
    """Serve's application builder (``import_path: server.ray_serve:build``): settings from the
    environment of the process that builds it."""
    return application(Settings())


def run(settings: Settings, address: str, *, host: str, port: int) -> None:
    """Connect to the Ray cluster at ``address``, deploy voxline on it and serve until stopped.

    ``address`` ``local`` starts a single-node cluster in this process.
    """
    import ray

    ray.init(
        address=None if address == "local" else address,
        namespace=settings.ray.namespace,
        ignore_reinit_error=True,
    )
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(settings, address=address), name=settings.ray.app_name, route_prefix="/")
    log.warning("voxline on Ray Serve: http://%s:%d (Ctrl-C stops it)", host, port)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(settings.ray.app_name)
