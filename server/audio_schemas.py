"""Request and response shapes of the OpenAI audio routes.

The speech request is a pydantic model, so a wrong type or an out-of-range value is refused by
FastAPI's validation (mapped to a 400 in the OpenAI error shape by ``server.errors``) before the
route runs. The transcription response formats (json, text, srt, vtt, verbose_json) are built
here from a final ``Transcript``: they are pure functions of it, which keeps the route about
HTTP and streaming only.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.types import Segment, Transcript

TranscriptionFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]

MAX_SPEECH_INPUT_CHARS = 4096
"""OpenAI's limit on ``input``; an engine may declare a lower one (``max_input_chars``)."""

SPEECH_MEDIA_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # Ogg Opus, as OpenAI sends it
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


class VoiceRef(BaseModel):
    """A voice given as an object (``{"id": "voice_1234"}``), as OpenAI allows for custom voices."""

    model_config = ConfigDict(extra="ignore", strict=True)  # the document's types, no coercion

    id: str = Field(min_length=1)


class SpeechRequest(BaseModel):
    """The body of ``POST /v1/audio/speech`` (OpenAI's fields; unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore", strict=True)  # the document's types, no coercion

    model: str
    """Any name: the server speaks with its configured TTS engine."""
    input: str = Field(min_length=1, max_length=MAX_SPEECH_INPUT_CHARS)
    voice: str | VoiceRef
    """A voice ``GET /v1/audio/voices`` lists (Piper accepts OpenAI's voice names as aliases;
    an uploaded voice is its ``voice_...`` id)."""
    response_format: SpeechFormat = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = Field(default=None, max_length=MAX_SPEECH_INPUT_CHARS)
    """Style instructions; accepted and ignored by engines without style control."""
    language: str | None = Field(default=None, min_length=1, max_length=32)
    """voxline's extension: the text's language for a TTS that declares languages (GPT-SoVITS:
    ``en``, ``zh``, ``ja``, ``ko``, ``yue``, ``auto``, ``auto_yue``...; another code is a 400);
    others speak their voice's own language. Unset: the voice's language."""

    @property
    def voice_name(self) -> str:
        """The voice as a name, whichever way it was given."""
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cues(transcript: Transcript) -> tuple[Segment, ...]:
    """The timed pieces to write as subtitles: the segments, or one cue for a transcript that
    has text but no segments (an engine that does not time its output)."""
    if transcript.segments:
        return transcript.segments
    if transcript.text.strip():
        return (Segment(transcript.text.strip(), 0.0, transcript.audio_seconds),)
    return ()


def to_srt(transcript: Transcript) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line after each."""
    blocks = [
        f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{c.text.strip()}\n"
        for i, c in enumerate(_cues(transcript), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    """WebVTT: the ``WEBVTT`` header, then cues timed ``HH:MM:SS.mmm --> HH:MM:SS.mmm``."""
    blocks = [
        f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{c.text.strip()}\n"
        for c in _cues(transcript)
    ]
    return "\n".join(["WEBVTT\n", *blocks])


def _usage(transcript: Transcript) -> dict[str, Any]:
    # OpenAI bills whisper by the second and says so in this shape.
    return {"type": "duration", "seconds": round(transcript.audio_seconds, 3)}


def to_json(transcript: Transcript) -> dict[str, Any]:
    """``response_format=json``: the text (and the audio duration as usage)."""
    return {"text": transcript.text, "usage": _usage(transcript)}


def to_verbose_json(transcript: Transcript) -> dict[str, Any]:
    """``response_format=verbose_json``: task, language, duration, text and timed segments.

    ``language`` is the ISO 639-1 code the engine reports (OpenAI writes the English name,
    e.g. "english"); segments carry id, start, end and text: the STT contract has no token ids
    or log-probabilities, and we do not invent them.
    """
    segments = [
        {"id": i, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
        for i, s in enumerate(transcript.segments)
    ]
    return {
        "task": "transcribe",
        "language": transcript.language,
        "duration": round(transcript.audio_seconds, 3),
        "text": transcript.text,
        "segments": segments,
        "usage": _usage(transcript),
    }
