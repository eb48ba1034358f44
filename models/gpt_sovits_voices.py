"""GPT-SoVITS voices: reference clips with their transcripts, registered by id.

A voice is a 3-10 s reference clip, what it says and in which language, plus the language its
requests speak by default. Clients name a voice by id and never pass a file path. A clip given as
bytes (an upload) is decoded here, checked and written as a WAV file into a folder the book owns,
because upstream's workers read the reference from a path; a clip given as a path (a voice from
the settings) is read where it is. The book validates against the model version's languages,
which are upstream's ``TTS_Config.v1_languages`` / ``v2_languages``: ``run()`` asserts the text
language is one of them.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.audio import decode_audio, encode_wav
from pipeline.errors import InvalidInput
from pipeline.settings import AudioLimits, GptSovitsVoice

V1_LANGUAGES = ("auto", "en", "zh", "ja", "all_zh", "all_ja")
V2_LANGUAGES = (*V1_LANGUAGES, "auto_yue", "yue", "ko", "all_yue", "all_ko")
REF_SECONDS = (3.0, 10.0)  # upstream refuses reference clips outside this range
CLIP_MAX_BYTES = 10 * 1024 * 1024
"""Largest clip accepted as bytes (ten seconds of 48 kHz stereo 32-bit float WAV fit)."""
_CLIP_RATE = 32_000  # upstream's SoVITS rate: v1-v2ProPlus read it without resampling


def languages_of(version: str) -> tuple[str, ...]:
    """The text languages a model of ``version`` accepts (``auto``: upstream detects them)."""
    return V1_LANGUAGES if version == "v1" else V2_LANGUAGES


def voice_problem(voice: GptSovitsVoice, version: str) -> str | None:
    """What makes ``voice`` unusable with a model of ``version``, or ``None`` if it is fine."""
    import soundfile  # local: only voice registration reads audio files

    path = voice.ref_audio
    if not path.is_file():
        return f"reference clip {str(path)!r} does not exist"
    try:
        seconds = soundfile.info(str(path)).duration
    except (RuntimeError, soundfile.LibsndfileError) as e:
        return f"reference clip {str(path)!r} is not readable audio: {e}"
    low, high = REF_SECONDS
    if not low <= seconds <= high:
        return f"reference clip {str(path)!r} is {seconds:.1f} s; it must be {low:g}-{high:g} s"
    languages = languages_of(version)
    for field in ("prompt_lang", "text_lang"):
        code = getattr(voice, field)
        if code not in languages:
            known = ", ".join(languages)
            return f"{field} {code!r} is not a GPT-SoVITS {version} language ({known})"
    if not voice.prompt_text.strip() and version in ("v3", "v4"):
        return f"prompt_text must not be empty with a {version} model"
    return None


class VoiceBook:
    """The voices of one engine, by id, in registration order.

    Args:
        version: The model version (its languages; v3/v4 need a transcript).
    """

    def __init__(self, version: str) -> None:
        self.version = version
        self._voices: dict[str, GptSovitsVoice] = {}
        self._owned: dict[str, Path] = {}  # clips this book wrote, by voice id
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._names = itertools.count(1)

    def __contains__(self, voice_id: object) -> bool:
        return voice_id in self._voices

    def __iter__(self) -> Iterator[str]:
        return iter(self._voices)

    def __len__(self) -> int:
        return len(self._voices)

    def uploaded(self, voice_id: str) -> bool:
        """Whether ``voice_id`` was added from a clip's bytes (an upload: its owner's voice)."""
        return voice_id in self._owned

    def get(self, voice_id: str) -> GptSovitsVoice:
        """The voice ``voice_id`` (``KeyError`` if it is not registered)."""
        return self._voices[voice_id]

    def add(self, voice_id: str, voice: GptSovitsVoice) -> GptSovitsVoice:
        """Register (or replace) ``voice`` under ``voice_id``; return it with an absolute path.

        Raises:
            InvalidInput: an empty id, or a clip or language this model cannot use.
        """
        if not voice_id.strip():
            raise InvalidInput("the voice id is empty", param="voice")
        if problem := voice_problem(voice, self.version):
            raise InvalidInput(f"voice {voice_id!r}: {problem}", param="voice")
        # Workers run inside the checkout: hand them absolute paths.
        voice = voice.model_copy(update={"ref_audio": voice.ref_audio.resolve()})
        self._forget_clip(voice_id)
        self._voices[voice_id] = voice
        return voice

    def add_clip(
        self,
        voice_id: str,
        clip: bytes,
        *,
        transcript: str,
        language: str,
        text_lang: str | None = None,
    ) -> GptSovitsVoice:
        """Register a voice from a clip's bytes (any format FFmpeg decodes).

        Args:
            voice_id: The id clients will name.
            clip: The reference clip, 3-10 s, at most ``CLIP_MAX_BYTES``.
            transcript: What the clip says.
            language: The clip's language (``prompt_lang``).
            text_lang: The language its requests speak by default (default: ``language``).

        Raises:
            InvalidInput: the clip is too large, not decodable or not 3-10 s long, or a language
                is unknown to this model version.
        """
        limits = AudioLimits(max_bytes=CLIP_MAX_BYTES, max_seconds=REF_SECONDS[1] + 1.0)
        audio = decode_audio(clip, sample_rate=_CLIP_RATE, limits=limits)
        low, high = REF_SECONDS
        if not low <= audio.duration <= high:
            raise InvalidInput(
                f"the reference clip is {audio.duration:.1f} s; it must be {low:g}-{high:g} s",
                param="file",
                code="invalid_reference_clip",
            )
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="voxline-voices-")
        # A fresh name per upload: a worker that encoded the old clip of this id must not take
        # the new one for the same reference.
        path = Path(self._folder.name) / f"clip-{next(self._names)}.wav"
        path.write_bytes(encode_wav(audio))
        voice = GptSovitsVoice(
            ref_audio=path,
            prompt_text=transcript,
            prompt_lang=language,
            text_lang=text_lang or language,
        )
        try:
            added = self.add(voice_id, voice)
        except InvalidInput:
            path.unlink(missing_ok=True)
            raise
        self._owned[voice_id] = path
        return added

    def remove(self, voice_id: str) -> bool:
        """Unregister ``voice_id`` (and delete its clip if the book wrote it); ``False`` if it
        was not registered."""
        if self._voices.pop(voice_id, None) is None:
            return False
        self._forget_clip(voice_id)
        return True

    def close(self) -> None:
        """Delete the clips this book wrote."""
        self._owned.clear()
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def _forget_clip(self, voice_id: str) -> None:
        if (path := self._owned.pop(voice_id, None)) is not None:
            path.unlink(missing_ok=True)
