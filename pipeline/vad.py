"""Voice activity detection and endpointing: when does the user start and stop speaking?

Two parts with different jobs. A ``VAD`` turns one fixed-size frame of 16 kHz audio into a speech
probability; it is a stateful model (Silero is recurrent), so each audio stream gets its own
instance (``fork()`` shares the loaded weights). The ``Endpointer`` is pure policy on top of those
probabilities, mirroring OpenAI's server VAD knobs (threshold, prefix padding, silence duration)
plus a minimum speech length so that a click or a cough does not interrupt the assistant.

The endpointer also reports the first silent frame after speech (``paused``): a pause is where the
end of the turn *may* be, and the session starts the final transcription there, speculatively, so
that by the time the silence is long enough to be sure, the transcript is (often) already done.
How long is long enough is fixed (``silence_duration_ms``) or, with ``turn_end="smart"``, set by
how that transcript reads (``judge``: ``pipeline.turn_end``).

The ``FrameSlicer`` in front of both cuts the client's audio, at any rate and in any chunk size,
into those frames, and remembers when each one arrived.

Times are positions in the audio stream (ms since the first frame the endpointer saw) except
``speech_end_at``, the wall-clock time (the caller's clock) at which the last voiced frame arrived:
the "end of speech" of the latency vocabulary (docs/architecture.md).
"""

from __future__ import annotations

import abc
import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
import soxr

from pipeline.turn_end import TurnEndMode, Verdict
from pipeline.types import AudioChunk, Float32Array


class VAD(abc.ABC):
    """Speech probability of consecutive fixed-size frames of one audio stream.

    Attributes:
        name: Backend name (e.g. ``"silero"``).
        sample_rate: Rate of the frames, in Hz.
        frame_samples: Samples per frame; ``probability`` accepts exactly this many.
    """

    name: str = "vad"
    sample_rate: int = 16_000
    frame_samples: int = 512

    @property
    def frame_ms(self) -> float:
        """Duration of one frame in milliseconds."""
        return 1000.0 * self.frame_samples / self.sample_rate

    @abc.abstractmethod
    def probability(self, frame: Float32Array) -> float:
        """Blocking: the probability in [0, 1] that ``frame`` (the stream's next frame) is speech.

        Raises:
            InvalidInput: the frame is not 1-D float32 of ``frame_samples`` samples.
            StageError: the model failed (stage ``vad``).
        """

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the stream: the next frame starts a new one."""

    @abc.abstractmethod
    def fork(self) -> VAD:
        """A VAD for another stream, with fresh state, sharing this one's loaded model."""


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    """When speech starts and stops (OpenAI's ``server_vad`` options, plus ``min_speech_ms``).

    Attributes:
        threshold: A frame at or above this probability is voiced.
        silence_duration_ms: The turn ends once this long has passed since the end of the last
            voiced frame (with at least one silent frame in between).
        prefix_padding_ms: Audio kept before the first voiced frame (word onsets are quiet).
        min_speech_ms: Speech starts only after this long without a silent frame, so that
            clicks and coughs neither open a turn nor interrupt the assistant.
        turn_end: ``fixed``: every turn ends after ``silence_duration_ms``; ``smart``: the
            silence depends on the transcript of the speech before the pause
            (``pipeline.turn_end``), see ``silence_needed``.
        complete_silence_ms: ``smart``: the silence after a transcript that reads complete.
        incomplete_silence_ms: ``smart``: the silence after one that reads incomplete, and the
            longest wait for a transcript not ready yet.
    """

    threshold: float = 0.5
    silence_duration_ms: int = 400
    prefix_padding_ms: int = 300
    min_speech_ms: int = 100
    turn_end: TurnEndMode = "fixed"
    complete_silence_ms: int = 250
    incomplete_silence_ms: int = 1200

    def silence_needed(self, verdict: Verdict | None) -> int:
        """Milliseconds of silence that end the turn, given the verdict on the current pause's
        transcript (``None``: no transcript of all the speech yet)."""
        if self.turn_end == "fixed" or verdict == "unclear":
            return self.silence_duration_ms
        if verdict == "complete":
            return self.complete_silence_ms
        return self.incomplete_silence_ms  # incomplete, or still waiting for the transcript

    @property
    def neg_threshold(self) -> float:
        """Below this a frame is silent; between the two thresholds it keeps the current state
        (hysteresis, as in Silero's own segmenter)."""
        return max(self.threshold - 0.15, 0.01)


