"""Where GPT-SoVITS lives and how its workers start: checked by the engine's ``start()``.

Nothing here runs at construction: a backend that cannot start (no checkout, no interpreter, a
weights file that is not there) must not keep the rest of a fallback chain from starting, so the
engine calls ``worker_spec`` from ``start()`` and the chain reports its ``ModelLoadError``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.gpt_sovits_process import WORKER_SCRIPT, WorkerSpec
from pipeline.errors import ModelLoadError
from pipeline.settings import GptSovitsSettings


def configured(settings: GptSovitsSettings, environ: Mapping[str, str]) -> bool:
    """Whether a checkout and an interpreter are named (in the settings or the environment);
    says nothing of whether they work, which only ``start()`` finds out."""
    home = settings.home or environ.get("GPT_SOVITS_HOME")
    python = settings.python or environ.get("GPT_SOVITS_PYTHON")
    return bool(home and python)


def worker_spec(
    settings: GptSovitsSettings,
    environ: Mapping[str, str],
    *,
    env: Mapping[str, str],
    extra_pythonpath: Sequence[Path],
    backend: str,
) -> tuple[Path, Path, WorkerSpec]:
    """The checkout, the interpreter and how to start a worker, all checked.

    Args:
        settings: The ``tts.gpt_sovits`` settings.
        environ: Where ``GPT_SOVITS_HOME`` / ``GPT_SOVITS_PYTHON`` are read when the settings
            leave them unset, and the base of the workers' environment.
        env: Variables added to the workers' environment.
        extra_pythonpath: Folders put before the checkout on the workers' ``PYTHONPATH``.
        backend: The backend name for errors.

    Raises:
        ModelLoadError: no checkout or interpreter, or a configured weights file is missing.
    """
    home = _checkout(settings.home, environ.get("GPT_SOVITS_HOME"), backend)
    python = _interpreter(settings.python, environ.get("GPT_SOVITS_PYTHON"), backend)
    custom: dict[str, Any] = {
        # "auto": ask for CUDA; upstream falls back to the CPU (and drops fp16) without one.
        "device": "cuda" if settings.device == "auto" else settings.device,
        "is_half": settings.is_half,
        "version": settings.version,
    }
    # Upstream silently loads its default weights when a path does not exist: check first.
    for key, path in (
        ("t2s_weights_path", settings.t2s_weights),
        ("vits_weights_path", settings.vits_weights),
    ):
        if path is not None:
            if not path.is_file():
                raise _error(f"{key.removesuffix('_path')} {str(path)!r} not found", backend)
            custom[key] = str(path.resolve())
    paths = [*(str(p.resolve()) for p in extra_pythonpath), str(home), str(home / "GPT_SoVITS")]
    worker_env = {**environ, **env, "PYTHONPATH": os.pathsep.join(paths)}
    # torch reads this at start-up; by default the cores are shared out between the workers
    # (torch's own default, every core per worker, measured 3-4x slower on 2 cores). A pool
    # sized by memory has at most one worker per two cores on a CPU.
    cores = os.cpu_count() or 1
    planned = settings.pool_size or min(settings.pool_max_size, max(1, cores // 2))
    worker_env["OMP_NUM_THREADS"] = str(settings.threads or max(1, cores // planned))
    spec = WorkerSpec(
        argv=(str(python), str(WORKER_SCRIPT)),
        cwd=home,
        env=worker_env,
        init={"op": "init", "config": {"custom": custom}, "config_dir": None},
        start_timeout_s=settings.start_timeout_s,
        request_timeout_s=settings.request_timeout_s,
    )
    return home, python, spec


def _checkout(configured: Path | None, from_env: str | None, backend: str) -> Path:
    raw = configured or (Path(from_env) if from_env else None)
    if raw is None:
        raise _error(
            "no GPT-SoVITS checkout: set tts.gpt_sovits.home (VOXLINE_TTS__GPT_SOVITS__HOME) "
            "or GPT_SOVITS_HOME",
            backend,
        )
    home = raw.expanduser().resolve()
    if not (home / "GPT_SoVITS" / "TTS_infer_pack" / "TTS.py").is_file():
        raise _error(
            f"{str(home)!r} is not a GPT-SoVITS checkout: "
            "GPT_SoVITS/TTS_infer_pack/TTS.py is missing",
            backend,
        )
    return home


def _interpreter(configured: Path | None, from_env: str | None, backend: str) -> Path:
    raw = configured or (Path(from_env) if from_env else None)
    if raw is None:
        raise _error(
            "no interpreter for GPT-SoVITS: set tts.gpt_sovits.python "
            "(VOXLINE_TTS__GPT_SOVITS__PYTHON) or GPT_SOVITS_PYTHON to its venv's python",
            backend,
        )
    python = raw.expanduser()
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise _error(f"GPT-SoVITS interpreter {str(python)!r} is not executable", backend)
    return python.absolute()  # not resolve(): a venv's python is a symlink that must stay one


def _error(message: str, backend: str) -> ModelLoadError:
    return ModelLoadError(message, stage="tts", backend=backend)
