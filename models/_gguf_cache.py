"""A disk cache of GGUF checkpoints dequantized for transformers.

transformers reads a ``.gguf`` file by parsing its metadata in pure Python (the tokenizer's whole
vocabulary and merges included) and unpacking every quantized block into dense tensors. For the
packaged 135M-parameter SmolLM2 that takes tens of seconds on two cores, every start. We pay it
once: the dense model and its tokenizer are written with ``save_pretrained`` (safetensors) into a
directory keyed by the file, and later starts read that directory in well under a second.

The key is the file's size, its modification time and a hash of its first MiB (which holds the
GGUF header and metadata): a replaced or re-downloaded file gets a new entry, a plain copy of the
same file at worst a second one. The key also names the dtype the weights were unpacked to, so a
CPU (float32) and a GPU (bfloat16) start on the same machine do not overwrite each other. An
entry is written to a temporary directory beside its final place and renamed into it, so a crash
mid-write or a concurrent start never leaves a half-written entry that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

log = logging.getLogger("voxline.llm.gguf_cache")

_HEAD_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class LoadedGguf:
    """A GGUF checkpoint loaded as a dense transformers model.

    Attributes:
        model: The ``PreTrainedModel`` (on the CPU, in the dtype asked for).
        tokenizer: Its tokenizer (with the chat template read from the GGUF metadata).
        cache_path: The cache entry it was read from or written to.
        from_cache: Whether the entry already existed (a fast start).
        seconds: How long loading took, including writing the entry on a miss.
    """

    model: Any
    tokenizer: Any
    cache_path: Path
    from_cache: bool
    seconds: float


def cache_key(gguf: Path, dtype_name: str) -> str:
    """The name of ``gguf``'s cache entry when unpacked to ``dtype_name``."""
    stat = gguf.stat()
    with gguf.open("rb") as f:
        head = hashlib.sha256(f.read(_HEAD_BYTES)).hexdigest()[:16]
    return f"{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}-{head}-{dtype_name}"


def load_gguf(gguf: Path, cache_root: Path, *, dtype: Any) -> LoadedGguf:
    """Load ``gguf`` as a dense model, from its cache entry under ``cache_root`` if present.

    Args:
        gguf: The ``.gguf`` file.
        cache_root: The directory holding cache entries (created if missing).
        dtype: The ``torch.dtype`` to load the weights in.

    Raises:
        OSError, ValueError, KeyError, RuntimeError: from transformers or the file system; the
            engine translates them (it knows the model reference to name).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    dtype_name = str(dtype).removeprefix("torch.")
    entry = cache_root / cache_key(gguf, dtype_name)
    if entry.is_dir():
        try:
            model = AutoModelForCausalLM.from_pretrained(entry, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(entry)
        except (OSError, ValueError, SafetensorError) as exc:  # damaged since written: rebuild
            log.warning("dropping the unreadable GGUF cache entry %s: %s", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            seconds = time.perf_counter() - start
            log.info("loaded %s from its dequantized cache %s in %.2f s", gguf.name, entry, seconds)
            return LoadedGguf(model, tokenizer, entry, True, seconds)

    log.info("dequantizing %s (slow, once); caching it in %s", gguf.name, entry)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=dtype, **_dense_only()
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    try:
        _write_entry(entry, model, tokenizer)
    except OSError as exc:  # a read-only or full disk costs the next start time, not this one
        log.warning("could not cache the dequantized %s in %s: %s", gguf.name, entry, exc)
    seconds = time.perf_counter() - start
    log.info("loaded %s from GGUF in %.2f s", gguf.name, seconds)
    return LoadedGguf(model, tokenizer, entry, False, seconds)


def _dense_only() -> dict[str, Any]:
    # Since transformers 5, GGUF blocks stay packed when the `kernels` package is installed, and
    # save_pretrained refuses such a model; dequantize=True always gives a plain dense one.
    # Older releases have no GgufConfig and always dequantize.
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _write_entry(entry: Path, model: Any, tokenizer: Any) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the entry is as readable as its parent
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():
                raise
            # another process finished the same entry first: theirs is as good as ours
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
