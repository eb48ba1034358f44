"""OpenAI's attribute filters for vector store search, parsed once and evaluated per result.

A comparison ``{"type": "eq"|"ne"|"gt"|"gte"|"lt"|"lte"|"in"|"nin", "key": ..., "value": ...}``
or a compound ``{"type": "and"|"or", "filters": [...]}``, over the attributes a file was given
when it was added to the store. A result whose attributes lack the key does not match (except
``ne`` and ``nin``, which it satisfies).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pipeline.errors import InvalidInput

Attributes = Mapping[str, Any]
Predicate = Callable[[Attributes], bool]

_ORDER = {"gt", "gte", "lt", "lte"}
_MAX_DEPTH = 8


def parse_filter(spec: Any, param: str = "filters", depth: int = 0) -> Predicate:
    """A predicate over attributes for an OpenAI filter object.

    Raises:
        InvalidInput: a malformed filter (``param`` names where).
    """
    if depth > _MAX_DEPTH:
        raise InvalidInput("filters are nested too deeply", param=param, code="invalid_value")
    if not isinstance(spec, dict):
        raise InvalidInput(f"{param} must be an object", param=param, code="invalid_value")
    kind = spec.get("type")
    if kind in ("and", "or"):
        parts = spec.get("filters")
        if not isinstance(parts, list) or not parts:
            raise InvalidInput(
                f"{param}.filters must be a non-empty list", param=param, code="invalid_value"
            )
        inner = [parse_filter(p, f"{param}.filters[{i}]", depth + 1) for i, p in enumerate(parts)]
        if kind == "and":
            return lambda a: all(p(a) for p in inner)
        return lambda a: any(p(a) for p in inner)
    key, value = spec.get("key"), spec.get("value")
    if not isinstance(key, str) or not key:
        raise InvalidInput(f"{param}.key must be a string", param=param, code="invalid_value")
    if kind in ("in", "nin"):
        if not isinstance(value, list):
            raise InvalidInput(f"{param}.value must be a list", param=param, code="invalid_value")
        members = list(value)
        if kind == "in":
            return lambda a: key in a and a[key] in members
        return lambda a: key not in a or a[key] not in members
    if not isinstance(value, str | int | float | bool):
        raise InvalidInput(
            f"{param}.value must be a string, number or boolean", param=param, code="invalid_value"
        )
    if kind == "eq":
        return lambda a: key in a and a[key] == value
    if kind == "ne":
        return lambda a: key not in a or a[key] != value
    if kind in _ORDER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(
                f"{param}: {kind} compares numbers", param=param, code="invalid_value"
            )
        return _ordered(kind, key, float(value))
    raise InvalidInput(
        f"{param}.type {str(kind)[:16]!r} is not a filter type", param=param, code="invalid_value"
    )


def _ordered(kind: str, key: str, bound: float) -> Predicate:
    def check(attributes: Attributes) -> bool:
        got = attributes.get(key)
        if isinstance(got, bool) or not isinstance(got, int | float):
            return False
        if kind == "gt":
            return got > bound
        if kind == "gte":
            return got >= bound
        if kind == "lt":
            return got < bound
        return got <= bound

    return check
