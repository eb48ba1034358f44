"""``endpoint``: when does a turn end? The fixed silence against the smart turn end.

Each clip is streamed at real-time pace, in 20 ms chunks, into the realtime session's own
``Listener`` (the Silero VAD, the configured STT, the partial and pause transcriptions a session
runs), once with ``turn_end=fixed`` and once with ``smart`` (the other settings as configured),
in alternating order. Per mode:

- ``<mode>_endpoint_ms``: the decision that ended the clip's last turn - the arrival of its last
  voiced frame (the latency vocabulary's endpoint delay, as the server reports it), over every
  clip; ``<mode>_endpoint_complete_ms`` over the clips without an inner pause only;
- ``<mode>_ready_ms``: when that turn could be answered, its end decided and its final
  transcript done - its last voiced frame. Ending a turn before its transcript exists gains
  nothing (the reply needs it), so this is the part of voice-to-voice endpointing decides;
- ``<mode>_false_end``: 1 when a turn ended before the clip's speech was over (a reply to half a
  sentence), else 0: its mean is the false end-of-turn rate; ``<mode>_false_end_paused`` over
  the clips with an inner pause only.

A clip has an inner pause when 300 ms or more of silence lie between its first and last voiced
10 ms frames. Without ``--data`` the inputs are the shipped ``pauses`` and ``heldout`` sets
(``benchmarks/speech_sets.py``). Only endpointing runs here: no reply competes for the CPU, as
one would in a session with speculative replies (``realtime --data pauses`` measures that).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from benchmarks.context import BenchContext, Sample, ScenarioResult, repeat
from benchmarks.data import Clip, load_dir
from benchmarks.speech_sets import SETS
from pipeline.audio import rms_dbfs
from pipeline.listener import Listener, Turn, Utterance
from pipeline.session_config import TurnDetection
from pipeline.settings import Settings
from pipeline.stages import STT
from pipeline.turn_end import TurnEndMode, judge
from pipeline.types import AudioChunk
from pipeline.vad import VAD

STAGES = ("stt",)
MODES: tuple[TurnEndMode, ...] = ("fixed", "smart")
CHUNK_S = 0.02
INNER_PAUSE_S = 0.3
_AFTER_S = 3.0  # most seconds to wait for the turn to end after the speech did


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one clip's turn ended in one mode.

    Attributes:
        turns: turns that ended (more than one: the first ended too soon).
        endpoint_ms: the last turn's decision - its last voiced frame (``None``: it never ended).
        ready_ms: when that turn could be answered: its decision and its final transcript both
            done - its last voiced frame.
        false_end: a turn ended before the clip's speech was over.
        heard: each transcription of the utterance that covered all its speech at the time,
            as ``(ms after its last voiced frame, text, verdict)``.
    """

    turns: int
    endpoint_ms: float | None
    ready_ms: float | None
    false_end: bool
    heard: tuple[tuple[float, str, str], ...] = ()


