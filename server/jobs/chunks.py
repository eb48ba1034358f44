"""The work of one chunk of a job, on whatever stages it is handed.

Each function takes the stages (the process's own engines, or Ray deployment handles inside a
Ray task: :mod:`server.jobs.ray_tasks`) and returns a JSON-able result plus the engine calls it
made, so the job's worker bills them wherever the chunk ran. They run at ``Priority.BATCH``: the
engine scheduler serves interactive work first and gives jobs what is left.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.audio import decode_audio, encode_wav
from pipeline.errors import InvalidInput
from pipeline.metering import Meter
from pipeline.priority import Priority, priority
from pipeline.reply import Reply
from pipeline.settings import AudioLimits, Settings
from pipeline.stages import LLM, STT, TTS, CallRecord
from pipeline.turn import run_turn
from pipeline.types import AudioChunk, GenerationParams, Message, Transcript

Calls = tuple[CallRecord, ...]


async def transcribe_chunk(
    stt: STT, audio: AudioChunk, *, language: str | None, prompt: str | None
) -> tuple[dict[str, Any], Calls]:
    """One audio chunk's final transcript, as ``{"text", "language", "segments"}``."""
    with Meter().bind() as meter, priority(Priority.BATCH):
        final: Transcript | None = None
        async with contextlib.aclosing(
            stt.transcribe(audio, language=language, prompt=prompt)
        ) as out:
            async for transcript in out:
                if transcript.final:
                    final = transcript
    assert final is not None  # the STT contract ends with a final transcript
    result = {
        "text": final.text.strip(),
        "language": final.language,
        "segments": [[s.text, s.start, s.end] for s in final.segments],
        "seconds": audio.duration,
    }
    return result, meter.take()


async def speak_chunk(
    tts: TTS, text: str, *, voice: str | None, speed: float
) -> tuple[AudioChunk, Calls]:
    """One text chunk spoken, as one clip at the TTS's rate."""
    with Meter().bind() as meter, priority(Priority.BATCH):
        pieces: list[AudioChunk] = []
        async with contextlib.aclosing(tts.synthesize(text, voice, speed=speed)) as out:
            async for chunk in out:
                pieces.append(chunk)
    rate = pieces[0].sample_rate if pieces else tts.capabilities.sample_rate
    samples = np.concatenate([p.samples for p in pieces]) if pieces else np.zeros(0, np.float32)
    return AudioChunk(samples.astype(np.float32, copy=False), rate), meter.take()


def turn_audio(line: Mapping[str, Any], *, sample_rate: int, limits: AudioLimits) -> AudioChunk:
    """A spoken turn's audio: ``line["audio"]``, a base64 audio file, decoded (blocking).

    Raises:
        InvalidInput: not base64 (``invalid_jsonl``), or not audio within ``limits``.
    """
    try:
        raw = base64.b64decode(str(line["audio"]), validate=True)
    except binascii.Error as exc:
        raise InvalidInput("'audio' is not base64", param="file", code="invalid_jsonl") from exc
    return decode_audio(raw, sample_rate=sample_rate, limits=limits)


async def turn_chunk(
    stt: STT,
    llm: LLM,
    tts: TTS,
    line: Mapping[str, Any],
    *,
    settings: Settings,
    options: Mapping[str, Any],
) -> tuple[dict[str, Any], Calls]:
    """One turn of a batch: ``line`` has ``text`` (the user's words) or ``audio`` (a base64
    audio file); the answer is ``{"transcript", "reply", "audio_seconds"}`` plus ``audio`` (a
    base64 wav) when the job asked for it."""
    system = str(line.get("instructions") or options.get("instructions") or "").strip()
    system = system or settings.llm.system_prompt
    params = GenerationParams(
        max_tokens=int(options.get("max_tokens") or settings.llm.max_tokens),
        temperature=settings.llm.temperature,
        top_p=settings.llm.top_p,
    )
    voice = options.get("voice") or settings.tts.voice
    with Meter().bind() as meter, priority(Priority.BATCH):
        if "audio" in line:
            audio = await asyncio.to_thread(  # decoding is blocking work: off the loop
                turn_audio, line, sample_rate=stt.sample_rate, limits=settings.audio
            )
            result = await run_turn(
                audio,
                stt=stt,
                llm=llm,
                tts=tts,
                system_prompt=system,
                params=params,
                voice=voice,
                language=settings.stt.language,
            )
            transcript, reply, spoken = result.transcript, result.reply, result.audio
        else:
            transcript = str(line["text"]).strip()
            if not transcript:
                raise InvalidInput("a turn's text is empty", param="file")
            reply, spoken = await _text_turn(llm, tts, system, transcript, params, voice)
    out: dict[str, Any] = {
        "transcript": transcript,
        "reply": reply,
        "audio_seconds": round(spoken.duration, 3),
    }
    if options.get("include_audio"):
        out["audio"] = base64.b64encode(encode_wav(spoken)).decode("ascii")
    return out, meter.take()


async def _text_turn(
    llm: LLM, tts: TTS, system: str, text: str, params: GenerationParams, voice: str | None
) -> tuple[str, AudioChunk]:
    reply = Reply(
        llm, tts, [Message("system", system), Message("user", text)], params=params, voice=voice
    )
    pieces: list[AudioChunk] = []
    try:
        async for spoken in reply.chunks():
            pieces.append(spoken.audio)
    finally:
        await reply.aclose()
    rate = pieces[0].sample_rate if pieces else tts.capabilities.sample_rate
    samples = np.concatenate([p.samples for p in pieces]) if pieces else np.zeros(0, np.float32)
    return reply.text, AudioChunk(samples.astype(np.float32, copy=False), rate)
