"""What produced a scorecard: model references, the system prompt's hash, a digest of the settings.

A score without its producer cannot be acted on: the release gate must know that two cards
differ in their prompt and not in their STT model. The settings digest hashes every setting as
pydantic dumps it (secrets come out masked, so a key never reaches the card and a key change
does not change the digest); the prompt gets a hash of its own because it is the setting most
often changed on purpose.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.environment import environment
from pipeline.settings import Settings

EMBEDDER_REF = "packaged:all-minilm-l6-v2"
"""The embedding model of the semantic match (a judge: fixed, whatever the settings say)."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _ref(engine: str, model: str, hosted_model: str | None, base_url: str | None) -> str:
    return f"{hosted_model or '-'} @ {base_url}" if engine == "hosted" else model


def model_refs(settings: Settings) -> dict[str, dict[str, str]]:
    """Engine, model reference and device of each stage's configured (``cpu`` or hosted) backend,
    and of the embedding judge. The backend that actually served is in ``producer.backends``."""
    s = settings
    tts_ref = s.tts.gpt_sovits.version if s.tts.engine == "gpt_sovits" else s.tts.model
    return {
        "stt": {
            "engine": s.stt.engine,
            "ref": _ref(s.stt.engine, s.stt.model, s.stt.hosted.model, s.stt.hosted.base_url),
            "device": s.stt.device,
        },
        "llm": {
            "engine": s.llm.engine,
            "ref": _ref(s.llm.engine, s.llm.model, s.llm.hosted.model, s.llm.hosted.base_url),
            "device": s.llm.device,
        },
        "tts": {
            "engine": s.tts.engine,
            "ref": _ref(s.tts.engine, tts_ref, s.tts.hosted.model, s.tts.hosted.base_url),
            "device": s.tts.device,
        },
        "embedder": {"engine": "minilm", "ref": EMBEDDER_REF, "device": "cpu"},
    }


def settings_digest(settings: Settings) -> str:
    """SHA-256 of the settings as JSON (keys sorted, secrets masked by pydantic)."""
    dumped = settings.model_dump(mode="json")
    return _sha256(json.dumps(dumped, sort_keys=True, default=str))


def git_commit(root: Path | None = None) -> str | None:
    """The repository's HEAD commit, with ``+dirty`` when the work tree has changes; ``None``
    outside a git checkout."""
    cwd = root or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def producer(settings: Settings) -> dict[str, Any]:
    """The scorecard's ``producer`` object."""
    try:
        version: str | None = metadata.version("voxline")
    except metadata.PackageNotFoundError:
        version = None
    return {
        "models": model_refs(settings),
        "prompt_sha256": _sha256(settings.llm.system_prompt),
        "settings_sha256": settings_digest(settings),
        "sampling": {
            "max_tokens": settings.llm.max_tokens,
            "temperature": settings.llm.temperature,
            "top_p": settings.llm.top_p,
        },
        "voxline": version,
        "git_commit": git_commit(),
        "environment": environment(),
    }