DecisionKind = Literal["speech_started", "paused", "speech_stopped"]


@dataclass(frozen=True, slots=True)
class EndpointDecision:
    """Something the endpointer decided on the frame just processed.

    Attributes:
        kind: ``speech_started`` (the turn opens), ``paused`` (the first silent frame after
            voiced speech: the turn may end here), or ``speech_stopped`` (the turn ends).
        audio_ms: ``speech_started``: where the utterance begins, prefix padding included;
            ``paused`` / ``speech_stopped``: the end of the frame that decided (for a stop it
            includes the silence, as OpenAI's ``audio_end_ms`` does).
        speech_end_ms: ``paused`` / ``speech_stopped``: the end of the last voiced frame.
        speech_end_at: ``paused`` / ``speech_stopped``: when that frame arrived (caller's clock).
        voiced_frames: ``paused`` / ``speech_stopped``: frames of the utterance up to and
            including its last voiced frame.
        audio: ``speech_stopped``: the utterance (16 kHz), from prefix padding to this frame.
    """

    kind: DecisionKind
    audio_ms: float
    speech_end_ms: float | None = None
    speech_end_at: float | None = None
    voiced_frames: int = 0
    audio: Float32Array | None = None


class _State(enum.Enum):
    IDLE = "idle"
    PENDING = "pending"  # voiced frames seen, but not yet min_speech_ms of them
    SPEAKING = "speaking"


