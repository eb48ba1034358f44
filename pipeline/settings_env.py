"""Settings overrides written as ``VOXLINE_*`` lines: parsed, checked against the tree, applied.

A release (docs/releases.md) is an env file of ``VOXLINE_<SECTION>__<FIELD>=value`` lines laid
over the settings of the process that runs it. Unlike the process's own environment, where
pydantic-settings silently ignores what it does not know, a release is checked here, field by
field, before it is stored: a misspelt key would otherwise be a release that changes nothing.

- ``parse_env(text)``: the lines as ``{VARIABLE: raw value}`` (python-dotenv's reader, the
  one pydantic-settings uses: comments, quotes, ``export``);
- ``to_tree(env)``: the variables as nested overrides (``{"llm": {"max_tokens": "64"}}``);
  unknown keys, secrets and refused sections raise ``InvalidInput`` naming the variable.
  Leaves that are lists, dicts or models are JSON, as pydantic-settings reads them;
- ``apply(base, tree)``: ``base`` with the overrides laid over it, validated as a whole, a bad
  value named by its variable. The process environment does not leak in: the result is
  ``base`` plus exactly the overrides.
"""

from __future__ import annotations

import io
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

from dotenv import dotenv_values
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from pipeline.errors import InvalidInput
from pipeline.settings import Settings

PREFIX = "VOXLINE_"
DELIMITER = "__"

Tree = dict[str, Any]
"""Nested overrides: section -> field -> value (the shape ``Settings(**tree)`` takes)."""


def variable(path: tuple[str | int, ...]) -> str:
    """The environment variable of a settings path: ``("llm", "max_tokens")`` ->
    ``VOXLINE_LLM__MAX_TOKENS`` (list indices and dict keys of a JSON value are dropped)."""
    names = []
    for part in path:
        if not isinstance(part, str):
            break
        names.append(part.upper())
    return PREFIX + DELIMITER.join(names)


def parse_env(text: str) -> dict[str, str]:
    """``KEY=value`` lines as a dict, in order (comments, blank lines, quotes handled).

    Raises:
        InvalidInput: a line without a value (``KEY`` alone).
    """
    values = dotenv_values(stream=io.StringIO(text))
    empty = [key for key, value in values.items() if value is None]
    if empty:
        raise InvalidInput(f"{empty[0]}: no value (write {empty[0]}=...)", param="env")
    return {key: value for key, value in values.items() if value is not None}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds (``X`` or ``X | None``), if it holds one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if _model_of(a) is not None]
        return _model_of(models[0]) if len(models) == 1 else None
    return None


def _mentions(annotation: Any, kinds: tuple[type, ...]) -> bool:
    """Whether ``annotation`` is, or contains, one of ``kinds`` (``SecretStr | None``...)."""
    if isinstance(annotation, type) and issubclass(annotation, kinds):
        return True
    origin = typing.get_origin(annotation)
    if origin is not None and isinstance(origin, type) and issubclass(origin, kinds):
        return True
    return any(_mentions(arg, kinds) for arg in typing.get_args(annotation))


