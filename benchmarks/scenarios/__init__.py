"""The benchmark scenarios, by name, and the engines each needs started in process.

``stt``, ``llm``, ``tts`` and ``turn`` run the engines in this process; ``realtime`` and
``load`` talk to a server over the WebSocket, ``retrieval`` to its knowledge base over HTTP (a
running one given by ``--url``, or one the benchmark starts with the same configuration).
``compare`` is not a scenario of its own: it runs the other named scenarios once per
``--config`` (see ``benchmarks.runner``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from benchmarks.context import BenchContext, ScenarioResult
from benchmarks.scenarios import endpoint, llm, load, phrasing, realtime, retrieval, stt, tts, turn

Scenario = Callable[[BenchContext, str], Awaitable[ScenarioResult]]

SCENARIOS: dict[str, Scenario] = {
    "stt": stt.run,
    "llm": llm.run,
    "tts": tts.run,
    "turn": turn.run,
    "realtime": realtime.run,
    "load": load.run,
    "retrieval": retrieval.run,
    "endpoint": endpoint.run,
    "phrasing": phrasing.run,
}
"""Every runnable scenario; each is called as ``run(ctx, result_name)``."""

STAGES: dict[str, tuple[str, ...]] = {
    "stt": stt.STAGES,
    "llm": llm.STAGES,
    "tts": tts.STAGES,
    "turn": turn.STAGES,
    "realtime": (),
    "load": (),
    "retrieval": (),
    "endpoint": endpoint.STAGES,
    "phrasing": phrasing.STAGES,
}
"""The in-process engines each scenario uses (started together before the first one runs)."""

STANDARD: tuple[str, ...] = ("stt", "llm", "tts", "turn")
"""What ``voxline bench`` runs when no scenario is named."""

SERVER: frozenset[str] = frozenset({"realtime", "load", "retrieval"})
"""Scenarios that need a server."""

COMPARE = "compare"
"""The pseudo-scenario: run the other named scenarios (default ``turn``) per ``--config``."""