class Endpointer:
    """Turns per-frame speech probabilities into speech started / paused / stopped decisions.

    It keeps the audio of the current utterance (prefix padding included) so the caller can
    transcribe it, whole or as a snapshot (``utterance()``).

    Args:
        policy: The thresholds and durations.
        frame_ms: Duration of one frame (the VAD's ``frame_ms``).
    """

    def __init__(self, policy: EndpointPolicy, *, frame_ms: float) -> None:
        self.frame_ms = frame_ms
        self._frames_seen = 0  # frames processed since construction: the stream position
        self._policy = policy
        self._ring: deque[Float32Array] = deque()
        self._verdict: Verdict | None = None  # how the speech before the current pause reads
        self.reset()

    @property
    def policy(self) -> EndpointPolicy:
        """The current policy; assigning one takes effect from the next frame (an open
        utterance is kept)."""
        return self._policy

    @policy.setter
    def policy(self, policy: EndpointPolicy) -> None:
        self._policy = policy
        self._ring = deque(self._ring, maxlen=self._padding_frames())

    def _padding_frames(self) -> int:
        return math.ceil(self._policy.prefix_padding_ms / self.frame_ms)

    @property
    def speaking(self) -> bool:
        """Whether a turn is open (speech started and not yet stopped)."""
        return self._state is _State.SPEAKING

    @property
    def paused(self) -> bool:
        """Whether the open turn is in a pause: a silent frame came after its last voiced one."""
        return self._state is _State.SPEAKING and self._in_silence

    @property
    def position_ms(self) -> float:
        """Stream position: the end of the last frame processed."""
        return self._frames_seen * self.frame_ms

    @property
    def last_voiced_at(self) -> float | None:
        """When the utterance's last voiced frame arrived (caller's clock); ``None`` when idle."""
        return self._last_voiced_at if self._state is not _State.IDLE else None

    @property
    def verdict(self) -> Verdict | None:
        """The current pause's verdict (``judge``), ``None`` outside a pause or before one."""
        return self._verdict if self.paused else None

    def judge(self, verdict: Verdict, covered_frames: int) -> None:
        """Record how the transcript of the first ``covered_frames`` frames of the utterance
        reads; it decides the silence of the current pause (``smart`` turn end) if it covers all
        the speech (``covered_frames >= voiced_frames``). Speech resuming forgets it."""
        if self.paused and covered_frames >= self.voiced_frames:
            self._verdict = verdict

    @property
    def utterance_frames(self) -> int:
        """Frames in the current utterance (prefix padding included); 0 when idle."""
        return len(self._utterance) if self._state is not _State.IDLE else 0

    @property
    def voiced_frames(self) -> int:
        """Frames of the utterance up to and including its last voiced frame.

        A transcript of the first ``n`` frames covers all the speech so far iff
        ``n >= voiced_frames``.
        """
        return self._last_voiced + 1 - self._start_frame if self._state is not _State.IDLE else 0

    def utterance(self, frames: int | None = None) -> Float32Array:
        """The first ``frames`` frames of the current utterance (all of them by default)."""
        if self._state is _State.IDLE:
            return np.zeros(0, np.float32)
        chosen = self._utterance if frames is None else self._utterance[:frames]
        return np.concatenate(chosen) if chosen else np.zeros(0, np.float32)

    def reset(self) -> None:
        """Drop the current utterance and the padding; the stream position keeps counting."""
        self._state = _State.IDLE
        self._ring = deque(maxlen=self._padding_frames())
        self._utterance: list[Float32Array] = []
        self._start_frame = 0  # stream index of the utterance's first frame (padding included)
        self._first_voiced = 0
        self._last_voiced = 0
        self._last_voiced_at = 0.0
        self._in_silence = False
        self._verdict = None

    def process(
        self, frame: Float32Array, probability: float, arrival: float
    ) -> list[EndpointDecision]:
        """Account one frame; return what it decided (usually nothing).

        Args:
            frame: The frame's samples (kept while an utterance may be open).
            probability: The VAD's speech probability for it.
            arrival: When the audio that completed this frame arrived (caller's clock).
        """
        index = self._frames_seen
        self._frames_seen += 1
        voiced = probability >= self._policy.threshold
        silent = probability < self._policy.neg_threshold
        if self._state is _State.IDLE:
            if not voiced:
                self._ring.append(frame)
                return []
            self._open(frame, index, arrival)
            return self._maybe_start(index)
        self._utterance.append(frame)
        if self._state is _State.PENDING:
            if silent:  # a blip, not speech: its frames become padding again
                self._ring.extend(self._utterance)
                self._utterance = []
                self._state = _State.IDLE
                return []
            if voiced:
                self._mark_voiced(index, arrival)
            return self._maybe_start(index)
        if voiced:
            self._mark_voiced(index, arrival)
            return []
        decisions: list[EndpointDecision] = []
        if silent and not self._in_silence:
            self._in_silence = True
            decisions.append(self._decision("paused"))
        silence_ms = (index - self._last_voiced) * self.frame_ms
        if self._in_silence and silence_ms >= self._policy.silence_needed(self._verdict):
            decisions.append(self._stop())
        return decisions

    def force_stop(self) -> EndpointDecision | None:
        """End the open turn now (a manual commit, or an utterance grown too long).

        Returns ``None`` when no turn is open.
        """
        return self._stop() if self._state is _State.SPEAKING else None

    def _open(self, frame: Float32Array, index: int, arrival: float) -> None:
        self._state = _State.PENDING
        self._utterance = [*self._ring, frame]
        self._ring.clear()
        self._start_frame = index - (len(self._utterance) - 1)
        self._first_voiced = index
        self._mark_voiced(index, arrival)

    def _mark_voiced(self, index: int, arrival: float) -> None:
        self._last_voiced = index
        self._last_voiced_at = arrival
        self._in_silence = False
        self._verdict = None

    def _maybe_start(self, index: int) -> list[EndpointDecision]:
        if (index + 1 - self._first_voiced) * self.frame_ms < self._policy.min_speech_ms:
            return []
        self._state = _State.SPEAKING
        return [EndpointDecision("speech_started", audio_ms=self._start_frame * self.frame_ms)]

    def _decision(self, kind: DecisionKind, audio: Float32Array | None = None) -> EndpointDecision:
        return EndpointDecision(
            kind,
            audio_ms=self.position_ms,
            speech_end_ms=(self._last_voiced + 1) * self.frame_ms,
            speech_end_at=self._last_voiced_at,
            voiced_frames=self.voiced_frames,
            audio=audio,
        )

    def _stop(self) -> EndpointDecision:
        decision = self._decision("speech_stopped", self.utterance())
        self.reset()
        return decision


