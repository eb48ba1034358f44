"""A stage served by a Ray Serve deployment: ``"ray"`` in a stage's chain (docs/ray.md).

``RaySTT``, ``RayLLM`` and ``RayTTS`` are stages like any other: they stream from a deployment
handle (``serve.get_deployment_handle``) the items the deployment's replica streams from its own
engines (``server.ray_serve``), so a realtime session on one ingress replica sends each stage
call to whichever stage replica Serve picks.

Ray's errors are translated at this boundary, like any engine's:

- a replica that died, or cannot be reached (``RayActorError``, ``ActorUnavailableError``,
  Serve's ``ReplicaUnavailableError`` / ``DeploymentUnavailableError``, any other ``RayError``):
  a retryable ``EngineUnavailable``;
- Serve's queue full (``BackPressureError``): ``EngineOverloaded``;
- an error of ours raised in the replica (Ray wraps it in ``RayTaskError``): the same error,
  unwrapped, so an ``InvalidInput`` stays a 4xx and is never retried.

A replica that dies mid-call must not fail the turn: Serve routes the next call to a live replica,
so the ``ray`` backend of a chain is itself a small fallback chain of ``1 + replica_retries``
handles on the same deployment (:func:`ray_backend`). It keeps the chain's rules for what was
already streamed: an STT call is transcribed again (only partials that extend the shown ones pass),
an LLM reply continues from the text sent, a TTS phrase resumes without repeating audio.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from pipeline.errors import EngineOverloaded, EngineUnavailable, Stage, StageError, VoxlineError
from pipeline.fallback import FallbackLLM, FallbackPolicy, FallbackSTT, FallbackTTS
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

DEPLOYMENTS: dict[Stage, str] = {"stt": "VoxlineSTT", "llm": "VoxlineLLM", "tts": "VoxlineTTS"}
"""The Serve deployment of each stage, in the application ``VOXLINE_RAY__APP_NAME``."""


def translate(exc: BaseException, stage: Stage, backend: str) -> BaseException:
    """The error of our tree for an exception raised by a deployment call."""
    from ray import exceptions as ray_errors
    from ray.serve import exceptions as serve_errors

    if isinstance(exc, ray_errors.RayTaskError) and isinstance(exc.cause, VoxlineError):
        return exc.cause  # ours, raised in the replica: unchanged (an InvalidInput stays one)
    if isinstance(exc, serve_errors.BackPressureError):
        return EngineOverloaded(
            f"the {stage} deployment is full: {exc}", stage=stage, backend=backend
        )
    if isinstance(exc, ray_errors.RayError | serve_errors.RayServeException):
        kind = type(exc).__name__
        return EngineUnavailable(
            f"{kind} from the {stage} deployment", stage=stage, backend=backend
        )
    return exc


class _RayStage:
    """What the three adapters share: the handle, capabilities, probes, error translation."""

    stage: Stage
    name: str

    def _setup(self, app_name: str) -> None:
        self.app_name = app_name
        self.deployment = DEPLOYMENTS[self.stage]
        self._handle: Any = None

    def _get_handle(self) -> Any:
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_deployment_handle(self.deployment, app_name=self.app_name)
        return self._handle

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self._get_handle(), method).remote(*args)
        except Exception as exc:
            raise translate(exc, self.stage, self.name) from exc

    async def _stream_from(self, method: str, *args: Any) -> AsyncGenerator[Any, None]:
        responses = getattr(self._get_handle().options(stream=True), method).remote(*args)
        try:
            async for item in responses:
                yield item
        except StageError:
            raise
        except Exception as exc:
            raise translate(exc, self.stage, self.name) from exc
        finally:
            responses.cancel()  # the consumer stopped: the replica stops its engine too

    async def probe(self) -> None:
        """The deployment answers (the chain's breaker probe)."""
        await self._call("ping")


class RaySTT(_RayStage, STT):
    """Speech to text on the ``VoxlineSTT`` deployment.

    Args:
        app_name: The Serve application.
        name: The backend's name in its chain.
    """

    def __init__(self, app_name: str, *, name: str = "ray") -> None:
        STT.__init__(self, name=name, device="ray")
        self._setup(app_name)

    async def start(self) -> None:
        caps = await self._call("capabilities")
        assert isinstance(caps, STTCapabilities)
        self.capabilities = caps

    async def warm(self) -> None:
        """The replicas warm their own engines."""

    def _transcribe(
        self, audio: AudioChunk, *, language: str | None, prompt: str | None
    ) -> AsyncIterator[Transcript]:
        return self._stream_from("transcribe", audio, language, prompt)


class RayLLM(_RayStage, LLM):
    """The language model on the ``VoxlineLLM`` deployment.

    Args:
        app_name: The Serve application.
        name: The backend's name in its chain.
    """

    def __init__(self, app_name: str, *, name: str = "ray") -> None:
        LLM.__init__(self, name=name, device="ray")
        self._setup(app_name)

    async def start(self) -> None:
        caps = await self._call("capabilities")
        assert isinstance(caps, LLMCapabilities)
        self.capabilities = caps

    async def warm(self) -> None:
        """The replicas warm their own engines."""

    def _stream(
        self, messages: list[Message], params: GenerationParams
    ) -> AsyncIterator[TextDelta]:
        return self._stream_from("stream", messages, params)


class RayTTS(_RayStage, TTS):
    """Text to speech on the ``VoxlineTTS`` deployment.

    Args:
        app_name: The Serve application.
        name: The backend's name in its chain.
    """

    capabilities = TTSCapabilities(sample_rate=22_050)  # until start() asks the deployment

    def __init__(self, app_name: str, *, name: str = "ray") -> None:
        TTS.__init__(self, name=name, device="ray")
        self._setup(app_name)

    async def start(self) -> None:
        caps = await self._call("capabilities")
        assert isinstance(caps, TTSCapabilities)
        self.capabilities = caps

    async def warm(self) -> None:
        """The replicas warm their own engines."""

    def _synthesize(
        self, text: str, voice: str | None, speed: float, language: str | None = None
    ) -> AsyncIterator[AudioChunk]:
        return self._stream_from("synthesize", text, voice, speed, language)


def ray_backend(
    stage: Stage, app_name: str, *, retries: int, policy: FallbackPolicy
) -> FallbackSTT | FallbackLLM | FallbackTTS:
    """The ``ray`` backend of a stage's chain: ``1 + retries`` handles on its deployment, tried
    in order, so a call whose replica died goes on on another one (see the module docstring)."""
    names = ["ray"] + [f"ray#{i}" for i in range(2, retries + 2)]
    if stage == "stt":
        return FallbackSTT([RaySTT(app_name, name=n) for n in names], policy, name="ray")
    if stage == "llm":
        return FallbackLLM([RayLLM(app_name, name=n) for n in names], policy, name="ray")
    return FallbackTTS([RayTTS(app_name, name=n) for n in names], policy, name="ray")
