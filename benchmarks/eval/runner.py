"""Run the chosen suites against one configuration and build the scorecard.

A suite that fails is recorded as ``error`` with its reason and the others still run: a
scorecard with one broken suite is more useful than none, and the gate treats the metrics that
suite lost as missing. Suites run in ``SUITES`` order whatever order they were named in, so the
latency suite, which closes the in-process engines to start a server, is always last.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time

from benchmarks.configs import ConfigSpec
from benchmarks.eval import provenance, scorecard
from benchmarks.eval.context import EvalContext, EvalOptions, Progress
from benchmarks.eval.golden import Golden
from benchmarks.eval.scorecard import SUITES, SuiteResult
from pipeline.errors import InvalidInput, VoxlineError
from pipeline.settings import Settings

log = logging.getLogger("voxline.eval")


def parse_suites(text: str) -> tuple[str, ...]:
    """``--suite stt,answers`` as suite names in run order.

    Raises:
        InvalidInput: an unknown suite, or none.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = ", ".join(SUITES)
    if not names:
        raise InvalidInput(f"no suite named; known: {known}", param="suite")
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise InvalidInput(f"unknown suite {unknown[0]!r}; known: {known}", param="suite")
    return tuple(s for s in SUITES if s in names)


async def run_eval(
    suites: tuple[str, ...],
    config: ConfigSpec,
    options: EvalOptions,
    *,
    golden: Golden | None = None,
    progress: Progress | None = None,
    release: str | None = None,
    settings: Settings | None = None,
) -> dict[str, object]:
    """Run ``suites`` and return the scorecard (see ``benchmarks.eval.scorecard``).

    Args:
        release: The release scored (the card's ``release``), if one.
        settings: The settings to score (default: ``config.settings()``); a release's are its
            process's settings with its overrides laid over them.
    """
    from benchmarks.eval.suites import RUNNERS

    golden = golden or Golden()
    settings = settings or config.settings()
    ctx = EvalContext(config, settings, golden, options, progress)
    results: list[SuiteResult] = []
    backends: dict[str, str] = {}
    try:
        for name in suites:
            start = time.perf_counter()
            try:
                result = await RUNNERS[name](ctx)
            except VoxlineError as exc:
                log.warning("suite %s failed: %s", name, exc)
                result = SuiteResult(name, "error", f"{type(exc).__name__}: {exc}")
                result.seconds = time.perf_counter() - start
            backends.update(ctx.bench.backends())
            results.append(result)
    finally:
        await ctx.aclose()
    producer = {**provenance.producer(settings), "backends": backends}
    return scorecard.build(
        results,
        producer=producer,
        golden={"dir": str(golden.root), "sha256": golden.digest()},
        quick=options.quick,
        command=shlex.join(["voxline", *sys.argv[1:]]),
        release=release,
    )