class FrameSlicer:
    """Cuts client audio (any rate, any chunk size) into VAD frames, noting when each arrived.

    Resampling is streamed (one soxr stream, not chunk by chunk, which would click at every chunk
    boundary) at soxr's low quality: it is plenty for a VAD and Whisper (both band-limit to
    8 kHz), and its delay (~11 ms mean at 24 kHz to 16 kHz, against ~22 ms for HQ) is added to
    every end-of-turn decision.

    A frame's arrival time is that of the chunk holding its last input sample, so the resampler's
    delay does not make speech look as if it ended later than it did.

    Args:
        sample_rate: The frames' rate (the VAD's).
        frame_samples: Samples per frame.
    """

    def __init__(self, *, sample_rate: int = 16_000, frame_samples: int = 512) -> None:
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples
        self._in_rate: int | None = None
        self._stream: soxr.ResampleStream | None = None
        self._pending = np.zeros(0, np.float32)
        self._out_samples = 0  # samples handed out in frames (plus pending): our position
        self._in_seconds = 0.0  # input received, in seconds
        self._arrivals: deque[tuple[float, float]] = deque()  # (input end in s, arrival)

    def push(self, chunk: AudioChunk, arrival: float) -> list[tuple[Float32Array, float]]:
        """Add a chunk that arrived at ``arrival``; return the frames it completed."""
        samples = self._resample(chunk)
        self._in_seconds += chunk.duration
        self._arrivals.append((self._in_seconds, arrival))
        self._pending = np.concatenate([self._pending, samples])
        frames: list[tuple[Float32Array, float]] = []
        whole = len(self._pending) // self.frame_samples * self.frame_samples
        for start in range(0, whole, self.frame_samples):
            frame = self._pending[start : start + self.frame_samples]
            end_seconds = (self._out_samples + start + self.frame_samples) / self.sample_rate
            frames.append((frame, self._arrival_of(end_seconds)))
        self._out_samples += whole
        self._pending = self._pending[whole:]
        return frames

    def drain(self) -> Float32Array:
        """The samples waiting for a frame to fill (a manual commit takes them too)."""
        rest, self._pending = self._pending, np.zeros(0, np.float32)
        self._out_samples += len(rest)
        return rest

    def _resample(self, chunk: AudioChunk) -> Float32Array:
        samples = chunk.samples.astype(np.float32, copy=False)
        if chunk.sample_rate == self.sample_rate and self._stream is None:
            return samples
        if chunk.sample_rate != self._in_rate:
            tail = np.zeros(0, np.float32)
            if self._stream is not None:  # the client switched rates: finish the old stream
                tail = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
            self._in_rate = chunk.sample_rate
            self._stream = (
                None
                if chunk.sample_rate == self.sample_rate
                else soxr.ResampleStream(
                    chunk.sample_rate, self.sample_rate, 1, dtype="float32", quality="LQ"
                )
            )
            if self._stream is None:
                return np.concatenate([tail, samples])
            return np.concatenate([tail, self._stream.resample_chunk(samples)])
        assert self._stream is not None
        return np.asarray(self._stream.resample_chunk(samples), dtype=np.float32)

    def _arrival_of(self, seconds: float) -> float:
        # the first chunk whose input reaches this far; older entries are no longer needed
        while len(self._arrivals) > 1 and self._arrivals[0][0] < seconds - 1e-9:
            self._arrivals.popleft()
        return self._arrivals[0][1]
