"""``voxline doctor``: can this machine serve the pipeline, and how fast? A check that fits a
short lease on a GPU machine.

It checks the stack under the engines (driver, CUDA, cuDNN, what CTranslate2 needs), starts each
stage's backends the way the server does (``models.registry`` chains: the ``gpu`` ones with
``--gpu``, else the ``cpu`` ones), runs a few voice turns through ``pipeline.turn`` and prints
per-stage timings and, on a GPU, the device memory each stage took.

By default the STT and the LLM are random-weight models built on the spot
(``models/random_models.py``): no model hub, no weights to bring, and the same per-token cost as
real weights of those shapes (tiny ones: the numbers say the stack works, not how fast a real
model is). ``configured_weights=True`` uses the settings' models instead (the GPU profile's
with ``--gpu``). The TTS is the stage's chain as configured (GPT-SoVITS or Piper on the GPU,
Piper on the CPU); where none can start, the turns run STT and LLM only and say why.

A device machine may lack PyAV (35 MB, beyond a small carried set of wheels); faster-whisper
imports it at import time but voxline never calls it (audio reaches it decoded), so the doctor
stands a placeholder in for it there, and says so.

Run it as ``voxline doctor [--gpu]`` or, with only the ``pipeline`` and ``models`` packages and
their few dependencies, ``python -m models.doctor [--gpu]`` (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.machine_checks import Check, gpu_free_mib, machine_checks
from pipeline.errors import VoxlineError
from pipeline.settings import Settings
from pipeline.stages import LLM, STT, TTS
from pipeline.types import AudioChunk, GenerationParams, Message

QUESTION = "What is the capital of France?"
_MAX_TOKENS = 32


@dataclass(frozen=True, slots=True)
class StageLoad:
    """How one stage's chain started: its backends, the seconds and the device memory."""

    stage: str
    backends: list[dict[str, Any]]
    seconds: float
    gpu_memory_mib: float | None
    error: str | None = None


