"""What each kind of job does: how it is cut into chunks, one chunk's work, the final result.

- ``transcription``: the input is 16 kHz PCM16 (decoded at submission); the plan is the VAD's
  spans (:func:`pipeline.longform.plan_chunks`); a chunk is one span's transcript; the result is
  the stitched transcript as ``verbose_json`` (the other formats are made from it on request).
- ``speech``: the input is UTF-8 text; the plan is its sentence chunks; a chunk is one chunk's
  audio as a PCM16 blob; the result is one audio file in the requested format.
- ``turns``: the input is JSONL, one turn per line; a chunk is one turn; the result is JSONL.

A plan is JSON, stored once (a resumed run reads it back), so a resumed job cuts exactly where
the first run did.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from pipeline.audio import decode_pcm16, to_pcm16
from pipeline.audio_stream import StreamEncoder
from pipeline.errors import InvalidInput
from pipeline.longform import CutPolicy, plan_chunks, speech_probabilities, split_sentences, stitch
from pipeline.settings import AudioLimits, Settings
from pipeline.stages import CallRecord
from pipeline.types import AudioChunk, Segment, Transcript
from pipeline.vad import VAD
from server.audio_schemas import to_verbose_json
from server.jobs.chunks import turn_audio
from server.jobs.queue import JobQueue
from server.jobs.records import Job
from store import Conflict, NotFound

Calls = tuple[CallRecord, ...]
INPUT_RATE = 16_000
"""Transcription inputs are stored as PCM16 at this rate (the VAD's and whisper's)."""
SPEECH_RATE = 24_000
"""Encoded speech results (other than wav) are at this rate, as ``/v1/audio/speech``."""


class ChunkWorker(Protocol):
    """Where chunks run: this process's engines, or Ray tasks (``server.jobs.ray_tasks``)."""

    async def transcribe(
        self, audio: AudioChunk, *, language: str | None, prompt: str | None
    ) -> tuple[dict[str, Any], Calls]:
        """One audio chunk's transcript."""

    async def speak(
        self, text: str, *, voice: str | None, speed: float
    ) -> tuple[AudioChunk, Calls]:
        """One text chunk's audio."""

    async def turn(
        self, line: Mapping[str, Any], *, options: Mapping[str, Any]
    ) -> tuple[dict[str, Any], Calls]:
        """One turn of a batch."""


class KindRun(Protocol):
    """One run of one job of a kind (a resumed job gets a new one)."""

    async def plan(self) -> list[Any]:
        """Cut the input into chunks (JSON items)."""

    def needed(self, item: Any) -> bool:
        """Whether a chunk has work (a silent span has none)."""

    async def chunk(self, index: int, item: Any) -> tuple[dict[str, Any], Calls]:
        """Do one chunk; its result is stored as the chunk's document."""

    def finish(self, plan: Sequence[Any], results: Mapping[int, Mapping[str, Any]]) -> str:
        """Blocking: build and store the result blob from the chunks; returns its media type."""


class TranscriptionRun:
    """A transcription job (see the module docstring)."""

    def __init__(
        self, job: Job, queue: JobQueue, worker: ChunkWorker, settings: Settings, vad: VAD
    ) -> None:
        self.job, self.queue, self.worker, self.settings, self.vad = (
            job,
            queue,
            worker,
            settings,
            vad,
        )
        self._samples: np.ndarray | None = None

    async def _audio(self) -> np.ndarray:
        if self._samples is None:
            blobs, blob_id = self.queue.store.blobs, self.job.input_blob
            samples: np.ndarray = await asyncio.to_thread(
                lambda: decode_pcm16(blobs.read(blob_id), INPUT_RATE).samples
            )
            self._samples = samples
            return samples
        return self._samples

    async def plan(self) -> list[Any]:
        samples = await self._audio()
        probs = await asyncio.to_thread(speech_probabilities, samples, self.vad)
        cfg = self.settings.jobs
        policy = CutPolicy(cfg.chunk_seconds, cfg.min_chunk_seconds, cfg.min_silence_ms)
        spans = plan_chunks(
            probs,
            total_samples=len(samples),
            frame_samples=self.vad.frame_samples,
            sample_rate=INPUT_RATE,
            policy=policy,
        )
        return [[s.start, s.end, s.voiced] for s in spans]

    def needed(self, item: Any) -> bool:
        return bool(item[2])

    async def chunk(self, index: int, item: Any) -> tuple[dict[str, Any], Calls]:
        samples = await self._audio()
        audio = AudioChunk(samples[item[0] : item[1]], INPUT_RATE)
        options = self.job.options
        return await self.worker.transcribe(
            audio, language=options.get("language"), prompt=options.get("prompt")
        )

    def finish(self, plan: Sequence[Any], results: Mapping[int, Mapping[str, Any]]) -> str:
        parts = [(plan[i][0] / INPUT_RATE, _transcript(results[i])) for i in sorted(results)]
        seconds = plan[-1][1] / INPUT_RATE if plan else 0.0
        body = json.dumps(to_verbose_json(stitch(parts, audio_seconds=seconds))).encode()
        _put(self.queue, f"{self.job.id}.result", [body], "application/json")
        return "application/json"


def _transcript(result: Mapping[str, Any]) -> Transcript:
    segments = tuple(Segment(t, float(s), float(e)) for t, s, e in result.get("segments", ()))
    return Transcript(
        result["text"], True, result.get("language"), segments, float(result.get("seconds", 0.0))
    )