def _secret_in(annotation: Any, value: Any, path: str = "") -> str | None:
    """The path of a secret field ``value`` sets somewhere inside ``annotation`` (a JSON
    section, dict or list of sections), if it sets one (``None``, not a secret, is fine)."""
    if value is None:
        return None
    if isinstance(annotation, type) and issubclass(annotation, SecretStr):
        return path or "a secret"
    model = _model_of(annotation)
    if model is not None and isinstance(value, dict):
        for key, item in value.items():
            field = model.model_fields.get(str(key))
            if field is not None:
                found = _secret_in(field.annotation, item, f"{path}.{key}".lstrip("."))
                if found is not None:
                    return found
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        for arg in args:
            found = _secret_in(arg, value, path)
            if found is not None:
                return found
    elif origin is dict and isinstance(value, dict) and len(args) == 2:
        for key, item in value.items():
            found = _secret_in(args[1], item, f"{path}.{key}".lstrip("."))
            if found is not None:
                return found
    elif origin in (list, tuple, set) and isinstance(value, list) and args:
        for index, item in enumerate(value):
            found = _secret_in(args[0], item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _is_json(field: FieldInfo) -> bool:
    # pydantic-settings reads these from the environment as JSON: so do we
    return _mentions(field.annotation, (BaseModel, list, dict, set, tuple))


def to_tree(
    env: Mapping[str, str],
    *,
    model: type[BaseModel] = Settings,
    refused: Mapping[str, str] | None = None,
) -> Tree:
    """``VOXLINE_*`` variables as nested overrides of ``model``'s tree.

    Args:
        env: Variable -> raw value (case-insensitive names, as pydantic-settings reads them).
        model: The settings tree.
        refused: Settings the overrides may not touch -> why (said in the error): a
            top-level field (``"state"``) or a field of a section (``"kb.embedding_model"``).

    Raises:
        InvalidInput: a variable without the prefix, naming no setting, naming a secret (a
            release is stored as written: secrets belong in the process environment), naming a
            refused section, or a JSON leaf that is not JSON.
    """
    tree: Tree = {}
    refused = refused or {}
    for key, raw in env.items():
        name = key.strip().upper()
        if not name.startswith(PREFIX) or len(name) == len(PREFIX):
            raise InvalidInput(f"{key}: not a voxline setting (VOXLINE_...)", param="env")
        parts = name[len(PREFIX) :].lower().split(DELIMITER)
        for depth in range(len(parts)):
            why = refused.get(".".join(parts[: depth + 1]))
            if why is not None:
                raise InvalidInput(f"{name}: {why}", param="env")
        current: type[BaseModel] = model
        node = tree
        for depth, part in enumerate(parts):
            field = current.model_fields.get(part)
            if field is None:
                where = variable(tuple(parts[:depth])) + DELIMITER if depth else PREFIX
                known = ", ".join(sorted(f.upper() for f in current.model_fields))
                raise InvalidInput(
                    f"{name}: unknown setting {part.upper()!r} under {where}... "
                    f"(known: {known}; see docs/settings.md)",
                    param="env",
                )
            if _mentions(field.annotation, (SecretStr,)):
                raise InvalidInput(
                    f"{name}: a secret; set it in the server's environment, not in a release "
                    "(releases are stored as written)",
                    param="env",
                )
            last = depth == len(parts) - 1
            inner = _model_of(field.annotation)
            if not last:
                if inner is None:
                    raise InvalidInput(
                        f"{name}: {variable(tuple(parts[: depth + 1]))} has no fields: "
                        "set it whole (JSON for a list or a dict)",
                        param="env",
                    )
                current = inner
                child = node.setdefault(part, {})
                if not isinstance(child, dict):  # the section was also set whole, as JSON
                    raise InvalidInput(f"{name}: its section is set twice", param="env")
                node = child
                continue
            value: Any = raw
            if _is_json(field):
                try:
                    value = json.loads(raw)
                except ValueError as exc:
                    raise InvalidInput(
                        f"{name}: not JSON ({exc}); lists, dicts and sections are JSON",
                        param="env",
                    ) from None
                secret = _secret_in(field.annotation, value)
                if secret is not None:  # e.g. a tier's hosted api_key inside VOXLINE_LLM__TIERS
                    raise InvalidInput(
                        f"{name}: holds a secret ({secret}); set it in the server's "
                        "environment, not in a release (releases are stored as written)",
                        param="env",
                    )
                if inner is not None and isinstance(value, dict):
                    # a section set whole: its own refused fields stay refused
                    for sub in value:
                        why = refused.get(".".join([*parts, str(sub).lower()]))
                        if why is not None:
                            raise InvalidInput(f"{name}: {sub}: {why}", param="env")
            if part in node:
                raise InvalidInput(f"{name}: set twice", param="env")
            node[part] = value
    return tree


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> Tree:
    """Deep merge of nested dicts (``extra`` wins; a dict in ``extra`` over a dict merges)."""
    out: Tree = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply(base: Settings, tree: Mapping[str, Any]) -> Settings:
    """``base`` with ``tree`` laid over it, validated as a whole.

    ``model_validate`` rather than ``Settings(...)``: the latter would read the environment
    and ``.env`` again, and their values would win over ``base``'s.

    Raises:
        InvalidInput: a value the tree refuses, named by its variable.
    """
    merged = merge(base.model_dump(), tree)
    try:
        return type(base).model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{variable(tuple(err['loc']))}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise InvalidInput(f"bad setting: {problems}", param="env") from None
