"""Text to speech: Piper, GPT-SoVITS (its workers and registered voices), the chain, and the
voices callers upload through the API."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.settings.backends import BackendName, Device, FallbackSettings, HostedSettings


class TTSGpuSettings(BaseModel):
    """The ``gpu`` backend of TTS: the settings of the stage, with these in place."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    engine: Literal["auto", "piper", "gpt_sovits"] = "auto"
    """Engine on the GPU. ``auto``: GPT-SoVITS when it is configured (its home and python set,
    here or as ``GPT_SOVITS_HOME`` / ``GPT_SOVITS_PYTHON``), else Piper (on CUDA only with
    onnxruntime-gpu; without it the default chain does not list Piper twice)."""
    model: str | None = None
    """Piper only: the voice reference on the GPU (unset: the stage's model)."""


class GptSovitsVoice(BaseModel):
    """A GPT-SoVITS voice: a reference clip on the server plus its transcript."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    ref_audio: Path
    """Reference clip, 3-10 seconds."""
    prompt_text: str
    """What is said in the reference clip."""
    prompt_lang: str = "en"
    """Language of the reference clip (upstream codes: en, zh, ja, ko, yue, auto...)."""
    text_lang: str = "en"
    """Language of the text this voice speaks by default."""


class GptSovitsSettings(BaseModel):
    """GPT-SoVITS, run in worker processes with its own interpreter and checkout."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    home: Path | None = None
    """Upstream checkout (``GPT_SOVITS_HOME``); also read from that variable when unset here."""
    python: Path | None = None
    """Interpreter of its venv (``GPT_SOVITS_PYTHON``); also read from that variable."""
    version: Literal["v1", "v2", "v2Pro", "v2ProPlus", "v3", "v4"] = "v2Pro"
    """Model version; fixes the output sample rate (32 kHz, v3 24 kHz, v4 48 kHz)."""
    t2s_weights: Path | None = None
    """GPT (s1) checkpoint; unset: upstream's default for the version."""
    vits_weights: Path | None = None
    """SoVITS (s2) checkpoint; unset: upstream's default for the version."""
    device: Device = "auto"
    """Device of the worker's model."""
    is_half: bool = True
    """fp16 on CUDA (ignored on CPU)."""
    pool_size: int = Field(default=0, ge=0, le=16)
    """Worker processes, each with its own model: concurrent requests served at once. 0: sized
    by device memory: the first worker loads and warms up, reports what it holds, and as many
    more start as fit in the free memory less ``memory_reserve_gib``, up to ``pool_max_size``
    (on a CPU also at most one per two cores)."""
    pool_max_size: int = Field(default=4, ge=1, le=16)
    """Most workers a pool sized by memory (``pool_size`` 0) starts."""
    memory_reserve_gib: float = Field(default=4.0, ge=0.0)
    """Device memory (GPU, or RAM on a CPU) a pool sized by memory leaves free for the other
    engines on the device and for activations."""
    segment_pause_s: float = Field(default=0.1, ge=0.0, le=1.0)
    """Silence between the text segments of one request (upstream's ``fragment_interval``,
    0.3 s by default there). The silence upstream appends after a request's last segment is
    dropped, so phrases spoken one after another join without a hole."""
    # a bounded int, not Literal[0, 1, 2, 3]: an int Literal rejects the env var's string "3"
    streaming_mode: int = Field(default=2, ge=0, le=3)
    """Upstream's streaming mode: 0 off, 1 best quality (slowest), 2 medium, 3 fastest."""
    text_split_method: str = "cut5"
    """Upstream's text splitter (cut0..cut5; cut5 splits on punctuation)."""
    voices: dict[str, GptSovitsVoice] = {}
    """Registered voices by id (JSON in the env var); clients pass ids, never paths."""
    default_voice: str | None = None
    """Voice used when a request names none (default: the first registered)."""
    start_timeout_s: float = 300.0
    """Seconds a worker may take to import upstream and load its models."""
    request_timeout_s: float = 60.0
    """Seconds to the first chunk, and between chunks, before the worker is declared hung."""
    threads: int = Field(default=0, ge=0)
    """torch threads per worker (0: the cores divided between the ``pool_size`` workers, or, for
    a pool sized by memory, between one worker per two cores)."""
    extra_pythonpath: list[Path] = []
    """Folders put before the checkout on the workers' PYTHONPATH (e.g. a torchaudio stand-in
    on a CPU host where no torchaudio build matches torch)."""
    env: dict[str, str] = {}
    """Extra environment variables for the workers (e.g. ``NLTK_DATA``)."""
    run_options: dict[str, float | int | str | bool] = {}
    """Extra keys for upstream's ``TTS.run()`` inputs (e.g. ``top_k``, ``seed``)."""


