"""Piper: the CPU text-to-speech engine (a VITS voice exported to ONNX, phonemized by espeak-ng).

Piper synthesizes one sentence per ONNX call, and a call costs time in proportion to its phonemes
(about 10 ms per phoneme, ~18 phonemes per second of audio, on a 2-core CPU). Its own sentence
splitting is therefore too coarse for streaming: a 60-word sentence is one 3-second call before any
audio exists. We phonemize with Piper, then cut each sentence at clause punctuation (and, as a last
resort, at a word boundary) so that the first phrase is short (time to first audio) and no phrase
is long (bounded cancellation latency: Piper offers no way to interrupt a running ONNX call, so
the worker notices a stop only between phrases). Sentences that fit are never cut: a whole
sentence has the better prosody. We split phonemes rather than text because espeak has already
expanded numbers ("12,345" has no comma left) and decided where its sentences end.

Voices: ``capabilities.voices`` lists the model's own voices first (the speaker names of a
multi-speaker model, or the single voice's dataset name such as ``joe``), then the OpenAI voice
names (``alloy``, ``nova``...) as aliases of the default voice. OpenAI clients send those names
by default, and refusing them would break every stock client, while listing them (rather than
accepting any name) still rejects typos with a 400.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.weights import resolve
from pipeline.errors import EngineUnavailable, InvalidInput, ModelLoadError
from pipeline.offload import iterate_in_thread
from pipeline.settings import TTSSettings
from pipeline.stages import TTS
from pipeline.types import AudioChunk, Float32Array, TTSCapabilities

OPENAI_VOICE_ALIASES: tuple[str, ...] = (
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable",
    "marin", "nova", "onyx", "sage", "shimmer", "verse",
)  # fmt: skip
"""OpenAI's voice names, accepted as aliases of the default voice (OpenAI clients send them)."""

THREAD_NAME = "tts-piper"
"""Name of the worker thread of every synthesis (tests and debuggers find it by it)."""

_CLAUSE_MARKS = frozenset(",;:")  # phonemes espeak keeps for a clause pause
_WORD_BREAK = " "


@dataclass(frozen=True, slots=True)
class PhraseLimits:
    """How long (in phonemes) a phrase handed to one ONNX call may be.

    Attributes:
        first_max_phonemes: target length of a request's first phrase, which decides the time to
            first audio (~50 phonemes: ~2.8 s of speech, ~0.5 s of compute on a 2-core CPU).
            Soft: when no clause ends within it, the first phrase runs to the first clause end
            within ``max_phonemes`` rather than break a clause.
        max_phonemes: hard limit of every phrase: it bounds how long a stop waits for the running
            ONNX call (~100 phonemes: ~5.5 s of speech, ~1 s of compute on a 2-core CPU).
    """

    first_max_phonemes: int = 50
    max_phonemes: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.first_max_phonemes <= self.max_phonemes:
            raise ValueError("need 1 <= first_max_phonemes <= max_phonemes")


def split_phrases(
    sentences: Sequence[Sequence[str]], limits: PhraseLimits | None = None
) -> Iterator[list[str]]:
    """Cut Piper's phonemized sentences into phrases short enough to stream.

    A sentence that fits is one phrase. A longer one is cut after clause punctuation, packing as
    many whole clauses into each phrase as fit. Only a clause longer than ``max_phonemes`` is cut
    inside, at its last word boundary within the limit. The phonemes are kept in order; only the
    spaces at cuts are dropped.

    Args:
        sentences: ``PiperVoice.phonemize`` output: one list of phonemes per sentence.
        limits: phrase length limits (defaults: ``PhraseLimits()``).

    Yields:
        Non-empty phoneme lists, none longer than ``limits.max_phonemes``.
    """
    limits = limits or PhraseLimits()
    first = True
    for sentence in sentences:
        rest = _strip_spaces(sentence)
        while rest:
            target = limits.first_max_phonemes if first else limits.max_phonemes
            if len(rest) <= target:
                cut = len(rest)
            else:
                cut = _cut_point(rest, target, limits.max_phonemes)
            phrase, rest = _strip_spaces(rest[:cut]), _strip_spaces(rest[cut:])
            if phrase:
                first = False
                yield phrase