def inner_pause_s(audio: AudioChunk, *, frame_ms: int = 10, floor_db: float = 40.0) -> float:
    """The longest silence between the first and the last voiced frame (same energy rule as
    ``benchmarks.data.speech_end_seconds``)."""
    frame = max(1, audio.sample_rate * frame_ms // 1000)
    levels = [
        rms_dbfs(audio.samples[i * frame : (i + 1) * frame])
        for i in range(len(audio.samples) // frame)
    ]
    if not levels:
        return 0.0
    threshold = max(max(levels) - floor_db, -60.0)
    voiced = [i for i, level in enumerate(levels) if level >= threshold]
    gaps = [b - a - 1 for a, b in itertools.pairwise(voiced)]
    return max(gaps, default=0) * frame_ms / 1000


def shipped_clips(ctx: BenchContext) -> list[Clip]:
    """The ``pauses`` and ``heldout`` sets; with ``--limit``, that many clips of each, spread
    evenly over it (the files sort by voice: the first few would all be one voice)."""
    clips: list[Clip] = []
    for name in ("pauses", "heldout"):
        every = load_dir(SETS[name], ctx.settings.audio)
        step = len(every) / min(len(every), ctx.options.limit or len(every))
        picked = [every[int(i * step)] for i in range(round(len(every) / step))]
        clips += [dataclasses.replace(c, name=f"{name}/{c.name}") for c in picked]
    return clips


async def listen(
    stt: STT,
    vad: VAD,
    clip: Clip,
    settings: Settings,
    mode: TurnEndMode,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> Outcome:
    """Stream ``clip`` at real-time pace (on ``clock``) into a fresh listener built as a realtime
    session builds it from ``settings``, with turn end ``mode``; stop once its turn has ended."""
    session = settings.session
    td = dataclasses.replace(TurnDetection.from_settings(session), turn_end=mode)
    heard: list[tuple[float, str, str]] = []

    def on_result(utt: Utterance) -> None:
        ep = listener.endpointer
        if utt.result is not None and ep.paused and utt.result.frames >= ep.voiced_frames:
            text = utt.result.transcript.text.strip()
            after = clock() - (ep.last_voiced_at or 0.0)
            heard.append((round(after * 1000), text, judge(text)))

    listener = Listener(
        stt,
        vad.fork(),
        policy=td.policy(),
        partial_interval_ms=session.partial_interval_ms,
        max_utterance_ms=session.max_utterance_seconds * 1000,
        language=lambda: settings.stt.language,
        on_result=on_result,
        clock=clock,
    )
    audio, step = clip.audio, round(clip.audio.sample_rate * CHUNK_S)
    last_voiced = max(0, math.ceil(clip.speech_end_s / CHUNK_S) - 1)
    silence = np.zeros(step, np.float32)
    turns: list[Turn] = []
    speech_end_at: float | None = None
    start = clock()
    try:
        for k in range(last_voiced + 1 + round(_AFTER_S / CHUNK_S)):
            await asyncio.sleep(max(0.0, start + k * CHUNK_S - clock()))
            piece = audio.samples[k * step : (k + 1) * step]
            chunk = AudioChunk(piece if len(piece) else silence, audio.sample_rate)
            now = clock()
            turns += [h for h in await listener.push(chunk, now) if isinstance(h, Turn)]
            if k == last_voiced:
                speech_end_at = now
            if speech_end_at is not None and turns and turns[-1].marks.decision >= speech_end_at:
                break
        endpoint = ready = None
        last = turns[-1] if turns else None
        if last is not None and speech_end_at is not None and last.marks.decision >= speech_end_at:
            final = await listener.final(last)
            endpoint = round((last.marks.decision - last.marks.speech_end) * 1000, 1)
            done = max(final.finished, last.marks.decision)
            ready = round((done - last.marks.speech_end) * 1000, 1)
    finally:
        await listener.aclose()
    early = [t for t in turns if speech_end_at is None or t.marks.decision < speech_end_at]
    return Outcome(len(turns), endpoint, ready, bool(early), tuple(heard))


async def run(ctx: BenchContext, name: str = "endpoint") -> ScenarioResult:
    """Listen to every clip in both modes, ``runs`` times."""
    from models.vad_silero import SileroVAD

    await ctx.ensure(*STAGES)
    vad = SileroVAD()
    await asyncio.to_thread(vad.load)
    clips = ctx.clips if ctx.options.data is not None else shipped_clips(ctx)
    outcomes: dict[str, dict[str, object]] = {}

    async def once(clip: Clip, i: int) -> Sample:
        paused = inner_pause_s(clip.audio) >= INNER_PAUSE_S
        order = MODES if i % 2 == 0 else MODES[::-1]
        heard = {mode: await listen(ctx.stt, vad, clip, ctx.settings, mode) for mode in order}
        outcomes[clip.name] = {"inner_pause": paused} | {
            m: dataclasses.asdict(o) for m, o in heard.items()
        }
        sample: Sample = {}
        for mode in MODES:
            o = heard[mode]
            sample[f"{mode}_endpoint_ms"] = o.endpoint_ms
            sample[f"{mode}_endpoint_complete_ms"] = None if paused else o.endpoint_ms
            sample[f"{mode}_ready_ms"] = o.ready_ms
            sample[f"{mode}_false_end"] = float(o.false_end)
            sample[f"{mode}_false_end_paused"] = float(o.false_end) if paused else None
        return sample

    result = await repeat(ctx, ScenarioResult(name), clips, once)
    rates = {
        metric: round(float(np.mean(values)), 3)
        for metric, values in result.samples.items()
        if "false_end" in metric
    }
    result.details = {
        "endpoint_definition": "VAD decision ending the last turn - its last voiced frame",
        "false_end_definition": "a turn ended before the clip's last voiced frame was sent",
        "false_end_rates": rates,
        "settings": ctx.settings.session.model_dump(
            include={"silence_duration_ms", "complete_silence_ms", "incomplete_silence_ms"}
        ),
        "clips": outcomes,
    }
    return result