class TTSSettings(BaseModel):
    """Text to speech."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    engine: Literal["piper", "gpt_sovits", "hosted"] = "piper"
    """Engine of the ``cpu`` backend (``hosted``: the default chain is the hosted backend)."""
    model: str = "packaged:piper-joe-medium"
    """Piper voice: an ``.onnx`` path (its ``.onnx.json`` beside it) or ``packaged:<name>``."""
    device: Device = "cpu"
    """Piper on ``cuda`` needs onnxruntime-gpu."""
    voice: str | None = None
    """Default voice (Piper: speaker name for multi-speaker voices)."""
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    """Default speaking rate (1.0 normal)."""
    capacity: int = Field(default=1, ge=1)
    """Phrases Piper speaks at once, for all sessions and requests together; more wait by
    priority (GPT-SoVITS serves ``gpt_sovits.pool_size`` at once instead)."""
    piper_first_phonemes: int = Field(default=50, ge=1)
    """Piper: target length, in phonemes, of the first piece of a text synthesized in one ONNX
    call (it decides the time to first audio; ~10 ms of CPU a phoneme on 2 cores). Cut at a
    clause end within it, else at the first clause end; only a text whose first clause is
    longer than ``piper_max_phonemes`` is cut inside a clause."""
    piper_max_phonemes: int = Field(default=100, ge=1)
    """Piper: the longest piece synthesized in one ONNX call (a stop waits for the running
    call)."""
    gpt_sovits: GptSovitsSettings = GptSovitsSettings()
    """GPT-SoVITS engine."""
    hosted: HostedSettings = HostedSettings()
    """The ``hosted`` backend: an OpenAI-compatible endpoint."""
    chain: list[BackendName] | None = None
    """Ordered backends, e.g. ``["gpu","cpu","hosted"]``. Unset: ``gpu`` then ``cpu`` on a
    machine with CUDA, else ``cpu``; then ``hosted`` when its base URL is set."""
    fallback: FallbackSettings = FallbackSettings()
    """Deadlines and circuit breaker of the chain."""
    gpu: TTSGpuSettings = TTSGpuSettings()
    """The ``gpu`` backend (used when the chain names it)."""

    @model_validator(mode="after")
    def _first_fits(self) -> TTSSettings:
        if self.piper_first_phonemes > self.piper_max_phonemes:
            raise ValueError("piper_first_phonemes must not exceed piper_max_phonemes")
        return self


class VoicesSettings(BaseModel):
    """Voices uploaded through the API (``POST /v1/audio/voices``, GPT-SoVITS only).

    A voice is a 3-10 s reference clip with its transcript and language, kept in the state
    store (so it survives restarts and every replica sharing the store sees it) and owned by
    the API key that uploaded it.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=10 * 1024 * 1024)
    """Largest reference clip upload, in bytes (at most 10 MiB: ten seconds of 48 kHz stereo
    32-bit float WAV fit); a larger one is refused with 413 before it is decoded."""
    max_per_key: int = Field(default=20, ge=1, le=10_000)
    """Most stored voices one API key (or, with auth off, the local operator) may own; past it
    an upload is refused with 400 ``voice_limit_reached``."""
    max_transcript_chars: int = Field(default=1000, ge=1, le=10_000)
    """Longest transcript of a reference clip, in characters."""
