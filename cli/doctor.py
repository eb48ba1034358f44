"""``voxline doctor``: the machine check (``models/doctor.py`` holds the logic)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated

import typer

from pipeline.settings import Settings


def doctor(
    gpu: Annotated[bool, typer.Option("--gpu", help="Check the GPU profile on CUDA.")] = False,
    turns: Annotated[int, typer.Option(min=1, help="Turns to run (the first warms up).")] = 3,
    configured_weights: Annotated[
        bool, typer.Option("--configured-weights", help="The settings' models, not random ones.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check driver, CUDA and cuDNN, start each stage, run a few turns: timings and memory."""
    from models.doctor import report_lines, run_doctor

    report = asyncio.run(
        run_doctor(Settings(), gpu=gpu, turns=turns, configured_weights=configured_weights)
    )
    print(json.dumps(report.to_json(), indent=2) if as_json else "\n".join(report_lines(report)))
    if not report.ok:
        sys.exit(1)
