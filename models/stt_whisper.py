"""Speech to text with faster-whisper (Whisper on CTranslate2).

faster-whisper is the CPU default because it runs Whisper int8-quantized at several times real
time on two cores, ships Silero VAD inside its wheel, and loads the packaged tiny.en model with no
network. The same engine serves the GPU profile (large-v3-turbo, float16) from a hub id.

Loading is explicit and blocking (``load()``, called off the event loop by ``start()`` or a
registry), so construction stays cheap and a bad model reference surfaces as ``ModelLoadError``
at start-up. A transcription that finds the model unloaded loads it lazily, inside the worker
thread, so the engine also works without a registry (scripts, tests).

Decoding runs window by window in ``models.whisper_window``: each window is only as long as its
audio plus a margin (not a fixed 30 s), its decode has a token budget, silent windows are
skipped. We drain it in a worker thread and check the stop event before each window's encoder
pass, between fallback attempts and between segments, so a cancelled request stops after at most
the decode in progress. Realtime transcriptions (``transcribe(realtime=True)``) decode greedily
with no temperature fallback and under a deadline: the same audio gives the same text, fast.
File transcriptions keep Whisper's fallback, which repairs the rare window that loops or mumbles
in long recordings, where a few hundred milliseconds more matter less than the words.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from models.weights import hub_error, resolve
from models.whisper_window import FULL_WINDOW, DecodeOptions, WindowPolicy, transcribe_windows
from pipeline.errors import (
    EngineOverloaded,
    EngineUnavailable,
    InvalidInput,
    ModelLoadError,
    StageError,
)
from pipeline.offload import iterate_in_thread
from pipeline.settings import STTSettings
from pipeline.stages import STT
from pipeline.types import AudioChunk, Segment, STTCapabilities, Transcript

log = logging.getLogger("voxline.stt.whisper")

THREAD_NAME = "stt-whisper"
"""Name of the worker thread of every transcription (tests and debuggers find it by it)."""

_WARMUP_SECONDS = 2.0  # a typical question: the window lengths realtime work will use
_CLOSE_TIMEOUT_S = 10.0  # a 30 s window decode takes ~1 s on two CPU cores; much less on a GPU
_FILE_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # whisper's fallback schedule


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    import ctranslate2  # imports in ~0.1 s and loads no weights: fine in a constructor

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def _pick_compute_type(compute_type: str, device: str) -> str:
    # CTranslate2's own "default" keeps the stored type (float16 for most converted models),
    # which is slow on CPU; our "default" means the fast choice for the device.
    if compute_type != "default":
        return compute_type
    return "float16" if device == "cuda" else "int8"


class WhisperSTT(STT):
    """faster-whisper behind the STT contract.

    Args:
        settings: The ``stt`` section of the settings tree.
        offline: Never contact the model hub (``Settings.hf_offline``): a hub id must already be
            in the local Hugging Face cache.

    ``name`` is ``whisper:<device>``. Partial transcripts carry the text of every segment so
    far; the final one adds segments, language and the input's duration.
    """

    def __init__(self, settings: STTSettings, *, offline: bool = False) -> None:
        device = _pick_device(settings.device)
        super().__init__(name=f"whisper:{device}", device=device)
        self.settings = settings
        self.offline = offline
        self.compute_type = _pick_compute_type(settings.compute_type, device)
        self._model: Any = None  # faster_whisper.WhisperModel once loaded
        self._load_lock = threading.Lock()
        self._closed = False
        # Stop events of the transcriptions in flight, so aclose() can stop and await them.
        # (The worker thread of each, too: aclose() returns once they have exited.)
        self._active: dict[threading.Event, threading.Thread] = {}
        self._idle = threading.Condition()

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._model is not None

    def load(self) -> None:
        """Blocking: load the model (idempotent, thread-safe).

        Raises:
            ModelLoadError: the reference does not resolve, the files are not a CTranslate2
                Whisper model, or a hub id is neither cached nor downloadable.
            EngineUnavailable: CUDA was asked for but CTranslate2 sees no CUDA device, or the
                engine is closed.
            EngineOverloaded: the GPU ran out of memory while loading.
        """
        self._ensure_model()

    def warmup(self) -> None:
        """Blocking: load the model and decode a second of faint noise.

        The first decode pays one-off costs (allocator growth, CUDA kernel selection) that a
        user's first request should not.
        """
        model = self._ensure_model()
        noise = np.random.default_rng(0).normal(0.0, 0.01, int(_WARMUP_SECONDS * 16_000))
        options = self.decode_options(realtime=True)
        for _ in transcribe_windows(
            model,
            noise.astype(np.float32),
            language="en" if "en" in model.supported_languages else None,
            prompt=None,
            options=replace(options, silence_dbfs=-200.0),  # faint noise is decoded all the same
            stop=threading.Event(),
        ):
            pass

    def decode_options(self, *, realtime: bool) -> DecodeOptions:
        """How a transcription decodes under the settings (``realtime``: bounded, greedy)."""
        s = self.settings
        frames_per_ms = 0.1  # 10 ms per mel frame
        window = WindowPolicy(
            margin_frames=round(s.window_margin_ms * frames_per_ms),
            floor_frames=min(FULL_WINDOW, round(s.window_floor_ms * frames_per_ms)),
        )
        fallback = s.file_fallback and not realtime
        return DecodeOptions(
            window=window,
            beam_size=s.beam_size,
            temperatures=_FILE_TEMPERATURES if fallback else (0.0,),
            tokens_per_second=s.max_tokens_per_second,
            silence_dbfs=s.silence_dbfs,
            deadline=time.perf_counter() + s.realtime_deadline_ms / 1000 if realtime else None,
            vad_filter=s.vad_filter,
        )

    async def aclose(self) -> None:
        """Stop the transcriptions in flight, wait for their threads, then drop the model.

        A stopped transcription raises ``EngineUnavailable`` to its consumer. Waiting matters:
        a daemon thread still inside CTranslate2 when the interpreter exits aborts the process.
        A closed engine does not load again: later calls raise ``EngineUnavailable``.
        """
        self._closed = True
        with self._idle:
            for stop in self._active:
                stop.set()
            workers = list(self._active.values())
        await asyncio.to_thread(self._wait_idle, workers, _CLOSE_TIMEOUT_S)
        self._model = None

    def _wait_idle(self, workers: list[threading.Thread], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._idle:
            if not self._idle.wait_for(lambda: not self._active, timeout):
                log.warning("%s: %d transcriptions still running", self.name, len(self._active))
                return
        for worker in workers:  # out of CTranslate2 by now: only their last Python lines left
            worker.join(max(0.0, deadline - time.monotonic()))

    def _ensure_model(self) -> Any:
        model = self._model
        if model is not None and not self._closed:
            return model
        with self._load_lock:
            if self._closed:
                raise EngineUnavailable("the engine is closed", stage="stt", backend=self.name)
            if self._model is None:
                self._model = self._load_model()
                if self._closed:  # aclose() ran while we were loading
                    self._model = None
                    raise EngineUnavailable("the engine is closed", stage="stt", backend=self.name)
            return self._model

    def _load_model(self) -> Any:
        from faster_whisper import WhisperModel
        from faster_whisper.utils import download_model

        ref = self.settings.model
        try:
            resolved = resolve(ref, stage="stt")
        except ModelLoadError as exc:  # re-raised under our name: the chain reports backends
            raise ModelLoadError(exc.message, stage="stt", backend=self.name) from exc
        if self.device == "cuda":
            import ctranslate2

            if ctranslate2.get_cuda_device_count() == 0:
                raise EngineUnavailable(
                    "STT device is 'cuda' but CTranslate2 sees no CUDA device: set "
                    "VOXLINE_STT__DEVICE=cpu (or auto), or install the CUDA build",
                    stage="stt",
                    backend=self.name,
                    retryable=True,
                )
        if resolved.path is not None:
            path = resolved.path
            if not (path / "model.bin").is_file():
                raise ModelLoadError(
                    f"model {ref!r} ({path}) is not a CTranslate2 Whisper directory (no "
                    "model.bin): convert it with `ct2-transformers-converter` or point the "
                    "setting at a faster-whisper model directory",
                    stage="stt",
                    backend=self.name,
                )
        else:
            try:
                # Downloading ourselves (rather than passing the id to WhisperModel) keeps
                # "could not get the files" apart from "the files do not load".
                path = Path(download_model(str(resolved.hub_id), local_files_only=self.offline))
            except Exception as exc:  # any failure to obtain files is the same fix for the user
                raise hub_error(ref, stage="stt", backend=self.name, cause=exc) from exc

        start = time.perf_counter()
        try:
            model = WhisperModel(
                str(path),
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=self.settings.cpu_threads,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            if self.device == "cuda" and isinstance(exc, RuntimeError):
                raise self._cuda_failure(exc) from exc
            raise ModelLoadError(
                f"model {ref!r} ({path}) did not load ({type(exc).__name__}: {exc}): the "
                "files are corrupt or not a CTranslate2 Whisper model, or the compute type "
                f"{self.compute_type!r} is unsupported on {self.device}",
                stage="stt",
                backend=self.name,
            ) from exc
        log.info(
            "loaded %s (%s) on %s/%s in %.2f s",
            ref,
            resolved.location,
            self.device,
            self.compute_type,
            time.perf_counter() - start,
        )
        self.capabilities = STTCapabilities(
            partials=True, languages=tuple(model.supported_languages)
        )
        return model

    def _cuda_failure(self, exc: BaseException) -> StageError:
        # CTranslate2 reports CUDA out-of-memory as a plain RuntimeError, indistinguishable by
        # type from other CUDA failures (and we never read message text). On a GPU those are
        # overwhelmingly OOM, and the right reaction is the same: try the next backend.
        return EngineOverloaded(
            f"CUDA failure (likely out of memory): {exc}",
            stage="stt",
            backend=self.name,
            retryable=True,
        )

    def _translate(self, exc: Exception) -> StageError:
        if isinstance(exc, MemoryError):
            return EngineOverloaded(
                f"out of memory: {exc}", stage="stt", backend=self.name, retryable=True
            )
        if isinstance(exc, RuntimeError):  # CTranslate2's single exception type for C++ errors
            if self.device == "cuda":
                return self._cuda_failure(exc)
            return EngineUnavailable(
                f"CTranslate2 failed: {exc}", stage="stt", backend=self.name, retryable=True
            )
        return super()._translate(exc)

    def _check_language(self, model: Any, language: str | None) -> None:
        if language is None:
            return
        # Whisper's language list is private in faster-whisper but has been stable since 0.1;
        # the public ``supported_languages`` only says what this model knows.
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if language not in _LANGUAGE_CODES:  # no Whisper knows it: the caller's mistake
            raise InvalidInput(
                f"unsupported language {language!r} (use an ISO 639-1 code such as 'en')",
                param="language",
                code="unsupported_language",
            )
        supported: list[str] = model.supported_languages
        if language not in supported:
            # An English-only model: a multilingual backend further down a chain may serve it.
            raise EngineUnavailable(
                f"model {self.settings.model!r} only knows {', '.join(supported)}; "
                f"asked for {language!r}",
                stage="stt",
                backend=self.name,
                retryable=True,
            )

    def _decode(
        self,
        audio: AudioChunk,
        language: str | None,
        prompt: str | None,
        realtime: bool,
        stop: threading.Event,
    ) -> Iterator[str | Segment]:
        """Worker-thread side: yield the language, then each non-empty segment."""
        with self._idle:
            self._active[stop] = threading.current_thread()
        try:
            if self._closed:  # aclose() ran before we registered, so it could not stop us
                raise EngineUnavailable("the engine is closed", stage="stt", backend=self.name)
            model = self._ensure_model()
            self._check_language(model, language)
            options = self.decode_options(realtime=realtime)  # the deadline starts now
            yield from transcribe_windows(
                model, audio.samples, language=language, prompt=prompt, options=options, stop=stop
            )
            if stop.is_set() and self._closed:  # not a consumer that left: tell the one waiting
                raise EngineUnavailable(
                    "the engine was closed during the transcription",
                    stage="stt",
                    backend=self.name,
                )
        finally:
            with self._idle:
                self._active.pop(stop, None)
                self._idle.notify_all()

    def _transcribe(
        self, audio: AudioChunk, *, language: str | None, prompt: str | None
    ) -> AsyncIterator[Transcript]:
        return self._run(audio, language, prompt, realtime=False)

    def _transcribe_realtime(
        self, audio: AudioChunk, *, language: str | None, prompt: str | None
    ) -> AsyncIterator[Transcript]:
        return self._run(audio, language, prompt, realtime=True)

    async def _run(
        self, audio: AudioChunk, language: str | None, prompt: str | None, *, realtime: bool
    ) -> AsyncIterator[Transcript]:
        language = (language or self.settings.language or "").strip().lower() or None
        detected: str | None = language
        segments: list[Segment] = []
        items = iterate_in_thread(
            lambda stop: self._decode(audio, language, prompt, realtime, stop),
            thread_name=THREAD_NAME,
        )
        async with contextlib.aclosing(items):
            async for item in items:
                if isinstance(item, str):
                    detected = item
                    continue
                segments.append(item)
                yield Transcript(
                    text=" ".join(s.text for s in segments), final=False, language=detected
                )
        yield Transcript(
            text=" ".join(s.text for s in segments),
            final=True,
            language=detected,
            segments=tuple(segments),
            audio_seconds=audio.duration,
        )
