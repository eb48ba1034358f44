"""OpenAI's ``file_search`` tool as a turn names it: the value, and its parsing from a
``tools`` list (``/v1/turns``' ``tools``, a realtime ``session.tools``).

Parsing is strict and before any work: a bad field is an ``InvalidInput`` naming it. What the
search does with it is ``pipeline.knowledge``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class FileSearch:
    """OpenAI's ``file_search`` tool as a turn names it: which stores, how many results.

    Attributes:
        vector_store_ids: The stores to search (at least one).
        max_num_results: Passages to retrieve (``None``: the ``top_k`` setting).
        score_threshold: Relevance threshold (``None``: the ``relevance_threshold`` setting).
    """

    vector_store_ids: tuple[str, ...]
    max_num_results: int | None = None
    score_threshold: float | None = None


def file_search_of(tools: object, *, param: str = "tools") -> FileSearch | None:
    """The ``file_search`` tool of an OpenAI ``tools`` list (``None``: no such tool).

    Function tools are another parser's (``pipeline.tool_calls.parse_tools``) and are skipped
    here; any other type is refused. ``filters`` are not supported in a turn (the search route
    has them).

    Raises:
        InvalidInput: not a list of tool objects, an unknown tool type, a second
            ``file_search``, or a bad field of it (``param`` names it).
    """
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise InvalidInput(f"{param} must be a list of tools", param=param, code="invalid_value")
    found: FileSearch | None = None
    for i, tool in enumerate(tools):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict):
            raise InvalidInput(f"{where} must be an object", param=where, code="invalid_value")
        kind = tool.get("type")
        if kind == "function":
            continue
        if kind != "file_search":
            raise InvalidInput(
                f"{where}: tools of type {str(kind)[:32]!r} are not supported "
                "(only function and file_search)",
                param=param,
                code="unsupported_value",
            )
        if found is not None:
            raise InvalidInput(
                "only one file_search tool is allowed", param=where, code="invalid_value"
            )
        found = _file_search(tool, where)
    return found


def _file_search(tool: Mapping[str, Any], where: str) -> FileSearch:
    ids = tool.get("vector_store_ids")
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, str) and 0 < len(i) <= 100 for i in ids)
    ):
        raise InvalidInput(
            f"{where}.vector_store_ids must be a non-empty list of vector store ids",
            param=f"{where}.vector_store_ids",
            code="invalid_value",
        )
    if len(set(ids)) > 16:
        raise InvalidInput(
            "at most 16 vector stores per search",
            param=f"{where}.vector_store_ids",
            code="invalid_value",
        )
    k = tool.get("max_num_results")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 50):
        raise InvalidInput(
            f"{where}.max_num_results must be an integer from 1 to 50",
            param=f"{where}.max_num_results",
            code="invalid_value",
        )
    if tool.get("filters") is not None:
        raise InvalidInput(
            "filters are not supported in a turn's file_search (the search route has them)",
            param=f"{where}.filters",
            code="unsupported_value",
        )
    threshold = None
    ranking = tool.get("ranking_options")
    if ranking is not None:
        value = ranking.get("score_threshold") if isinstance(ranking, dict) else "bad"
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1
        ):
            raise InvalidInput(
                f"{where}.ranking_options.score_threshold must be a number from 0 to 1",
                param=f"{where}.ranking_options.score_threshold",
                code="invalid_value",
            )
        threshold = None if value is None else float(value)
    return FileSearch(tuple(dict.fromkeys(ids)), k, threshold)
