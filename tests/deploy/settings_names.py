"""Whether an environment variable name is a voxline setting (pydantic-settings ignores unknown
``VOXLINE_`` names silently, so a typo in a deployment file would never be noticed)."""

from __future__ import annotations

from pydantic import BaseModel

from pipeline.settings import Settings


def is_setting(name: str) -> bool:
    """``VOXLINE_LLM__HOSTED__BASE_URL`` -> is ``llm.hosted.base_url`` a field of the tree?"""
    if not name.startswith("VOXLINE_"):
        return False
    model: type[BaseModel] | None = Settings
    for part in name.removeprefix("VOXLINE_").lower().split("__"):
        if model is None or part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation if nested else None
    return True