@dataclass(slots=True)
class DoctorReport:
    """Everything the doctor found (``to_json`` for machines, ``lines`` for people)."""

    device: str
    weights: str
    checks: list[Check] = field(default_factory=list)
    loads: list[StageLoad] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    gpu_memory: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No failed check, STT and LLM started, and every turn ran."""
        started = {load.stage for load in self.loads if load.error is None}
        return (
            all(c.ok is not False for c in self.checks)
            and {"stt", "llm"} <= started
            and bool(self.turns)
            and all("error" not in t and t.get("reply_words", 1) > 0 for t in self.turns)
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# -- PyAV ---------------------------------------------------------------------------------------


def _placeholder_pyav() -> bool:
    """Stand a placeholder in for PyAV where it is not installed (see the module docstring)."""
    try:
        import av  # noqa: F401  # faster-whisper imports it anyway
    except ImportError:
        pass
    else:
        return False

    def missing(name: str) -> Any:
        # AttributeError, as for any missing attribute (hasattr() and inspect rely on it)
        raise AttributeError(f"PyAV is not installed (av.{name}): voxline passes decoded audio")

    placeholder = types.ModuleType("av")
    placeholder.__dict__["__getattr__"] = missing  # a module's __getattr__ (PEP 562)
    sys.modules["av"] = placeholder
    return True


# -- the engines --------------------------------------------------------------------------------


def doctor_settings(base: Settings, *, gpu: bool, models: tuple[Path, Path] | None) -> Settings:
    """``base`` with the doctor's chains (``gpu`` or ``cpu`` backends; TTS falls back to the
    CPU) and, given ``models`` (the random Whisper and LLM folders), those models."""
    backend = "gpu" if gpu else "cpu"
    stt = base.stt.model_copy(update={"chain": [backend]})
    llm = base.llm.model_copy(update={"chain": [backend], "max_tokens": _MAX_TOKENS})
    tts = base.tts.model_copy(update={"chain": ["gpu", "cpu"] if gpu else ["cpu"]})
    if models is not None:
        whisper, lm = (str(m) for m in models)
        stt = stt.model_copy(
            update={
                "model": whisper,
                "gpu": stt.gpu.model_copy(update={"model": whisper}),
            }
        )
        llm = llm.model_copy(
            update={
                "engine": "transformers",
                "model": lm,
                "gpu": llm.gpu.model_copy(update={"model": lm, "engine": "transformers"}),
            }
        )
    return base.model_copy(update={"stt": stt, "llm": llm, "tts": tts, "hf_offline": True})


async def _start(stage: str, build: Callable[[], Any], report: DoctorReport) -> Any | None:
    before = gpu_free_mib()
    started = time.perf_counter()
    chain = build()
    error = None
    try:
        await chain.start()
        await chain.warm()
    except Exception as exc:  # a check reports what failed, whatever the library raised
        error = f"{type(exc).__name__}: {exc}"
    after = gpu_free_mib()
    used = None if before is None or after is None else round(before - after, 1)
    states = [
        {"name": s.name, "started": s.started, "error": s.start_error}
        for s in chain.backend_states()
    ]
    report.loads.append(
        StageLoad(stage, states, round(time.perf_counter() - started, 2), used, error)
    )
    if error is not None:
        await chain.aclose()
        return None
    return chain


_STAND_IN = "(CPU stand-in)"


def _tone() -> AudioChunk:
    """Two seconds of a voice-like tone: the question when no TTS can speak it."""
    t = np.arange(32_000) / 16_000
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return AudioChunk(tone.astype(np.float32), 16_000)


async def _speak(tts: TTS, text: str) -> AudioChunk:
    """``text`` spoken by ``tts``, with a little silence around it."""
    chunks = [c async for c in tts.synthesize(text)]
    rate = chunks[0].sample_rate
    pad = np.zeros(int(0.3 * rate), np.float32)
    return AudioChunk(np.concatenate([pad, *(c.samples for c in chunks), pad]), rate)


async def _turns(
    count: int, stt: STT, llm: LLM, tts: TTS | None, settings: Settings, report: DoctorReport
) -> None:
    from pipeline.turn import run_turn

    audio = await _speak(tts, QUESTION) if tts is not None else _tone()
    params = GenerationParams(max_tokens=_MAX_TOKENS, temperature=0.0)
    for index in range(count):
        row: dict[str, Any] = {"turn": index + 1, "warm_up": index == 0}
        try:
            if tts is not None:
                result = await run_turn(
                    audio,
                    stt=stt,
                    llm=llm,
                    tts=tts,
                    system_prompt=settings.llm.system_prompt,
                    params=params,
                )
                row |= {k: v for k, v in asdict(result.timings).items() if v is not None}
                row["backends"] = asdict(result.backends)
                row["reply_words"] = len(result.reply.split())
                row["audio_s"] = round(result.audio.duration, 2)
            else:
                row |= await _stt_and_llm(audio, stt, llm, settings, params)
        except VoxlineError as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        report.turns.append(row)


async def _stt_and_llm(
    audio: AudioChunk, stt: STT, llm: LLM, settings: Settings, params: GenerationParams
) -> dict[str, Any]:
    """A turn without speech out: STT, then the LLM's reply, timed the same way."""
    started = time.perf_counter()
    transcript = ""
    async for item in stt.transcribe(audio):
        transcript = item.text
    stt_done = time.perf_counter()
    first: float | None = None
    messages = [Message("system", settings.llm.system_prompt), Message("user", transcript)]
    async for delta in llm.stream(messages, params):
        if delta.text and first is None:
            first = time.perf_counter()
    done = time.perf_counter()
    ms = 1000.0
    return {
        "stt_ms": (stt_done - started) * ms,
        "llm_ttft_ms": None if first is None else (first - stt_done) * ms,
        "llm_total_ms": (done - stt_done) * ms,
        "total_ms": (done - started) * ms,
        "backends": {"stt": stt.name, "llm": llm.name, "tts": None},
    }


