"""The language model: the engine, its chain, its ``gpu`` backend, more tiers and the router
that picks the tier of each turn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.settings.backends import BackendName, Device, FallbackSettings, HostedSettings


class LLMGpuSettings(BaseModel):
    """The ``gpu`` backend of the LLM: the settings of the stage, with these in place."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    engine: Literal["transformers", "llamacpp"] = "transformers"
    """Engine on the GPU."""
    model: str = "Qwen/Qwen2.5-7B-Instruct"
    """Model reference (hub id, local directory or ``.gguf`` file)."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "bfloat16"
    """Weights dtype on the GPU."""


class LLMTierSettings(BaseModel):
    """One more LLM tier (``VOXLINE_LLM__TIERS``, JSON): the fields of the ``llm`` section it
    changes; unset ones are the section's. Each tier is a fallback chain of its own."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    engine: Literal["auto", "transformers", "llamacpp", "hosted"] | None = None
    """Engine of the tier's ``cpu`` backend (``hosted``: its chain is the hosted backend)."""
    model: str | None = None
    """Model reference (a ``.gguf`` path, a directory, ``packaged:<name>`` or a hub id)."""
    device: Device | None = None
    """Device of the engine when built on its own."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Default cap on generated tokens per reply."""
    context_tokens: int | None = Field(default=None, ge=256)
    """Context window."""
    threads: int | None = Field(default=None, ge=0)
    """CPU threads."""
    hosted: HostedSettings | None = None
    """The tier's ``hosted`` backend."""
    chain: list[BackendName] | None = None
    """Ordered backends of the tier's chain."""
    gpu: LLMGpuSettings | None = None
    """The tier's ``gpu`` backend."""


class LLMSettings(BaseModel):
    """The language model."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    engine: Literal["auto", "transformers", "llamacpp", "hosted"] = "auto"
    """Engine of the ``cpu`` backend. ``auto``: llama.cpp when the ``llama`` extra is installed
    (about 4x the decode speed of transformers on a 2-core CPU), else transformers;
    ``hosted``: the default chain is the hosted backend."""
    model: str = "packaged:smollm2-135m-instruct"
    """Model reference: a local directory or ``.gguf`` file, ``packaged:<name>`` or a hub id
    (e.g. ``Qwen/Qwen2.5-7B-Instruct``)."""
    device: Device = "auto"
    """Device of the engine when built on its own (a chain sets cpu/cuda per backend)."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weights dtype; ``auto`` is bfloat16 on CUDA and float32 on CPU."""
    system_prompt: str = (
        "You are a helpful voice assistant. Answer in one or two short spoken sentences."
    )
    """System prompt of every conversation."""
    max_tokens: int = Field(default=96, ge=1)
    """Default cap on generated tokens per reply."""
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    """Default sampling temperature (0: greedy)."""
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    """Default nucleus sampling mass."""
    context_tokens: int = Field(default=2048, ge=256)
    """Context window used for history trimming (and llama.cpp's ``n_ctx``)."""
    threads: int = Field(default=0, ge=0)
    """CPU threads for torch / llama.cpp (0: half the cores, at least 1: STT and TTS share the
    machine, and on 2 cores one LLM thread measured several times faster than two)."""
    capacity: int = Field(default=1, ge=1)
    """Replies the local engine generates at once, for all sessions and requests together;
    more wait by priority. llama.cpp opens this many contexts over the model (each its own KV
    cache; on a GPU each its own copy of the weights) and splits ``threads`` between them (at
    least one each); transformers decodes one reply at a time whatever this says."""
    gguf_cache_dir: Path | None = None
    """Where dequantized GGUF weights are cached (default: ``<cache_dir>/gguf``)."""
    hosted: HostedSettings = HostedSettings()
    """The ``hosted`` backend: an OpenAI-compatible endpoint."""
    chain: list[BackendName] | None = None
    """Ordered backends, e.g. ``["gpu","cpu","hosted"]``. Unset: ``gpu`` then ``cpu`` on a
    machine with CUDA, else ``cpu``; then ``hosted`` when its base URL is set."""
    fallback: FallbackSettings = FallbackSettings()
    """Deadlines and circuit breaker of the chain."""
    gpu: LLMGpuSettings = LLMGpuSettings()
    """The ``gpu`` backend (used when the chain names it)."""
    tiers: dict[str, LLMTierSettings] = {}
    """More LLM tiers by name, as JSON, e.g. ``{"large": {"model": "/models/qwen2.5-1.5b.gguf"},
    "hosted": {"engine": "hosted", "hosted": {"base_url": "https://.../v1"}}}``; this section
    is the ``router.default_tier``. Empty: one tier, every turn on this model."""


class RouterSettings(BaseModel):
    """Which LLM tier answers each turn (``pipeline.router``): the tier each cheap signal sends
    a turn to. The ``llm`` section itself is the ``default_tier``; the others are
    ``llm.tiers``. A tier named here but not configured falls back to the default tier."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    default_tier: str = "small"
    """The name of the ``llm`` section's own tier: small talk and unclassified turns."""
    tool_tier: str | None = "large"
    """Turns with functions offered, or a function's result to read."""
    knowledge_tier: str | None = "large"
    """Turns grounded in passages the knowledge base retrieved."""
    hard_tier: str | None = "hosted"
    """Long or hard requests (compare, calculate, write code...); without it, the
    ``long_answer_tier``."""
    long_answer_tier: str | None = "large"
    """Requests for an explanation, a description, a list."""
    question_tier: str | None = "large"
    """Other questions (facts: the smallest model gets them wrong most)."""
    hard_words: int = Field(default=40, ge=1)
    """A request of at least this many words is hard."""
    long_answer_tokens: int = Field(default=256, ge=1)
    """A request with a ``max_tokens`` of at least this asks for a long answer."""


def llm_threads(configured: int) -> int:
    """The LLM's CPU thread count: ``configured``, or half the cores (at least 1) when 0."""
    return configured or max(1, (os.cpu_count() or 2) // 2)