def _cut_point(phonemes: list[str], target: int, limit: int) -> int:
    """Where to end a phrase longer than ``target``, never past ``limit``."""
    marks = [i + 1 for i, p in enumerate(phonemes[:limit]) if p in _CLAUSE_MARKS]
    within_target = [end for end in marks if end <= target]
    if within_target:
        return within_target[-1]  # as many whole clauses as fit
    if marks:
        return marks[0]  # a clause longer than the target: still better than breaking it
    if len(phonemes) <= limit:
        return len(phonemes)
    breaks = [i for i, p in enumerate(phonemes[:limit]) if p == _WORD_BREAK and i > 0]
    return breaks[-1] if breaks else limit  # no word break at all: one enormous "word"


def _strip_spaces(phonemes: Sequence[str]) -> list[str]:
    start, end = 0, len(phonemes)
    while start < end and phonemes[start] == _WORD_BREAK:
        start += 1
    while end > start and phonemes[end - 1] == _WORD_BREAK:
        end -= 1
    return list(phonemes[start:end])


@dataclass(frozen=True, slots=True)
class _VoiceInfo:
    """What we need from a voice's ``.onnx.json`` before loading the model."""

    sample_rate: int
    speakers: dict[str, int]  # empty for a single-speaker voice
    default_speaker_id: int
    name: str


