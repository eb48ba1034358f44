"""What the user says: client audio -> VAD frames -> turns -> transcripts.

The ``Listener`` cuts the client's audio into VAD frames, runs the VAD (in a worker thread: it
is cheap, but it is still inference) and the ``Endpointer`` on them, and turns their decisions
into speech started / stopped and ended turns; without server VAD, ``commit()`` ends a turn.

Every transcription is of the same thing, the utterance from its start up to some frame (a
*snapshot*), and one of them is valid as the final transcript exactly when its snapshot holds
every voiced frame of the utterance. So the ``Transcriber`` does not distinguish "partial" from
"speculative" jobs: a job starts after enough new speech (a partial) or at the first silent
frame after speech (a pause, where the turn may end); when the turn ends, the newest job that
covers all the speech is the final transcript, and only if none does is a new one run.

One job at a time per session: a newer snapshot makes an older one moot, so two jobs of one
session would only compete. Across sessions, the STT engine's scheduler (``pipeline.scheduler``)
decides, by the priority each job runs at: finals first (``INTERACTIVE``), then the job at a
pause (``SPECULATIVE``: it becomes the final when the silence lasts), then partials
(``PARTIAL``), which never wait for a busy engine: refused, they are simply tried again after
the next ``partial_interval_ms`` of speech. Within the session, partials never wait for the
job slot either (they start later instead) and yield it to final transcriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from pipeline.errors import EngineBusy, InvalidInput
from pipeline.events import SpeechStarted, SpeechStopped
from pipeline.metering import Meter
from pipeline.priority import Priority, priority
from pipeline.stages import STT, CallRecord
from pipeline.timing import TurnMarks
from pipeline.turn_end import judge
from pipeline.types import AudioChunk, Float32Array, Transcript
from pipeline.vad import VAD, EndpointDecision, Endpointer, EndpointPolicy, FrameSlicer

log = logging.getLogger("voxline.session.listener")

_MIN_COMMIT_MS = 100  # OpenAI refuses to commit less audio than this


def new_id(prefix: str) -> str:
    """An OpenAI-style id, e.g. ``item_3f2a...``."""
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass(frozen=True, slots=True)
class SttResult:
    """A transcription of the first ``frames`` frames of an utterance."""

    frames: int
    transcript: Transcript
    started: float
    finished: float


@dataclass(slots=True)
class Utterance:
    """One user utterance (an item id) and what has been transcribed of it.

    Attributes:
        item_id: The user item it becomes.
        committed: The turn ended; its final transcript is being (or was) made.
        covered: Frames of the newest snapshot sent to STT.
        result: The newest finished transcription.
        job: The newest transcription started (running or done).
        last_partial: The text of the last partial sent to the client.
    """

    item_id: str
    committed: bool = False
    covered: int = 0
    result: SttResult | None = None
    job: asyncio.Task[SttResult] | None = None
    last_partial: str = ""


class Transcriber:
    """Runs the STT jobs of a session, one at a time.

    Args:
        stt: The STT stage.
        endpointer: The session's endpointer (the source of snapshots of the open utterance).
        current: Returns the open utterance, if any.
        sample_rate: Rate of the endpointer's audio.
        partial_interval_ms: New audio, since the last snapshot, that calls for a partial (0:
            partials only at pauses).
        language: Returns the language to ask for (the session's current setting).
        on_result: Called with the open utterance each time a transcription of it finishes
            (``utterance.result`` is the newest).
        on_usage: Called with the engine calls of every job when it ends, finished, failed or
            cancelled (the work it did is billed, see ``pipeline.metering``).
        clock: Time source.
    """

    def __init__(
        self,
        stt: STT,
        endpointer: Endpointer,
        *,
        current: Callable[[], Utterance | None],
        sample_rate: int,
        partial_interval_ms: int,
        language: Callable[[], str | None],
        on_result: Callable[[Utterance], None],
        on_usage: Callable[[tuple[CallRecord, ...]], None] = lambda _: None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.stt = stt
        self.endpointer = endpointer
        self._on_usage = on_usage
        self.sample_rate = sample_rate
        self._current = current
        self.partial_interval_ms = partial_interval_ms
        self._language = language
        self._on_result = on_result
        self._clock = clock
        self._running: asyncio.Task[SttResult] | None = None
        self._finals_waiting = 0
        self._closed = False

    def schedule(self) -> None:
        """Start a job on the open utterance if one is due and the slot is free."""
        ep, utt = self.endpointer, self._current()
        if self._closed or self._running is not None or self._finals_waiting or utt is None:
            return
        if utt.committed or not ep.speaking or ep.voiced_frames <= utt.covered:
            return  # nothing spoken since the newest snapshot
        frames = ep.utterance_frames
        new_ms = (frames - utt.covered) * ep.frame_ms
        if ep.paused:  # the turn may end here: this job may become the final transcript
            self._start(utt, ep.utterance(), frames, Priority.SPECULATIVE)
        elif self.partial_interval_ms and new_ms >= self.partial_interval_ms:
            self._start(utt, ep.utterance(), frames, Priority.PARTIAL)

    async def final(self, utt: Utterance, audio: Float32Array, voiced_frames: int) -> SttResult:
        """The final transcript of a committed utterance whose speech fills ``voiced_frames``
        frames of ``audio``: a finished or running job that covers them, else a new one.

        Raises:
            VoxlineError: STT failed or refused the audio.
        """
        job = utt.job
        if utt.result is not None and utt.result.frames >= voiced_frames:
            return utt.result
        if job is not None and utt.covered >= voiced_frames and not job.cancelled():
            if not job.done() or job.exception() is None:
                try:
                    return await job
                except EngineBusy:
                    pass  # refused at its lower priority: asked for again below, as a final
        self._finals_waiting += 1
        try:
            while self._running is not None:
                await asyncio.wait({self._running})
            task = self._start(utt, audio, max(voiced_frames, utt.covered), Priority.INTERACTIVE)
        finally:
            self._finals_waiting -= 1
        return await task

    def abandon(self, utt: Utterance) -> None:
        """Forget an utterance (cleared): its job in flight is cancelled."""
        utt.committed = True
        if utt.job is not None and not utt.job.done():
            utt.job.cancel()

    async def aclose(self) -> None:
        """Cancel the job in flight."""
        self._closed = True
        if self._running is not None:
            self._running.cancel()
            await asyncio.gather(self._running, return_exceptions=True)

    def _start(
        self, utt: Utterance, audio: Float32Array, frames: int, urgency: Priority
    ) -> asyncio.Task[SttResult]:
        with priority(urgency):  # the task, and the engine call in it, run at this priority
            task = asyncio.create_task(self._transcribe(audio, frames), name="session-stt")
        self._running = task
        utt.job = task
        utt.covered = max(utt.covered, frames)
        task.add_done_callback(partial(self._done, utt))
        return task

    async def _transcribe(self, audio: Float32Array, frames: int) -> SttResult:
        started = self._clock()
        final: Transcript | None = None
        chunk = AudioChunk(audio, self.sample_rate)
        with Meter().bind() as meter:  # this task's own context: only this job's calls
            try:
                # realtime: a bounded, deterministic decode (no temperature fallback)
                transcripts = self.stt.transcribe(chunk, language=self._language(), realtime=True)
                async with contextlib.aclosing(transcripts):
                    async for transcript in transcripts:
                        if transcript.final:
                            final = transcript
            finally:
                self._on_usage(meter.take())
        return SttResult(frames, final or Transcript("", final=True), started, self._clock())

    def _done(self, utt: Utterance, task: asyncio.Task[SttResult]) -> None:
        if self._running is task:
            self._running = None
        if task.cancelled():
            return
        if isinstance(exc := task.exception(), EngineBusy):
            log.debug("transcription of %s refused: %s", utt.item_id, exc)  # tried later
        elif exc is not None:
            # a final's failure is reported by whoever awaits it; a partial's is only logged
            log.warning("transcription of %s failed: %s", utt.item_id, exc)
        else:
            result = task.result()
            if utt.result is None or result.frames >= utt.result.frames:
                utt.result = result
            if not utt.committed:
                self._on_result(utt)
        if not self._closed:
            self.schedule()


@dataclass(frozen=True, slots=True)
class Turn:
    """A user turn that ended: its utterance, audio (16 kHz) and timing marks.

    ``voiced_frames`` counts the audio's frames up to and including the last voiced one.
    """

    utterance: Utterance
    audio: Float32Array
    voiced_frames: int
    marks: TurnMarks


Heard = SpeechStarted | SpeechStopped | Turn


class Listener:
    """Turns and transcripts of one audio stream.

    Args:
        stt: The STT stage.
        vad: This stream's own VAD (stateful).
        policy: Server VAD's endpointing, or ``None`` for manual turns.
        partial_interval_ms: See ``Transcriber``.
        max_utterance_ms: A longer turn is ended (server VAD) or refused (manual).
        language: Returns the language to ask STT for.
        on_result: See ``Transcriber``.
        on_usage: See ``Transcriber``.
        clock: Time source (the caller's arrival times use the same one).
    """

    def __init__(
        self,
        stt: STT,
        vad: VAD,
        *,
        policy: EndpointPolicy | None,
        partial_interval_ms: int,
        max_utterance_ms: float,
        language: Callable[[], str | None],
        on_result: Callable[[Utterance], None],
        on_usage: Callable[[tuple[CallRecord, ...]], None] = lambda _: None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.vad = vad
        self.server_vad = policy is not None
        self.max_utterance_ms = max_utterance_ms
        self.endpointer = Endpointer(policy or EndpointPolicy(), frame_ms=vad.frame_ms)
        self.utterance: Utterance | None = None
        """The open utterance (server VAD), if any."""
        self._slicer = FrameSlicer(sample_rate=vad.sample_rate, frame_samples=vad.frame_samples)
        self._buffer: list[Float32Array] = []  # manual turns: audio since the last commit
        self._clock = clock
        self._on_result = on_result
        self.transcriber = Transcriber(
            stt,
            self.endpointer,
            current=lambda: self.utterance,
            sample_rate=vad.sample_rate,
            partial_interval_ms=partial_interval_ms,
            language=language,
            on_result=self._on_transcript,
            on_usage=on_usage,
            clock=clock,
        )

    def configure(self, policy: EndpointPolicy | None) -> None:
        """Switch server VAD on (or retune it) or off; switching drops the uncommitted audio."""
        if (policy is not None) != self.server_vad:
            self.clear()
            self.vad.reset()
            self.server_vad = policy is not None
        if policy is not None:
            self.endpointer.policy = policy

    async def push(self, chunk: AudioChunk, arrival: float) -> list[Heard]:
        """Add client audio that arrived at ``arrival``; returns what it made happen.

        Raises:
            InvalidInput: manual turns only, the uncommitted audio is too long.
            StageError: the VAD failed.
        """
        frames = self._slicer.push(chunk, arrival)
        if not self.server_vad:
            self._buffer.extend(frame for frame, _ in frames)
            if len(self._buffer) * self.vad.frame_ms > self.max_utterance_ms:
                self._buffer.clear()
                raise InvalidInput(
                    "the input audio buffer is too long: commit more often",
                    code="input_audio_buffer_too_long",
                )
            return []
        if not frames:
            return []
        probabilities = await asyncio.to_thread(self._probabilities, [f for f, _ in frames])
        heard: list[Heard] = []
        ep = self.endpointer
        for (frame, at), probability in zip(frames, probabilities, strict=True):
            for decision in ep.process(frame, probability, at):
                heard += self._on_decision(decision)
            if ep.utterance_frames * ep.frame_ms > self.max_utterance_ms:
                forced = ep.force_stop()
                heard += self._end_turn(forced, self._clock()) if forced else []
        self.transcriber.schedule()
        return heard

    def commit(self, now: float) -> list[Heard]:
        """End the turn now: the open utterance (server VAD) or the audio so far (manual).

        Raises:
            InvalidInput: nothing to commit.
        """
        if self.server_vad:
            decision = self.endpointer.force_stop()
            if decision is None:
                raise InvalidInput("no speech to commit", code="input_audio_buffer_commit_empty")
            return self._end_turn(decision, now)
        audio = np.concatenate([*self._buffer, self._slicer.drain()])
        self._buffer.clear()
        if len(audio) * 1000 < _MIN_COMMIT_MS * self.vad.sample_rate:
            raise InvalidInput(
                f"buffer too small: commit at least {_MIN_COMMIT_MS} ms of audio",
                code="input_audio_buffer_commit_empty",
            )
        utt = Utterance(new_id("item"), committed=True)
        frames = -(-len(audio) // self.vad.frame_samples)
        return [Turn(utt, audio, frames, TurnMarks(now, now, vad=False))]

    def clear(self) -> None:
        """Drop the audio not committed yet, and the open utterance."""
        self._buffer.clear()
        self._slicer.drain()
        self.endpointer.reset()
        if self.utterance is not None:
            self.transcriber.abandon(self.utterance)
            self.utterance = None

    async def final(self, turn: Turn) -> SttResult:
        """The turn's final transcript (see ``Transcriber.final``)."""
        return await self.transcriber.final(turn.utterance, turn.audio, turn.voiced_frames)

    async def aclose(self) -> None:
        """Cancel the transcription in flight."""
        await self.transcriber.aclose()

    def _probabilities(self, frames: list[Float32Array]) -> list[float]:
        return [self.vad.probability(frame) for frame in frames]

    def _on_decision(self, decision: EndpointDecision) -> list[Heard]:
        if decision.kind == "speech_started":
            self.utterance = Utterance(new_id("item"))
            return [SpeechStarted(self.utterance.item_id, round(decision.audio_ms))]
        if decision.kind == "speech_stopped":
            return self._end_turn(decision, self._clock())
        if self.utterance is not None:  # a pause: the turn may end here
            self._judge(self.utterance)
        self.transcriber.schedule()
        return []

    def _on_transcript(self, utt: Utterance) -> None:
        self._judge(utt)
        self._on_result(utt)

    def _judge(self, utt: Utterance) -> None:
        # How the speech before a pause reads sets how long the pause must last to end the turn
        # (``smart`` turn end; see pipeline.turn_end). Only a transcript of all of it counts.
        if utt is self.utterance and utt.result is not None:
            self.endpointer.judge(judge(utt.result.transcript.text), utt.result.frames)

    def _end_turn(self, decision: EndpointDecision, decided_at: float) -> list[Heard]:
        utt, self.utterance = self.utterance, None
        if utt is None or decision.audio is None or decision.speech_end_at is None:
            return []
        utt.committed = True
        marks = TurnMarks(decision.speech_end_at, decided_at, vad=True)
        return [
            SpeechStopped(utt.item_id, round(decision.audio_ms)),
            Turn(utt, decision.audio, decision.voiced_frames, marks),
        ]
