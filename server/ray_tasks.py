"""Job chunks as Ray tasks: on Ray, a job's chunks run anywhere in the cluster.

The ingress's job worker (:mod:`server.jobs.runner`) still claims, leases and records the job in
the state store; each chunk it would run in-process becomes a Ray task instead, which calls the
stage deployments through their handles (the same ``ray`` backends as the API's chains) and
returns its result and its engine calls, billed by the worker as for a local chunk. A chunk task
that dies is a retryable ``EngineUnavailable``: the job goes back to the queue and resumes after
its last recorded chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import ray

from models.ray_stage import translate
from models.registry import build_llm, build_stt, build_tts
from pipeline.settings import Settings
from pipeline.types import AudioChunk
from server.jobs.chunks import speak_chunk, transcribe_chunk, turn_chunk
from server.jobs.kinds import Calls


def _on_ray(settings: Settings) -> Settings:
    ray_only = {"chain": ["ray"]}
    return settings.model_copy(
        update={
            "stt": settings.stt.model_copy(update=ray_only),
            "llm": settings.llm.model_copy(update=ray_only),
            "tts": settings.tts.model_copy(update=ray_only),
        }
    )


@ray.remote(max_retries=0)  # a lost chunk is the job's to retry: it knows what is recorded
def _transcribe(
    settings: Settings, audio: AudioChunk, language: str | None, prompt: str | None
) -> tuple[dict[str, Any], Calls]:
    async def run() -> tuple[dict[str, Any], Calls]:
        stt = build_stt(_on_ray(settings))
        await stt.start()
        try:
            return await transcribe_chunk(stt, audio, language=language, prompt=prompt)
        finally:
            await stt.aclose()

    return asyncio.run(run())


@ray.remote(max_retries=0)
def _speak(
    settings: Settings, text: str, voice: str | None, speed: float
) -> tuple[AudioChunk, Calls]:
    async def run() -> tuple[AudioChunk, Calls]:
        tts = build_tts(_on_ray(settings))
        await tts.start()
        try:
            return await speak_chunk(tts, text, voice=voice, speed=speed)
        finally:
            await tts.aclose()

    return asyncio.run(run())


@ray.remote(max_retries=0)
def _turn(
    settings: Settings, line: Mapping[str, Any], options: Mapping[str, Any]
) -> tuple[dict[str, Any], Calls]:
    async def run() -> tuple[dict[str, Any], Calls]:
        on_ray = _on_ray(settings)
        stt, llm, tts = build_stt(on_ray), build_llm(on_ray), build_tts(on_ray)
        await asyncio.gather(stt.start(), llm.start(), tts.start())
        try:
            return await turn_chunk(stt, llm, tts, line, settings=settings, options=options)
        finally:
            await asyncio.gather(stt.aclose(), llm.aclose(), tts.aclose())

    return asyncio.run(run())


class RayChunks:
    """A job's chunks as Ray tasks (the ``ChunkWorker`` of a server on Ray).

    Args:
        settings: The server's settings (``ray.task_num_cpus`` per task).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cpus = settings.ray.task_num_cpus

    async def _result(self, ref: Any) -> Any:
        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)  # the job was cancelled or this worker stops: so does the task
            raise
        except Exception as exc:
            raise translate(exc, "pipeline", "ray-task") from exc

    async def transcribe(
        self, audio: AudioChunk, *, language: str | None, prompt: str | None
    ) -> tuple[dict[str, Any], Calls]:
        task = _transcribe.options(num_cpus=self._cpus)
        result: tuple[dict[str, Any], Calls] = await self._result(
            task.remote(self.settings, audio, language, prompt)
        )
        return result

    async def speak(
        self, text: str, *, voice: str | None, speed: float
    ) -> tuple[AudioChunk, Calls]:
        task = _speak.options(num_cpus=self._cpus)
        result: tuple[AudioChunk, Calls] = await self._result(
            task.remote(self.settings, text, voice, speed)
        )
        return result

    async def turn(
        self, line: Mapping[str, Any], *, options: Mapping[str, Any]
    ) -> tuple[dict[str, Any], Calls]:
        task = _turn.options(num_cpus=self._cpus)
        result: tuple[dict[str, Any], Calls] = await self._result(
            task.remote(self.settings, dict(line), dict(options))
        )
        return result
