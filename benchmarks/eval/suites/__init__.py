"""The eval suites by name: each is ``run(ctx) -> SuiteResult``.

``stt``, ``tts`` and ``answers`` use in-process engines; ``rag`` the knowledge base handed in
(skipped without one); ``latency`` a server (started here, or ``--url``) or a results.json.
``latency`` runs last: it closes the in-process engines before it starts a server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from benchmarks.eval.context import EvalContext
from benchmarks.eval.scorecard import SUITES, SuiteResult
from benchmarks.eval.suites import answers, latency, rag, stt, tts

Suite = Callable[[EvalContext], Awaitable[SuiteResult]]

RUNNERS: dict[str, Suite] = {
    "stt": stt.run,
    "tts": tts.run,
    "answers": answers.run,
    "rag": rag.run,
    "latency": latency.run,
}
"""Every suite, in ``SUITES`` order."""

assert tuple(RUNNERS) == SUITES
