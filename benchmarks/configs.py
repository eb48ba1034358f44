"""What ``--config`` names: a settings ``.env`` file, a named preset, or both joined by ``+``.

A benchmark compares configurations (engine, device, model), so a configuration must be
something one can name on the command line and reproduce: a file for anything, presets for the
comparisons people make most (``--config transformers --config llamacpp``). A configuration is
turned into ``Settings`` for in-process scenarios and into ``VOXLINE_*`` environment variables
for a server the benchmark starts itself, so both paths see the same settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import InvalidInput
from pipeline.settings import Settings
from pipeline.settings_env import merge

Overrides = dict[str, Any]

PRESETS: dict[str, Overrides] = {
    "transformers": {"llm": {"engine": "transformers"}},
    "llamacpp": {"llm": {"engine": "llamacpp"}},
    "whisper-tiny": {"stt": {"model": "packaged:whisper-tiny.en"}},
    "whisper-base": {"stt": {"model": "packaged:whisper-base"}},
    "beam5": {"stt": {"beam_size": 5}},
    "cpu": {"stt": {"device": "cpu"}, "llm": {"device": "cpu"}, "tts": {"device": "cpu"}},
    "cuda": {"stt": {"device": "cuda"}, "llm": {"device": "cuda"}, "tts": {"device": "auto"}},
}
"""Named configurations for ``--config``; combine them with ``+`` (``llamacpp+whisper-base``)."""


def device_overrides(device: str) -> Overrides:
    """``--device``: STT and LLM on ``device``; Piper on CUDA only where onnxruntime-gpu is
    installed (``auto``), since a CPU-only onnxruntime is the common case even on GPU hosts."""
    tts = "auto" if device == "cuda" else device
    return {"stt": {"device": device}, "llm": {"device": device}, "tts": {"device": tts}}


@dataclass(frozen=True, slots=True)
class ConfigSpec:
    """One configuration: an optional settings file plus nested overrides.

    Attributes:
        label: how reports name it (the file stem or the preset names).
        env_file: a ``.env`` file of ``VOXLINE_*`` variables, or ``None`` (the usual ``./.env``).
        overrides: nested settings values applied over the file (``{"llm": {"engine": ...}}``).
    """

    label: str = "default"
    env_file: Path | None = None
    overrides: Overrides = field(default_factory=dict)

    def with_overrides(self, extra: Overrides) -> ConfigSpec:
        """The same configuration with ``extra`` merged over its overrides."""
        return ConfigSpec(self.label, self.env_file, merge(self.overrides, extra))

    def settings(self) -> Settings:
        """The ``Settings`` this configuration describes (environment variables still win over
        the file, as everywhere in voxline; the overrides win over both)."""
        if self.env_file is None:
            return Settings(**self.overrides)
        return Settings(_env_file=self.env_file, **self.overrides)  # type: ignore[call-arg]

    def environ(self) -> dict[str, str]:
        """``VOXLINE_*`` variables for a server process started with this configuration."""
        env: dict[str, str] = {}
        if self.env_file is not None:
            from dotenv import dotenv_values  # pydantic-settings' own .env reader

            env.update({k: v for k, v in dotenv_values(self.env_file).items() if v is not None})
        env.update(_flatten(self.overrides, "VOXLINE_"))
        return env


def _flatten(values: Mapping[str, Any], prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key.upper()}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "__"))
        else:
            out[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def parse_config(text: str) -> ConfigSpec:
    """A ``--config`` value: ``path.env``, a preset name, or several joined with ``+``.

    Raises:
        InvalidInput: a part that is neither an existing file nor a preset.
    """
    env_file: Path | None = None
    overrides: Overrides = {}
    labels: list[str] = []
    for part in (p.strip() for p in text.split("+")):
        if part in PRESETS:
            overrides = merge(overrides, PRESETS[part])
            labels.append(part)
        elif Path(part).is_file():
            if env_file is not None:
                raise InvalidInput(f"--config {text!r}: at most one settings file", param="config")
            env_file = Path(part)
            labels.append(env_file.stem or env_file.name)
        else:
            known = ", ".join(sorted(PRESETS))
            raise InvalidInput(
                f"--config {part!r} is neither a settings file nor a preset ({known})",
                param="config",
            )
    return ConfigSpec("+".join(labels), env_file, overrides)