def _read_voice_config(model: Path, ref: str) -> _VoiceInfo:
    config_path = Path(f"{model}.json")
    try:
        raw: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        sample_rate = int(raw["audio"]["sample_rate"])
        speakers = {str(k): int(v) for k, v in (raw.get("speaker_id_map") or {}).items()}
        default_id = int(raw.get("default_speaker_id", 0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelLoadError(
            f"Piper voice {ref!r}: cannot read its config {config_path} ({type(e).__name__}); "
            "a Piper voice is an .onnx file with its .onnx.json beside it",
            stage="tts",
            backend="piper",
        ) from e
    if len(speakers) <= 1:
        speakers = {}
    name = str(raw.get("dataset") or model.name.removesuffix(".onnx") or "default")
    return _VoiceInfo(sample_rate, speakers, default_id, name)


def _resolve_device(device: str, backend: str) -> str:
    if device == "cpu":
        return "cpu"
    import onnxruntime  # only here: importing it costs ~0.5 s, and "cpu" needs no probe

    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise EngineUnavailable(
            "Piper on CUDA needs onnxruntime-gpu (CUDAExecutionProvider is not available): "
            "install onnxruntime-gpu or set VOXLINE_TTS__DEVICE=cpu",
            stage="tts",
            backend=backend,
        )
    return "cuda" if has_cuda else "cpu"


def _own_voices(info: _VoiceInfo) -> tuple[str, ...]:
    if not info.speakers:
        return (info.name,)
    by_id = sorted(info.speakers, key=lambda name: info.speakers[name])
    default = [n for n in by_id if info.speakers[n] == info.default_speaker_id]
    return tuple(default + [n for n in by_id if n not in default])


class PiperTTS(TTS):
    """Piper voices (``.onnx`` + ``.onnx.json``), streamed phrase by phrase.

    Construction does nothing but keep the settings (a fallback chain builds every backend
    before it knows which can start). ``describe()`` resolves the model reference and reads the
    small JSON config, so ``capabilities`` (sample rate, voices) are right; ``load()`` does that
    and builds the ONNX session (``start()`` runs it off the event loop); ``synthesize`` loads
    on first use if nobody called it.

    Speed: the request's ``speed`` multiplies ``settings.speed`` (the server's base rate), and
    the product divides the voice's own ``length_scale``. Voice: ``None`` or an OpenAI alias means
    ``settings.voice``, or the model's default speaker when that is unset.

    Args:
        settings: the TTS settings (``model``, ``device``, ``voice``, ``speed`` and the
            ``piper_*_phonemes`` limits are used).
        phrasing: phrase length limits (see ``split_phrases``; default: from ``settings``).
    """

    def __init__(self, settings: TTSSettings, *, phrasing: PhraseLimits | None = None) -> None:
        super().__init__(name=f"piper:{settings.device}", device=settings.device)
        self.settings = settings
        # Until describe(): Piper's usual rate, and any voice name (the request's voice then
        # falls back to the default speaker).
        self.capabilities = TTSCapabilities(sample_rate=22_050)
        self.model_path: Path | None = None
        self._info: _VoiceInfo | None = None
        self._default_voice = settings.voice
        self._base_speed = settings.speed
        self.phrasing = phrasing or PhraseLimits(
            settings.piper_first_phonemes, settings.piper_max_phonemes
        )
        self._voice: Any = None  # piper.PiperVoice once loaded
        self._load_lock = threading.Lock()
        self._active: set[threading.Event] = set()
        self._closed = False

    def describe(self) -> None:
        """Blocking but cheap (no ONNX session): resolve the voice and read its config, which
        sets ``capabilities``. Idempotent.

        Raises:
            ModelLoadError: a hub id (Piper loads only local files), a missing or unreadable
                voice, or a ``settings.voice`` the model does not have.
        """
        if self._info is not None:
            return
        settings = self.settings
        try:
            resolved = resolve(settings.model, stage="tts")
        except ModelLoadError as e:  # re-raised under our name: a chain reports backends
            raise ModelLoadError(e.message, stage="tts", backend=self.name) from e
        if resolved.path is None:
            raise ModelLoadError(
                f"Piper cannot load hub id {settings.model!r}: download the voice (an .onnx file "
                "and its .onnx.json) and set VOXLINE_TTS__MODEL to the local .onnx path, or use "
                "packaged:piper-joe-medium",
                stage="tts",
                backend=self.name,
            )
        if not resolved.path.is_file() or resolved.path.suffix != ".onnx":
            raise ModelLoadError(
                f"Piper voice {settings.model!r} resolves to {resolved.path}, which is not an "
                ".onnx file: point VOXLINE_TTS__MODEL at the voice's .onnx file",
                stage="tts",
                backend=self.name,
            )
        info = _read_voice_config(resolved.path, settings.model)
        own = _own_voices(info)
        extra = tuple(alias for alias in OPENAI_VOICE_ALIASES if alias not in own)
        if settings.voice is not None and settings.voice not in own + extra:
            raise ModelLoadError(
                f"VOXLINE_TTS__VOICE={settings.voice!r} is not a voice of {settings.model!r}; "
                f"its voices: {', '.join(own)}",
                stage="tts",
                backend=self.name,
            )
        self.model_path = resolved.path
        self.capabilities = TTSCapabilities(sample_rate=info.sample_rate, voices=own + extra)
        self._info = info

    @property
    def loaded(self) -> bool:
        """Whether the ONNX session is in memory."""
        return self._voice is not None

    def load(self) -> None:
        """``describe()``, then build the ONNX session (blocking, ~1 s on CPU: call it from a
        thread in async code).

        Raises:
            ModelLoadError: the voice is missing or not a Piper voice (see ``describe``).
            EngineUnavailable: ``device="cuda"`` without onnxruntime-gpu.
        """
        self._ensure_voice()

    def warmup(self) -> None:
        """Load, then synthesize one short phrase so the first request pays no one-time costs
        (espeak-ng initialization, ONNX kernel selection), and one phrase of the longest
        length a call gets (``phrasing.max_phonemes``), so onnxruntime's memory arena has grown
        to its working size before a user's first long phrase would pay for that. Blocking."""
        voice = self._ensure_voice()
        for _ in self._generate(voice, "Hello.", None, 1.0, threading.Event()):
            pass
        from piper import SynthesisConfig

        limit = self.phrasing.max_phonemes
        hello = [p for sentence in voice.phonemize("Hello there, and welcome.") for p in sentence]
        longest = (hello * (limit // len(hello) + 1))[:limit]
        voice.phoneme_ids_to_audio(voice.phonemes_to_ids(longest), SynthesisConfig())

    async def aclose(self) -> None:
        """Stop in-flight syntheses (after their current phrase) and release the model."""
        self._closed = True
        for stop in list(self._active):
            stop.set()
        self._voice = None

    def _ensure_voice(self) -> Any:
        voice = self._voice
        if voice is not None:
            return voice
        with self._load_lock:
            if self._closed:
                raise EngineUnavailable("the engine is closed", stage="tts", backend=self.name)
            if self._voice is None:
                self._voice = self._load_voice()
            voice = self._voice
        if self._closed:  # aclose() ran while we were loading
            self._voice = None
            raise EngineUnavailable("the engine is closed", stage="tts", backend=self.name)
        return voice

    def _load_voice(self) -> Any:
        self.describe()
        if self.device not in ("cpu", "cuda"):  # "auto": CUDA when onnxruntime offers it
            self.device = _resolve_device(self.device, self.name)
            self.name = f"piper:{self.device}"
        else:
            _resolve_device(self.device, self.name)
        assert self.model_path is not None  # describe() set it
        try:
            return _piper_voice(self.model_path, cuda=self.device == "cuda")
        # onnxruntime's errors for a corrupt model (InvalidProtobuf, Fail...) derive from
        # Exception directly, so nothing narrower catches them.
        except Exception as e:
            raise ModelLoadError(
                f"could not load the Piper voice {self.model_path} ({type(e).__name__}: {e}): "
                "reinstall its package or download the .onnx file again",
                stage="tts",
                backend=self.name,
            ) from e

    def _speaker_id(self, voice: str | None) -> int | None:
        # A speaker's own name wins; None or an alias falls back to the configured voice.
        self.describe()
        assert self._info is not None
        for name in (voice, self._default_voice):
            if name is not None and name in self._info.speakers:
                return self._info.speakers[name]
        return None  # a single-speaker voice, or nothing configured: Piper's default speaker

    def _synthesize(
        self, text: str, voice: str | None, speed: float, language: str | None = None
    ) -> AsyncIterator[AudioChunk]:
        rate = self._base_speed * speed

        def make_iter(stop: threading.Event) -> Iterator[AudioChunk]:
            self._active.add(stop)
            try:
                loaded = self._ensure_voice()  # reads the config first, off the event loop
                yield from self._generate(loaded, text, self._speaker_id(voice), rate, stop)
            finally:
                self._active.discard(stop)

        return iterate_in_thread(make_iter, thread_name=THREAD_NAME)

    def _generate(
        self, voice: Any, text: str, speaker_id: int | None, rate: float, stop: threading.Event
    ) -> Iterator[AudioChunk]:
        """The blocking work, one chunk per phrase; runs in a worker thread."""
        from piper import SynthesisConfig

        sentences = voice.phonemize(text)
        if not any(sentences):
            raise InvalidInput("input has nothing to speak", param="input", code="no_speech")
        config = SynthesisConfig(
            speaker_id=speaker_id, length_scale=voice.config.length_scale / rate
        )
        for phrase in split_phrases(sentences, self.phrasing):
            if stop.is_set():
                return
            audio = voice.phoneme_ids_to_audio(voice.phonemes_to_ids(phrase), config)
            yield AudioChunk(_normalize(audio), self.capabilities.sample_rate)


def _piper_voice(model: Path, *, cuda: bool) -> Any:
    """``PiperVoice.load``'s voice, with an ONNX session that keeps no memory pattern per input
    shape.

    Every phrase is a new input length, and onnxruntime (memory patterns on, its default) plans
    and keeps one allocation per length seen, in an arena that never gives memory back: a
    server's resident set then climbs for as long as new lengths come (measured on 2 cores, 90
    random answers at mixed speeds: 165 -> 414 MiB and still climbing, by jumps of 50-110 MiB).
    Without patterns it levels off (165 -> 319 MiB within ~40 answers; at the default speed,
    1-18 MiB above where ``warmup``'s longest phrase left it, over six random sequences, against
    26-94 MiB with patterns) at the same speed (1.33 vs 1.32 ms of compute a character).
    """
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    options = onnxruntime.SessionOptions()
    options.enable_mem_pattern = False
    providers: list[Any] = (
        [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})]  # as Piper's load
        if cuda
        else ["CPUExecutionProvider"]
    )
    config = json.loads(Path(f"{model}.json").read_text(encoding="utf-8"))
    session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=providers)
    return PiperVoice(session=session, config=PiperConfig.from_dict(config))


def _normalize(audio: np.ndarray) -> Float32Array:
    """Peak-normalize a phrase as Piper does per sentence (its ``normalize_audio`` default)."""
    audio = np.atleast_1d(np.asarray(audio, dtype=np.float32))
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak < 1e-8:
        return np.zeros_like(audio)
    return np.clip(audio / peak, -1.0, 1.0).astype(np.float32)
