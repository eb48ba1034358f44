"""Facts about the machine under the engines: driver, CUDA, cuDNN, what CTranslate2 needs, and
the GPU memory free (for ``models/doctor.py``).

Every check asks the library itself (torch, CTranslate2, the dynamic loader, ``nvidia-smi``)
rather than reading versions from files: what matters is what loads in this process.
"""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Check:
    """One fact about the machine. ``ok`` is ``None`` for information that decides nothing."""

    name: str
    ok: bool | None
    detail: str


def _library(name: str) -> bool:
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def machine_checks(gpu: bool) -> list[Check]:
    """Driver, CUDA, cuDNN and what CTranslate2 needs. Without ``gpu`` CUDA is information."""
    need = True if gpu else None
    checks = [Check("python", None, f"{platform.python_version()} on {platform.machine()}")]
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total"
        out = subprocess.run(
            [smi, query, "--format=csv,noheader"], capture_output=True, text=True, check=False
        )
        checks.append(Check("driver", need if out.returncode else True, out.stdout.strip()))
    else:
        checks.append(Check("driver", False if gpu else None, "nvidia-smi not found"))
    try:
        import torch
    except ImportError as exc:
        checks.append(Check("torch", False, f"not importable: {exc}"))
    else:
        cuda = torch.cuda.is_available()
        build = f"torch {torch.__version__}, built for CUDA {torch.version.cuda}"
        where = f"; {torch.cuda.get_device_name(0)}" if cuda else "; no CUDA device usable"
        checks.append(Check("torch CUDA", cuda if gpu else None, build + where))
        version: Any = torch.backends.cudnn.version  # untyped in torch's stubs
        cudnn = version() if cuda else None
        checks.append(Check("cuDNN (torch)", bool(cudnn) if gpu else None, f"version {cudnn}"))
    try:
        import ctranslate2
    except ImportError as exc:
        checks.append(Check("CTranslate2", False, f"not importable: {exc}"))
    else:
        count = ctranslate2.get_cuda_device_count()
        types_ = sorted(ctranslate2.get_supported_compute_types("cuda")) if count else []
        detail = f"{ctranslate2.__version__}: {count} CUDA device(s), compute types {types_}"
        checks.append(Check("CTranslate2 CUDA", count > 0 if gpu else None, detail))
        # CTranslate2's CUDA wheels link cuBLAS 12 at run time (it is opened on first use)
        cublas = _library("libcublas.so.12")
        checks.append(Check("cuBLAS 12 (CTranslate2)", cublas if gpu else None, str(cublas)))
        checks.append(Check("cuDNN 9 on the library path", None, str(_library("libcudnn.so.9"))))
    return checks


def gpu_free_mib() -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info()
    return float(free) / 2**20