async def run_doctor(
    settings: Settings,
    *,
    gpu: bool = False,
    turns: int = 3,
    configured_weights: bool = False,
    workdir: Path | None = None,
) -> DoctorReport:
    """Check the machine, start the engines, run ``turns`` turns (the first is a warm-up)."""
    from models.registry import build_llm, build_stt, build_tts

    report = DoctorReport(
        "cuda" if gpu else "cpu", "configured" if configured_weights else "random"
    )
    report.checks = machine_checks(gpu)
    if _placeholder_pyav():
        report.notes.append("PyAV is not installed: faster-whisper runs with a placeholder for it")
    with tempfile.TemporaryDirectory(prefix="voxline-doctor-", dir=workdir) as scratch:
        models = None
        if not configured_weights:
            from models.random_models import build_llm as random_llm
            from models.random_models import build_whisper

            started = time.perf_counter()
            models = (build_whisper(Path(scratch, "whisper")), random_llm(Path(scratch, "llm")))
            report.notes.append(
                f"random-weight models built in {time.perf_counter() - started:.1f} s"
            )
        s = doctor_settings(settings, gpu=gpu, models=models)
        free_at_start = gpu_free_mib()
        stt = await _start("stt", lambda: build_stt(s), report)
        llm = await _start("llm", lambda: build_llm(s), report)
        tts = await _start("tts", lambda: build_tts(s), report)
        if gpu and (stt is None or llm is None):
            # time what did start on the GPU: the stage that did not runs on the CPU, and the
            # report still fails (only "stt" and "llm" loads count as started)
            cpu = doctor_settings(settings, gpu=False, models=models)
            if stt is None:
                stt = await _start(f"stt {_STAND_IN}", lambda: build_stt(cpu), report)
            if llm is None:
                llm = await _start(f"llm {_STAND_IN}", lambda: build_llm(cpu), report)
            report.notes.append(f"a stage that did not start on the GPU ran {_STAND_IN}")
        try:
            if stt is not None and llm is not None:
                await _turns(turns, stt, llm, tts, s, report)
            if free_at_start is not None and (free := gpu_free_mib()) is not None:
                report.gpu_memory = {"free_at_start_mib": free_at_start, "free_after_mib": free}
        finally:
            for engine in (stt, llm, tts):
                if engine is not None:
                    await engine.aclose()
    return report


# -- printing -----------------------------------------------------------------------------------

_STAGE_COLUMNS = ("stt_ms", "llm_ttft_ms", "llm_first_phrase_ms", "tts_ttfb_ms", "total_ms")


def report_lines(report: DoctorReport) -> list[str]:
    """The report for a terminal."""
    mark = {True: "ok  ", False: "FAIL", None: "    "}
    lines = [f"voxline doctor: {report.device}, {report.weights} weights"]
    lines += [f"  {mark[c.ok]} {c.name}: {c.detail}" for c in report.checks]
    for load in report.loads:
        memory = (
            "" if load.gpu_memory_mib is None else f", GPU memory +{load.gpu_memory_mib:.0f} MiB"
        )
        state = "ok  " if load.error is None else "FAIL"
        lines.append(f"  {state} {load.stage} started in {load.seconds:.1f} s{memory}")
        for backend in load.backends:
            why = "" if backend["started"] else f" (not started: {backend['error']})"
            lines.append(f"         {backend['name']}{why}")
    for turn in report.turns:
        if "error" in turn:
            lines.append(f"  turn {turn['turn']}: {turn['error']}")
            continue
        cells = ", ".join(
            f"{k.removesuffix('_ms')} {turn[k]:.0f} ms" for k in _STAGE_COLUMNS if turn.get(k)
        )
        lines.append(f"  turn {turn['turn']}{' (warm-up)' if turn['warm_up'] else ''}: {cells}")
    measured = [t for t in report.turns if not t["warm_up"] and "error" not in t]
    if measured:
        medians = {
            k: statistics.median(t[k] for t in measured)
            for k in _STAGE_COLUMNS
            if all(t.get(k) for t in measured)
        }
        cells = ", ".join(f"{k.removesuffix('_ms')} {v:.0f} ms" for k, v in medians.items())
        lines.append(f"  median of {len(measured)} turn(s) after the warm-up: {cells}")
    if report.gpu_memory:
        m = report.gpu_memory
        lines.append(
            f"  GPU memory free: {m['free_at_start_mib']:.0f} MiB before, "
            f"{m['free_after_mib']:.0f} MiB after the turns"
        )
    lines += [f"  note: {note}" for note in report.notes]
    lines.append("ok" if report.ok else "FAILED")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m models.doctor [--gpu] [--turns N] [--configured-weights] [--json]``."""
    parser = argparse.ArgumentParser(prog="python -m models.doctor", description=__doc__)
    parser.add_argument("--gpu", action="store_true", help="check the GPU profile on CUDA")
    parser.add_argument("--turns", type=int, default=3, help="turns to run (the first warms up)")
    parser.add_argument(
        "--configured-weights", action="store_true", help="the settings' models, not random ones"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = asyncio.run(
        run_doctor(
            Settings(),
            gpu=args.gpu,
            turns=max(1, args.turns),
            configured_weights=args.configured_weights,
        )
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else "\n".join(report_lines(report)))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