class SpeechRun:
    """A speech job (see the module docstring)."""

    def __init__(self, job: Job, queue: JobQueue, worker: ChunkWorker, settings: Settings) -> None:
        self.job, self.queue, self.worker, self.settings = job, queue, worker, settings

    async def plan(self) -> list[Any]:
        data = await asyncio.to_thread(self.queue.store.blobs.read, self.job.input_blob)
        return split_sentences(data.decode("utf-8"), self.settings.jobs.speech_chunk_chars)

    def needed(self, item: Any) -> bool:
        return True

    async def chunk(self, index: int, item: Any) -> tuple[dict[str, Any], Calls]:
        options = self.job.options
        audio, calls = await self.worker.speak(
            str(item), voice=options.get("voice"), speed=float(options.get("speed") or 1.0)
        )
        blob_id = f"{self.job.id}.chunk{index}"
        pcm = to_pcm16(audio.samples).tobytes()
        await asyncio.to_thread(_put, self.queue, blob_id, [pcm], "audio/L16")
        result = {"blob": blob_id, "sample_rate": audio.sample_rate, "seconds": audio.duration}
        return result, calls

    def finish(self, plan: Sequence[Any], results: Mapping[int, Mapping[str, Any]]) -> str:
        fmt = str(self.job.options.get("response_format") or "wav")
        ordered = [results[i] for i in sorted(results)]
        blobs = self.queue.store.blobs

        def pcm() -> Iterator[bytes]:
            for result in ordered:
                yield from blobs.chunks(result["blob"])

        rate = int(ordered[0]["sample_rate"]) if ordered else SPEECH_RATE
        if fmt == "wav":
            size = 0
            for result in ordered:
                info = blobs.info(result["blob"])
                if info is None:
                    raise NotFound(f"the audio of a chunk of job {self.job.id} is missing")
                size += info.size
            body = itertools.chain([_wav_header(rate, size)], pcm())
            _put(self.queue, f"{self.job.id}.result", body, "audio/wav")
            return "audio/wav"
        encoder = StreamEncoder(fmt, sample_rate=SPEECH_RATE)

        def encoded() -> Iterator[bytes]:
            try:
                for piece in pcm():
                    yield encoder.encode(decode_pcm16(piece, rate))
                yield encoder.finish()
            finally:
                encoder.close()

        media = _MEDIA_TYPES.get(fmt, "application/octet-stream")
        _put(self.queue, f"{self.job.id}.result", encoded(), media)
        return media


_MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "pcm": "audio/pcm",
}


def _wav_header(rate: int, data_bytes: int) -> bytes:
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


class TurnsRun:
    """A batch of turns (see the module docstring)."""

    def __init__(self, job: Job, queue: JobQueue, worker: ChunkWorker) -> None:
        self.job, self.queue, self.worker = job, queue, worker
        self._lines: list[Mapping[str, Any]] | None = None

    async def _read(self) -> list[Mapping[str, Any]]:
        if self._lines is None:
            data = await asyncio.to_thread(self.queue.store.blobs.read, self.job.input_blob)
            self._lines = parse_turns(data)
        return self._lines

    async def plan(self) -> list[Any]:
        return list(range(len(await self._read())))

    def needed(self, item: Any) -> bool:
        return True

    async def chunk(self, index: int, item: Any) -> tuple[dict[str, Any], Calls]:
        line = (await self._read())[int(item)]
        return await self.worker.turn(line, options=self.job.options)

    def finish(self, plan: Sequence[Any], results: Mapping[int, Mapping[str, Any]]) -> str:
        lines = (
            json.dumps({"index": i, **results[i]}, separators=(",", ":")).encode() + b"\n"
            for i in sorted(results)
        )
        _put(self.queue, f"{self.job.id}.result", lines, "application/jsonl")
        return "application/jsonl"


def parse_turns(data: bytes) -> list[Mapping[str, Any]]:
    """The turns of a JSONL file: one object per non-empty line, with ``text`` or ``audio``.

    Raises:
        ValueError: a line that is not such an object (the message names it).
    """
    turns: list[Mapping[str, Any]] = []
    for number, raw in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        line = json.loads(raw)
        if not isinstance(line, dict) or not (
            isinstance(line.get("text"), str) or isinstance(line.get("audio"), str)
        ):
            raise ValueError(f"line {number}: a JSON object with 'text' or 'audio' (base64)")
        turns.append(line)
    return turns


def spoken_seconds(turns: Sequence[Mapping[str, Any]], limits: AudioLimits) -> float:
    """Seconds of speech in ``turns`` (blocking: decodes each spoken turn), checking every line
    a turn job would run: its ``text`` not empty, its ``audio`` base64 of audio within ``limits``.

    Raises:
        InvalidInput: the first line that fails (the message names it).
    """
    seconds = 0.0
    for number, line in enumerate(turns, start=1):
        try:
            if "audio" in line:
                seconds += turn_audio(line, sample_rate=INPUT_RATE, limits=limits).duration
            elif not str(line["text"]).strip():
                raise InvalidInput("the text is empty", param="file", code="invalid_value")
        except InvalidInput as exc:
            raise InvalidInput(f"turn {number}: {exc}", param="file", code=exc.code) from exc
    return seconds


def _put(queue: JobQueue, blob_id: str, pieces: Any, content_type: str) -> None:
    """Store a blob under a fixed id; one left by an earlier run that died is replaced (it may
    be incomplete: only a finished chunk's record says its blob is whole)."""
    blobs = queue.store.blobs
    try:
        blobs.put(pieces, content_type=content_type, blob_id=blob_id)
    except Conflict:
        blobs.delete(blob_id)
        blobs.put(pieces, content_type=content_type, blob_id=blob_id)
