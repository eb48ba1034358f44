"""The embedding contract: texts in, unit-length float32 vectors out.

An embedding model is an auxiliary engine of the pipeline rather than one of its three voice
stages: the knowledge base embeds chunks and queries with it, and the evaluation scores the
meaning of an answer with it. Like the stages, an ``Embedder`` is cheap to construct, loads in
``start()`` off the event loop and releases in ``aclose()``; the public ``embed`` validates the
input before any model work and checks what the engine returned, and an engine implements only
``_embed``.

Vectors are L2-normalized, so the cosine similarity of two texts is the dot product of their
vectors and a store can rank by inner product.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from pipeline.errors import InvalidInput, Stage, StageError, VoxlineError

Float32Matrix = npt.NDArray[np.float32]

STAGE: Stage = "pipeline"
"""What an embedder's errors name as their stage: ``Stage`` lists the pipeline's own steps, and
an embedder serves the pipeline (retrieval in the turn) rather than being a voice stage."""


def cosine_matrix(queries: Float32Matrix, documents: Float32Matrix) -> Float32Matrix:
    """Cosine similarities of unit vectors: ``(n_queries, n_documents)``."""
    return np.asarray(queries @ documents.T, dtype=np.float32)


class Embedder(abc.ABC):
    """Turns texts into L2-normalized float32 vectors of one fixed dimension.

    Args:
        name: the backend name, e.g. ``"minilm:cpu"``.
        device: where the model runs.
    """

    def __init__(self, *, name: str, device: str = "cpu") -> None:
        self.name = name
        self.device = device
        # one batch at a time: on a CPU two concurrent batches only share the same cores
        self._lock = threading.Lock()

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Length of every vector."""

    @property
    @abc.abstractmethod
    def max_input_tokens(self) -> int:
        """Tokens the model reads per text; longer texts are truncated, so chunk below this."""

    def load(self) -> None:  # noqa: B027  # optional hook: an engine without weights loads nothing
        """Blocking: load the model. ``start()`` calls it off the event loop."""

    async def start(self) -> None:
        """Load the model without blocking the event loop."""
        await asyncio.to_thread(self.load)

    async def aclose(self) -> None:  # noqa: B027  # optional hook: most engines hold nothing async
        """Release the model's resources."""

    def embed(self, texts: Sequence[str]) -> Float32Matrix:
        """Blocking: embed ``texts`` into an ``(n, dim)`` float32 array of unit rows.

        Raises:
            InvalidInput: no texts, a text that is not a string, or a blank one.
            StageError: the engine failed or returned something of the wrong shape.
        """
        checked = validate_texts(texts)
        with self._lock:
            try:
                vectors = self._embed(checked)
            except VoxlineError:
                raise
            except Exception as exc:
                raise StageError(
                    f"{type(exc).__name__}: {exc}", stage=STAGE, backend=self.name
                ) from exc
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(checked), self.dim) or not np.isfinite(vectors).all():
            raise StageError(
                f"the engine returned an array of shape {vectors.shape} (or non-finite values) "
                f"for {len(checked)} texts of dimension {self.dim}",
                stage=STAGE,
                backend=self.name,
                retryable=False,
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    async def aembed(self, texts: Sequence[str]) -> Float32Matrix:
        """``embed`` in a worker thread: the model's work never runs on the event loop.

        Raises:
            InvalidInput: see ``embed`` (raised before any thread is started).
            StageError: the engine failed.
        """
        checked = validate_texts(texts)
        return await asyncio.to_thread(self.embed, checked)

    @abc.abstractmethod
    def _embed(self, texts: list[str]) -> Float32Matrix:
        """Engine work: ``texts`` are validated; return ``(len(texts), dim)`` (normalized here)."""


def validate_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or a clear error before any model work.

    Raises:
        InvalidInput: no texts, a non-string (a bare string is refused too: it is a sequence
            of characters, almost always a missing ``[...]``), or a blank text.
    """
    if isinstance(texts, str):
        raise InvalidInput("texts must be a list of strings, not one string", param="input")
    items = list(texts)
    if not items:
        raise InvalidInput("no texts to embed", param="input", code="empty_input")
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise InvalidInput(f"texts[{i}] is {type(text).__name__}, not a string", param="input")
        if not text.strip():
            raise InvalidInput(f"texts[{i}] is blank", param="input", code="empty_input")
    return items
