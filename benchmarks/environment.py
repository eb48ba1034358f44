"""The machine and software a benchmark ran on, recorded beside its numbers.

A latency without its CPU, core count, GPU and library versions cannot be compared with
anything, so every results file carries them.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

LIBRARIES: tuple[str, ...] = (
    "voxline",
    "numpy",
    "torch",
    "transformers",
    "faster-whisper",
    "ctranslate2",
    "piper-tts",
    "onnxruntime",
    "llama_cpp_python",
    "fastapi",
    "uvicorn",
    "websockets",
)
"""Distributions whose versions move the numbers."""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpus() -> list[str]:
    """Names of the CUDA devices torch sees (empty: none, or torch is not installed)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [str(torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())]


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """CPU model, cores, memory, GPUs (``"none"``), OS, Python and library versions."""
    devices = gpus()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "gpu": ", ".join(devices) if devices else "none",
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "libraries": {name: _version(name) for name in LIBRARIES},
    }
