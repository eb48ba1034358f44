"""What every suite shares: options, the golden data, and engines started once per run.

The engines are the benchmark's (``benchmarks.context.BenchContext``: built from the settings by
``models.registry``, started lazily per stage and warmed, closed together), so the eval scores
exactly what ``voxline bench`` times. The embedding model is a judge, not part of the system
under test, so it is always the packaged all-MiniLM-L6-v2 whatever the settings say.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.configs import ConfigSpec
from benchmarks.context import BenchContext, BenchOptions
from benchmarks.eval.golden import Golden
from pipeline.embedding import Embedder
from pipeline.settings import Settings
from pipeline.types import AudioChunk

if TYPE_CHECKING:
    from benchmarks.eval.suites.rag import KnowledgeBaseFactory

Progress = Callable[[str, int, int], None]
"""Called as ``progress(suite, done, total)``."""


@dataclass(frozen=True, slots=True)
class EvalOptions:
    """How to run.

    Attributes:
        quick: the quick subsets (CI on every change).
        seed: LLM sampling seed (the same replies run after run).
        out_dir: where the scorecard, plots and a started server's log go.
        latency_results: a ``voxline bench`` results.json to read instead of measuring.
        url: a running server for the latency suite (default: start one).
        knowledge_base: builds the retriever/answerer the ``rag`` suite scores (None: skipped).
    """

    quick: bool = False
    seed: int = 0
    out_dir: Path = Path("eval-results")
    latency_results: Path | None = None
    url: str | None = None
    knowledge_base: KnowledgeBaseFactory | None = None


@dataclass(slots=True)
class EvalContext:
    """One run's settings, golden data and lazily started engines."""

    config: ConfigSpec
    settings: Settings
    golden: Golden
    options: EvalOptions
    progress: Progress | None = None
    bench: BenchContext = field(init=False)
    _embedder: Embedder | None = None
    _embedder_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        opts = BenchOptions(runs=1, warmup=0, quick=self.options.quick, seed=self.options.seed)
        self.bench = BenchContext(self.config, self.settings, opts, [], [])

    def tick(self, suite: str, done: int, total: int) -> None:
        """Report progress."""
        if self.progress is not None:
            self.progress(suite, done, total)

    async def embedder(self) -> Embedder:
        """The judge's embedding model, loaded on first use."""
        async with self._embedder_lock:
            if self._embedder is None:
                from benchmarks.eval.provenance import EMBEDDER_REF
                from models.embed_minilm import MiniLMEmbedder

                embedder = MiniLMEmbedder(EMBEDDER_REF, cache_dir=self.settings.cache_dir)
                await embedder.start()
                self._embedder = embedder
            return self._embedder

    async def transcribe(self, audio: AudioChunk) -> tuple[str, float]:
        """The configured STT's final transcript of ``audio`` and the milliseconds it took."""
        await self.bench.ensure("stt")
        start = time.perf_counter()
        text = ""
        async for part in self.bench.stt.transcribe(audio, language=self.settings.stt.language):
            if part.final:
                text = part.text.strip()
        return text, round((time.perf_counter() - start) * 1000, 1)

    async def aclose(self) -> None:
        """Close the engines and the embedder."""
        await self.bench.aclose()
        if self._embedder is not None:
            await self._embedder.aclose()
            self._embedder = None

    async def close_engines(self) -> None:
        """Close the in-process engines (before a server is started for the latency suite:
        idle copies of the same models would share its CPU)."""
        await self.bench.aclose()
