"""GPT-SoVITS text to speech, served by a pool of worker processes.

GPT-SoVITS is not on PyPI and its pins clash with ours, so it never runs in this process: each
worker runs ``models/gpt_sovits_worker.py`` under GPT-SoVITS's own interpreter
(``GptSovitsSettings.python`` or ``GPT_SOVITS_PYTHON``) inside its checkout (``.home`` or
``GPT_SOVITS_HOME``), and ``models/gpt_sovits_pool.py`` keeps the workers. This module turns
settings into the workers' configuration, keeps the voices (``models/gpt_sovits_voices.py``:
clients name a voice id, never a file) and maps the workers' frames to ``AudioChunk``s and errors.

Construction checks nothing: the checkout, the interpreter, the weights and the voices of the
settings are checked by ``start()``, which reports what is missing as a ``ModelLoadError``, so a
fallback chain starts without this backend rather than not at all.

The output rate is fixed by the model version, as upstream decodes it: v1, v2, v2Pro and
v2ProPlus at 32 kHz (their SoVITS config), v3 at 24 kHz and v4 at 48 kHz (their vocoders). v3 and
v4 cannot stream: upstream answers a streaming request with one fragment per text segment, so
this engine asks for fragments there and does not claim to stream.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.gpt_sovits_pool import WorkerPool
from models.gpt_sovits_process import Frame, Warmup
from models.gpt_sovits_setup import worker_spec
from models.gpt_sovits_voices import VoiceBook, languages_of
from pipeline.errors import (
    EngineOverloaded,
    EngineUnavailable,
    InvalidInput,
    ModelLoadError,
    StageError,
)
from pipeline.settings import GptSovitsSettings, GptSovitsVoice
from pipeline.stages import TTS
from pipeline.types import AudioChunk, TTSCapabilities

log = logging.getLogger("voxline.gpt_sovits")

SAMPLE_RATES = {"v1": 32_000, "v2": 32_000, "v2Pro": 32_000, "v2ProPlus": 32_000}
SAMPLE_RATES |= {"v3": 24_000, "v4": 48_000}
FRAGMENTS_ONLY = frozenset({"v3", "v4"})  # upstream's vocoder versions cannot stream
_WARMUP_TEXT = {
    "en": "Hello.",
    "zh": "你好。",
    "yue": "你好。",
    "ja": "こんにちは。",
    "ko": "안녕하세요.",
}
# run() keys that come from the request and the voice; run_options may not override them.
_PER_REQUEST = frozenset(
    {"text", "text_lang", "ref_audio_path", "prompt_text", "prompt_lang", "speed_factor"}
)


def streaming_inputs(mode: int, version: str = "v2") -> dict[str, bool]:
    """Upstream's run() flags for api_v2's streaming_mode 0-3 (off, fragments, medium, fast);
    v3/v4 get fragments for 2 and 3, which is what upstream falls back to for them anyway."""
    if version in FRAGMENTS_ONLY and mode in (2, 3):
        mode = 1
    return {
        "streaming_mode": mode in (2, 3),
        "return_fragment": mode == 1,
        "fixed_length_chunk": mode == 3,
    }


class GptSovitsTTS(TTS):
    """GPT-SoVITS voices, spoken by worker processes that each hold one model.

    Voices: those of the settings are registered by ``start()``; ``add_voice`` /
    ``add_voice_clip`` / ``remove_voice`` change them at run time, before or after ``start()``,
    by id. A request may name the text's language (``synthesize(..., language="yue")``, or
    ``auto`` to let upstream detect it); otherwise the voice's ``text_lang`` is spoken.

    Args:
        settings: The ``tts.gpt_sovits`` settings section.
        environ: Where ``GPT_SOVITS_HOME`` / ``GPT_SOVITS_PYTHON`` are read when the settings
            leave them unset, and the base of each worker's environment (default: this
            process's environment, read at ``start()``).
        env: Environment variables for the workers (``NLTK_DATA``, ``CUDA_VISIBLE_DEVICES``), on
            top of ``settings.env``.
        extra_pythonpath: Folders put before the checkout on the workers' ``PYTHONPATH`` (before
            ``settings.extra_pythonpath``), e.g. a stand-in ``torchaudio`` package where no
            build matches the worker's torch.
        run_options: Further keys for upstream's ``TTS.run()`` (``top_k``, ``temperature``,
            ``seed``, ``batch_size``, ...), on top of ``settings.run_options``; upstream's
            defaults otherwise.

    Raises:
        ValueError: ``run_options`` sets a key that comes with each request.
    """

    def __init__(
        self,
        settings: GptSovitsSettings,
        *,
        environ: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        extra_pythonpath: Sequence[Path] = (),
        run_options: Mapping[str, Any] | None = None,
    ) -> None:
        # "auto" until a worker reports the device upstream actually chose
        super().__init__(name=f"gpt_sovits:{settings.device}", device=settings.device)
        self.settings = settings
        self._run_options = {**settings.run_options, **(run_options or {})}
        reserved = _PER_REQUEST & set(self._run_options)
        if reserved:
            raise ValueError(f"run_options may not set {sorted(reserved)}: they come per request")
        self._environ = environ
        self._env = {**settings.env, **(env or {})}
        self._extra_pythonpath = (*extra_pythonpath, *settings.extra_pythonpath)
        self._book = VoiceBook(settings.version)
        self.home: Path | None = None  # the checkout and interpreter, found by start()
        self.python: Path | None = None
        self.reported_version: str | None = None  # what the workers' upstream says it loaded
        mode = settings.streaming_mode
        self.capabilities = TTSCapabilities(
            sample_rate=SAMPLE_RATES[settings.version],
            streaming=mode in (2, 3) and settings.version not in FRAGMENTS_ONLY,
            voices=tuple(settings.voices),  # names only: the clips are checked by start()
            languages=languages_of(settings.version),
        )
        self._pool: WorkerPool | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._ids = itertools.count(1)

    # -- voices ----------------------------------------------------------------------------

    @property
    def voices(self) -> Mapping[str, GptSovitsVoice]:
        """Registered voices by id."""
        return {voice_id: self._book.get(voice_id) for voice_id in self._book}

    def add_voice(self, voice_id: str, voice: GptSovitsVoice) -> None:
        """Add (or replace) a voice whose clip is a file; usable at once, also while workers run.

        Raises:
            InvalidInput: the clip is missing, unreadable or not 3-10 s long, or a language is
                unknown to this model version.
        """
        self._book.add(voice_id, voice)
        self._refresh_voices()

    register_voice = add_voice  # the name the settings-driven code used first

    def add_voice_clip(
        self,
        voice_id: str,
        clip: bytes,
        *,
        transcript: str,
        language: str,
        text_lang: str | None = None,
    ) -> GptSovitsVoice:
        """Add (or replace) a voice from a clip's bytes (any format FFmpeg decodes, 3-10 s);
        return it. See ``VoiceBook.add_clip``.

        Raises:
            InvalidInput: the clip is too large, not decodable or not 3-10 s long, or a language
                is unknown to this model version.
        """
        voice = self._book.add_clip(
            voice_id, clip, transcript=transcript, language=language, text_lang=text_lang
        )
        self._refresh_voices()
        return voice

    def remove_voice(self, voice_id: str) -> bool:
        """Remove a voice; ``False`` if there was none by that id. Requests already speaking
        in it finish."""
        removed = self._book.remove(voice_id)
        self._refresh_voices()
        return removed

    def _refresh_voices(self) -> None:
        self.capabilities = dataclasses.replace(self.capabilities, voices=tuple(self._book))

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the checkout, interpreter, weights and voices; spawn the workers and wait until
        each has loaded its model and spoken one warm-up phrase.

        Raises:
            ModelLoadError: no checkout or interpreter, missing weights, no usable voice, or
                upstream failed to load or to speak the warm-up phrase.
            EngineTimeout: a worker was not ready within ``start_timeout_s``.
        """
        if self._pool is not None:
            raise RuntimeError("GptSovitsTTS.start() was already called")
        environ = os.environ if self._environ is None else self._environ
        self.home, self.python, spec = worker_spec(
            self.settings,
            environ,
            env=self._env,
            extra_pythonpath=self._extra_pythonpath,
            backend=self.name,
        )
        self._register_settings_voices()
        # Upstream's config yaml of each worker goes here: removed in aclose(), even for workers
        # that were killed and could not clean up after themselves.
        self._scratch = tempfile.TemporaryDirectory(prefix="voxline-gpt-sovits-")
        spec = dataclasses.replace(spec, init={**spec.init, "config_dir": self._scratch.name})
        self._pool = pool = WorkerPool(spec, self.name, self._warmup)
        settings = self.settings
        try:
            ready = await pool.start(
                settings.pool_size or None,
                max_size=settings.pool_max_size,
                reserve_bytes=int(settings.memory_reserve_gib * 2**30),
                cpu_count=os.cpu_count() or 1,
            )
        except BaseException:
            await self.aclose()
            raise
        first = ready[0]
        self.device = str(first.get("device", self.device))
        self.name = f"gpt_sovits:{self.device}"
        self.reported_version = str(first.get("version"))
        pool.set_backend(self.name)
        if settings.device == "cuda" and self.device == "cpu":
            log.warning("GPT-SoVITS was asked for CUDA but upstream fell back to the CPU")
        if first.get("sample_rate") != self.capabilities.sample_rate:
            log.warning(
                "GPT-SoVITS %s decodes at %s Hz, not the expected %d Hz; resampling its output",
                first.get("version"),
                first.get("sample_rate"),
                self.capabilities.sample_rate,
            )
        log.info(
            "GPT-SoVITS ready: %d worker(s), %s, %s, loaded in %s s",
            len(ready),
            first.get("version"),
            self.device,
            ", ".join(str(r.get("load_s")) for r in ready),
        )

    @property
    def pool_size(self) -> int:
        """Workers in the pool (0 before ``start()``)."""
        return 0 if self._pool is None else self._pool.size

    async def warm(self) -> None:
        """Nothing to do: every worker speaks a warm-up phrase before it counts as ready
        (restarted ones too)."""

    async def probe(self) -> None:
        """Health check for a fallback chain: speak one short phrase in the default voice."""
        voice_id = self._default_voice()  # nobody hears a probe: an uploaded voice will do
        voice = self._book.get(voice_id)
        text = _WARMUP_TEXT.get(voice.text_lang.removeprefix("all_"), "Hello.")
        async for _ in self._synthesize(text, voice_id, 1.0):
            pass

    async def aclose(self) -> None:
        """Stop the workers (voices stay registered: a later ``start()`` serves them again)."""
        pool, scratch = self._pool, self._scratch
        self._pool = self._scratch = None
        if pool is not None:
            await pool.aclose()
        if scratch is not None:
            scratch.cleanup()

    # -- requests --------------------------------------------------------------------------

    async def _synthesize(
        self, text: str, voice: str | None, speed: float, language: str | None = None
    ) -> AsyncIterator[AudioChunk]:
        pool = self._pool
        if pool is None:
            raise EngineUnavailable(
                "GPT-SoVITS is not started (await start())", stage="tts", backend=self.name
            )
        if not self._book:
            # Retryable: another backend of the chain speaks it in its own voice.
            raise EngineUnavailable(
                "no GPT-SoVITS voice is registered", stage="tts", backend=self.name
            )
        inputs = self._inputs(text, voice, speed, language)
        key = inputs["ref_audio_path"]
        worker = await pool.acquire(key)
        request_id = next(self._ids)
        answered = False  # the worker sent this request's final frame
        healthy = True
        try:
            worker.send({"op": "run", "id": request_id, "inputs": inputs})
            worker.voice_key = key  # upstream caches this reference from now on
            while True:
                try:
                    frame = await worker.read_frame(self.settings.request_timeout_s)
                except StageError:
                    healthy = False  # timed out, died or garbled: killed and replaced
                    raise
                if frame.header.get("id") != request_id or frame.type not in _FRAMES:
                    healthy = False
                    raise EngineUnavailable(
                        f"GPT-SoVITS worker sent an unexpected frame {frame.header!r}",
                        stage="tts",
                        backend=self.name,
                    )
                if frame.type == "chunk":
                    yield self._chunk(frame)
                    continue
                answered = True
                if frame.type == "error":
                    raise self._worker_error(frame)
                if frame.type == "cancelled":  # we never asked: treat as a failure
                    raise EngineUnavailable(
                        "GPT-SoVITS worker cancelled a request", stage="tts", backend=self.name
                    )
                return
        finally:
            if answered or not healthy:
                pool.release(worker, healthy=healthy)
            else:  # the consumer went away mid-stream
                pool.cancel(worker, request_id)

    def _inputs(
        self, text: str, voice_id: str | None, speed: float, language: str | None
    ) -> dict[str, Any]:
        voice = self._book.get(voice_id or self._default_voice(for_request=True))
        return {
            "text_split_method": self.settings.text_split_method,
            "fragment_interval": self.settings.segment_pause_s,
            **streaming_inputs(self.settings.streaming_mode, self.settings.version),
            **self._run_options,
            "text": text,
            "text_lang": language or voice.text_lang,
            "ref_audio_path": str(voice.ref_audio),
            "prompt_text": voice.prompt_text,
            "prompt_lang": voice.prompt_lang,
            "speed_factor": speed,
        }

    def _warmup(self) -> Warmup | None:
        if not self._book:
            return None
        voice_id = self._default_voice()
        lang = self._book.get(voice_id).text_lang
        text = _WARMUP_TEXT.get(lang.removeprefix("all_").removeprefix("auto_"), "Hello.")
        inputs = self._inputs(text, voice_id, 1.0, None)
        return Warmup(inputs, voice_key=inputs["ref_audio_path"])

    def _default_voice(self, *, for_request: bool = False) -> str:
        """The voice of a request that names none: ``default_voice``, else the first voice of
        the settings, else the first registered one that was not uploaded. A voice added from a
        clip's bytes (an upload: its owner's) is spoken only when named; warm-ups and probes,
        which nobody hears, may use it.

        Raises:
            EngineUnavailable: ``for_request``, and every registered voice is an upload (a
                chain's next backend speaks in its own default voice instead).
        """
        default = self.settings.default_voice
        if default is not None and default in self._book:
            return default
        configured = [v for v in self.settings.voices if v in self._book]
        shared = [v for v in self._book if not self._book.uploaded(v)]
        for voice_id in (*configured, *shared):
            return voice_id
        if for_request:
            raise EngineUnavailable(
                "no GPT-SoVITS voice is anyone's default (all are uploads): name a voice",
                stage="tts",
                backend=self.name,
            )
        return next(iter(self._book))

    def _chunk(self, frame: Frame) -> AudioChunk:
        pcm = np.frombuffer(frame.payload, dtype="<i2")
        samples = pcm.astype(np.float32) / 32768.0
        chunk = AudioChunk(samples, int(frame.header["sample_rate"]))
        if chunk.sample_rate != self.capabilities.sample_rate:
            from pipeline.audio import resample  # local: needed only for off-rate output

            chunk = resample(chunk, self.capabilities.sample_rate)
        return chunk

    def _worker_error(self, frame: Frame) -> StageError:
        kind = str(frame.header.get("error"))
        message = f"GPT-SoVITS failed: {kind}: {frame.header.get('message')}"
        if kind in ("OutOfMemoryError", "MemoryError"):
            return EngineOverloaded(message, stage="tts", backend=self.name)
        return EngineUnavailable(message, stage="tts", backend=self.name)

    # -- start-up checks -------------------------------------------------------------------

    def _register_settings_voices(self) -> None:
        for voice_id, voice in self.settings.voices.items():
            if voice_id in self._book:
                continue  # registered at run time since: that one wins
            try:
                self._book.add(voice_id, voice)
            except InvalidInput as exc:
                raise self._load_error(f"{exc.message} (tts.gpt_sovits.voices)") from exc
        self._refresh_voices()
        default = self.settings.default_voice
        if default is not None and default not in self._book:
            raise self._load_error(f"default_voice {default!r} is not a registered voice")
        if not self._book:
            raise self._load_error(
                "no voice is registered: set tts.gpt_sovits.voices or add one at run time"
            )

    def _load_error(self, message: str) -> ModelLoadError:
        return ModelLoadError(message, stage="tts", backend=self.name)


_FRAMES = frozenset({"chunk", "done", "cancelled", "error"})
