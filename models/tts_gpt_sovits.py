"""GPT-SoVITS text to speech, served by a pool of worker processes.

GPT-SoVITS is not on PyPI and its pins clash with ours, so it never runs in this process: each
worker runs ``models/gpt_sovits_worker.py`` under GPT-SoVITS's own interpreter
(``GptSovitsSettings.python`` or ``GPT_SOVITS_PYTHON``) inside its checkout (``.home`` or
``GPT_SOVITS_HOME``), and ``models/gpt_sovits_pool.py`` keeps ``pool_size`` of them. This module
turns settings into the workers' configuration, registers voices (clients name a voice id, never
a file) and maps the workers' frames to ``AudioChunk``s and errors.

The output rate is fixed by the model version, as upstream decodes it: v1, v2, v2Pro and
v2ProPlus at 32 kHz (their SoVITS config), v3 at 24 kHz and v4 at 48 kHz (their vocoders).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.gpt_sovits_pool import WORKER_SCRIPT, Frame, WorkerPool, WorkerSpec
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
# Upstream's TTS_Config.v1_languages / v2_languages: run() asserts the language is one of these.
_V1_LANGUAGES = frozenset({"auto", "en", "zh", "ja", "all_zh", "all_ja"})
_V2_LANGUAGES = _V1_LANGUAGES | {"auto_yue", "yue", "ko", "all_yue", "all_ko"}
_WARMUP_TEXT = {
    "en": "Hello.",
    "zh": "你好。",
    "yue": "你好。",
    "ja": "こんにちは。",
    "ko": "안녕하세요.",
}
REF_SECONDS = (3.0, 10.0)  # upstream refuses reference clips outside this range
# run() keys that come from the request and the voice; run_options may not override them.
_PER_REQUEST = frozenset(
    {"text", "text_lang", "ref_audio_path", "prompt_text", "prompt_lang", "speed_factor"}
)


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
    languages = _V1_LANGUAGES if version == "v1" else _V2_LANGUAGES
    for field in ("prompt_lang", "text_lang"):
        code = getattr(voice, field)
        if code not in languages:
            known = ", ".join(sorted(languages))
            return f"{field} {code!r} is not a GPT-SoVITS {version} language ({known})"
    if not voice.prompt_text.strip() and version in ("v3", "v4"):
        return f"prompt_text must not be empty with a {version} model"
    return None


def streaming_inputs(mode: int) -> dict[str, bool]:
    """Upstream's run() flags for api_v2's streaming_mode 0-3 (off, fragments, medium, fast)."""
    return {
        "streaming_mode": mode in (2, 3),
        "return_fragment": mode == 1,
        "fixed_length_chunk": mode == 3,
    }


class GptSovitsTTS(TTS):
    """GPT-SoVITS voices, spoken by worker processes that each hold one model.

    Args:
        settings: The ``tts.gpt_sovits`` settings section.
        environ: Where ``GPT_SOVITS_HOME`` / ``GPT_SOVITS_PYTHON`` are read when the settings
            leave them unset, and the base of each worker's environment (default: this
            process's environment).
        env: Extra environment variables for the workers (``NLTK_DATA``, ``CUDA_VISIBLE_DEVICES``).
        extra_pythonpath: Folders put before the checkout on the workers' ``PYTHONPATH``, e.g. a
            stand-in ``torchaudio`` package where no build matches the worker's torch.
        run_options: Further keys for upstream's ``TTS.run()`` (``top_k``, ``temperature``,
            ``seed``, ``batch_size``, ...); upstream's defaults otherwise.

    Raises:
        ModelLoadError: the checkout, interpreter, weights or a voice is missing or unusable.
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
        environ = os.environ if environ is None else environ
        self.home = self._checkout(settings.home, environ.get("GPT_SOVITS_HOME"))
        self.python = self._interpreter(settings.python, environ.get("GPT_SOVITS_PYTHON"))
        reserved = _PER_REQUEST & set(run_options or {})
        if reserved:
            raise ValueError(f"run_options may not set {sorted(reserved)}: they come per request")
        self._run_options = dict(run_options or {})
        self._voices: dict[str, GptSovitsVoice] = {}
        self.capabilities = TTSCapabilities(
            sample_rate=SAMPLE_RATES[settings.version], streaming=settings.streaming_mode != 0
        )
        for voice_id, voice in settings.voices.items():
            if problem := self._voice_problem(voice_id, voice):
                raise self._load_error(f"voice {voice_id!r} (tts.gpt_sovits.voices): {problem}")
            self._add_voice(voice_id, voice)
        if settings.default_voice is not None and settings.default_voice not in self._voices:
            raise self._load_error(
                f"default_voice {settings.default_voice!r} is not a registered voice"
            )
        self._spec = self._spec_for(environ, env or {}, extra_pythonpath)
        self._pool: WorkerPool | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._ids = itertools.count(1)

    @property
    def voices(self) -> Mapping[str, GptSovitsVoice]:
        """Registered voices by id."""
        return dict(self._voices)

    def register_voice(self, voice_id: str, voice: GptSovitsVoice) -> None:
        """Add (or replace) a voice; it can be used at once, also while workers run.

        Raises:
            InvalidInput: the clip is missing, unreadable or not 3-10 s long, or a language is
                unknown to this model version.
        """
        if problem := self._voice_problem(voice_id, voice):
            raise InvalidInput(f"voice {voice_id!r}: {problem}", param="voice")
        self._add_voice(voice_id, voice)

    async def start(self) -> None:
        """Spawn the pool's workers and wait until each has loaded its model.

        Raises:
            ModelLoadError: no voice is registered, or upstream failed to load.
            EngineTimeout: a worker was not ready within ``start_timeout_s``.
        """
        if not self._voices:
            raise self._load_error("no voice is registered (tts.gpt_sovits.voices)")
        if self._pool is not None:
            raise RuntimeError("GptSovitsTTS.start() was already called")
        # Upstream's config yaml of each worker goes here: removed in aclose(), even for workers
        # that were killed and could not clean up after themselves.
        self._scratch = tempfile.TemporaryDirectory(prefix="voxline-gpt-sovits-")
        init = {**self._spec.init, "config_dir": self._scratch.name}
        spec = dataclasses.replace(self._spec, init=init)
        self._pool = WorkerPool(spec, self.settings.pool_size, self.name)
        try:
            ready = await self._pool.start()
        except BaseException:
            await self.aclose()
            raise
        first = ready[0]
        self.device = str(first.get("device", self.device))
        self.name = f"gpt_sovits:{self.device}"
        self._pool.set_backend(self.name)
        if self.settings.device == "cuda" and self.device == "cpu":
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

    async def warm(self) -> None:
        """Speak one short phrase on every worker in the default voice, so that no first request
        pays the one-off costs (reading and encoding the reference clip, lazy kernel set-up)."""
        voice = self._voices[self._default_voice()]
        text = _WARMUP_TEXT.get(voice.text_lang.removeprefix("all_"), "Hello.")

        async def speak_once() -> None:
            async for _ in self._synthesize(text, None, 1.0):
                pass

        # All workers are idle now, so each of these concurrent requests gets its own.
        await asyncio.gather(*(speak_once() for _ in range(self.settings.pool_size)))

    async def aclose(self) -> None:
        """Stop the workers."""
        pool, scratch = self._pool, self._scratch
        self._pool = self._scratch = None
        if pool is not None:
            await pool.aclose()
        if scratch is not None:
            scratch.cleanup()

    async def _synthesize(
        self, text: str, voice: str | None, speed: float
    ) -> AsyncIterator[AudioChunk]:
        pool = self._pool
        if pool is None:
            raise EngineUnavailable(
                "GPT-SoVITS is not started (await start())", stage="tts", backend=self.name
            )
        inputs = self._inputs(text, voice, speed)
        worker = await pool.acquire()
        request_id = next(self._ids)
        answered = False  # the worker sent this request's final frame
        healthy = True
        try:
            worker.send({"op": "run", "id": request_id, "inputs": inputs})
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

    def _inputs(self, text: str, voice_id: str | None, speed: float) -> dict[str, Any]:
        voice = self._voices[voice_id or self._default_voice()]
        return {
            "text_split_method": self.settings.text_split_method,
            **streaming_inputs(self.settings.streaming_mode),
            **self._run_options,
            "text": text,
            "text_lang": voice.text_lang,
            "ref_audio_path": str(voice.ref_audio),
            "prompt_text": voice.prompt_text,
            "prompt_lang": voice.prompt_lang,
            "speed_factor": speed,
        }

    def _default_voice(self) -> str:
        return self.settings.default_voice or next(iter(self._voices))

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

    def _voice_problem(self, voice_id: str, voice: GptSovitsVoice) -> str | None:
        if not voice_id.strip():
            return "the voice id is empty"
        return voice_problem(voice, self.settings.version)

    def _add_voice(self, voice_id: str, voice: GptSovitsVoice) -> None:
        # Workers run in the checkout: hand them absolute paths.
        voice = voice.model_copy(update={"ref_audio": voice.ref_audio.resolve()})
        self._voices[voice_id] = voice
        self.capabilities = dataclasses.replace(self.capabilities, voices=tuple(self._voices))

    def _spec_for(
        self, environ: Mapping[str, str], env: Mapping[str, str], extra: Sequence[Path]
    ) -> WorkerSpec:
        settings = self.settings
        custom: dict[str, Any] = {
            # "auto": ask for CUDA; upstream falls back to the CPU (and drops fp16) without one.
            "device": "cuda" if settings.device == "auto" else settings.device,
            "is_half": settings.is_half,
            "version": settings.version,
        }
        # Upstream silently loads its default weights when a path does not exist: check first.
        for key, path in (
            ("t2s_weights_path", settings.t2s_weights),
            ("vits_weights_path", settings.vits_weights),
        ):
            if path is not None:
                if not path.is_file():
                    raise self._load_error(f"{key.removesuffix('_path')} {str(path)!r} not found")
                custom[key] = str(path.resolve())
        paths = [*(str(p.resolve()) for p in extra), str(self.home), str(self.home / "GPT_SoVITS")]
        worker_env = {**environ, **env, "PYTHONPATH": os.pathsep.join(paths)}
        # torch reads this at start-up; by default the cores are shared out between the workers
        # (torch's own default, every core per worker, measured 3-4x slower on 2 cores)
        threads = settings.threads or max(1, (os.cpu_count() or 1) // settings.pool_size)
        worker_env["OMP_NUM_THREADS"] = str(threads)
        return WorkerSpec(
            argv=(str(self.python), str(WORKER_SCRIPT)),
            cwd=self.home,
            env=worker_env,
            init={"op": "init", "config": {"custom": custom}, "config_dir": None},
            start_timeout_s=settings.start_timeout_s,
            request_timeout_s=settings.request_timeout_s,
        )

    def _checkout(self, configured: Path | None, from_env: str | None) -> Path:
        raw = configured or (Path(from_env) if from_env else None)
        if raw is None:
            raise self._load_error(
                "no GPT-SoVITS checkout: set tts.gpt_sovits.home (VOXLINE_TTS__GPT_SOVITS__HOME) "
                "or GPT_SOVITS_HOME"
            )
        home = raw.expanduser().resolve()
        if not (home / "GPT_SoVITS" / "TTS_infer_pack" / "TTS.py").is_file():
            raise self._load_error(
                f"{str(home)!r} is not a GPT-SoVITS checkout: "
                "GPT_SoVITS/TTS_infer_pack/TTS.py is missing"
            )
        return home

    def _interpreter(self, configured: Path | None, from_env: str | None) -> Path:
        raw = configured or (Path(from_env) if from_env else None)
        if raw is None:
            raise self._load_error(
                "no interpreter for GPT-SoVITS: set tts.gpt_sovits.python "
                "(VOXLINE_TTS__GPT_SOVITS__PYTHON) or GPT_SOVITS_PYTHON to its venv's python"
            )
        python = raw.expanduser()
        if not (python.is_file() and os.access(python, os.X_OK)):
            raise self._load_error(f"GPT-SoVITS interpreter {str(python)!r} is not executable")
        return python.absolute()  # not resolve(): a venv's python is a symlink that must stay one

    def _load_error(self, message: str) -> ModelLoadError:
        return ModelLoadError(message, stage="tts", backend=self.name)


_FRAMES = frozenset({"chunk", "done", "cancelled", "error"})
