"""The settings tree: one source for every knob.

Every field is an environment variable ``VOXLINE_<SECTION>__<FIELD>`` (nested delimiter ``__``),
e.g. ``VOXLINE_LLM__MAX_TOKENS=64`` or ``VOXLINE_TTS__GPT_SOVITS__POOL_SIZE=2``. Settings are built
once by the entry point (CLI, server factory, benchmark) and passed down; nothing reads a module
global. A ``.env`` file in the working directory is read too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["auto", "cpu", "cuda"]


class HostedSettings(BaseModel):
    """An OpenAI-compatible endpoint used as a stage backend (a second voxline server is one)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    base_url: str | None = None
    """Base URL including ``/v1``, e.g. ``http://127.0.0.1:8001/v1``. Unset: no hosted backend."""
    api_key: SecretStr | None = None
    """Bearer token sent as ``Authorization``; never logged."""
    model: str | None = None
    """Model name sent to the endpoint (defaults per stage: whisper-1, gpt-4o-mini, tts-1)."""
    voice: str | None = None
    """TTS only: the voice name sent to the endpoint."""
    connect_timeout_s: float = 3.0
    """Seconds to establish a connection."""
    timeout_s: float = 30.0
    """Seconds to wait for the response to start (and between streamed chunks)."""
    max_retries: int = 1
    """Retries of a request that failed before any output (connection errors, 429, 5xx)."""


class STTSettings(BaseModel):
    """Speech to text."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    engine: Literal["whisper", "hosted"] = "whisper"
    """Which engine serves STT."""
    model: str = "packaged:whisper-tiny.en"
    """Model reference: a local CTranslate2 directory, ``packaged:<name>`` or a hub id
    (e.g. ``Systran/faster-whisper-large-v3`` or ``large-v3-turbo``)."""
    device: Device = "auto"
    """``auto`` picks CUDA when available."""
    compute_type: str = "default"
    """CTranslate2 compute type; ``default`` means int8 on CPU and float16 on CUDA."""
    beam_size: int = Field(default=1, ge=1, le=10)
    """Beam width. 1 (greedy) is fastest; 5 is whisper's reference setting."""
    language: str | None = "en"
    """Spoken language code, or ``auto`` (also empty) to detect it (``.en`` models know English
    only)."""
    vad_filter: bool = False
    """Drop non-speech with faster-whisper's Silero VAD before decoding."""
    cpu_threads: int = Field(default=0, ge=0)
    """CTranslate2 intra-op threads on CPU (0: the library's default)."""
    hosted: HostedSettings = HostedSettings()
    """The hosted backend (used when ``engine`` is ``hosted``)."""

    @field_validator("language")
    @classmethod
    def _detect(cls, value: str | None) -> str | None:
        # an env var cannot spell None: "auto" or "" asks whisper to detect the language
        return None if value is None or value.strip().lower() in {"", "auto", "none"} else value


class LLMSettings(BaseModel):
    """The language model."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    engine: Literal["transformers", "llamacpp", "hosted"] = "transformers"
    """Which engine serves the LLM (``llamacpp`` needs the ``llama`` extra)."""
    model: str = "packaged:smollm2-135m-instruct"
    """Model reference: a local directory or ``.gguf`` file, ``packaged:<name>`` or a hub id
    (e.g. ``Qwen/Qwen2.5-7B-Instruct``)."""
    device: Device = "auto"
    """``auto`` picks CUDA when available."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weights dtype; ``auto`` is bfloat16 on CUDA and float32 on CPU."""
    system_prompt: str = (
        "You are a helpful voice assistant. Answer in one or two short spoken sentences."
    )
    """System prompt of every conversation."""
    max_tokens: int = Field(default=96, ge=1)
    """Default cap on generated tokens per reply."""
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    """Default sampling temperature (0: greedy)."""
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    """Default nucleus sampling mass."""
    context_tokens: int = Field(default=2048, ge=256)
    """Context window used for history trimming (and llama.cpp's ``n_ctx``)."""
    threads: int = Field(default=0, ge=0)
    """CPU threads for torch / llama.cpp (0: half the cores, at least 1: STT and TTS share the
    machine, and on 2 cores one LLM thread measured several times faster than two)."""
    gguf_cache_dir: Path | None = None
    """Where dequantized GGUF weights are cached (default: ``<cache_dir>/gguf``)."""
    hosted: HostedSettings = HostedSettings()
    """The hosted backend (used when ``engine`` is ``hosted``)."""


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
    pool_size: int = Field(default=1, ge=1, le=16)
    """Worker processes, each with its own model: concurrent requests served at once."""
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
    """torch threads per worker (0: the cores divided between the ``pool_size`` workers)."""
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
    """Which engine serves TTS."""
    model: str = "packaged:piper-joe-medium"
    """Piper voice: an ``.onnx`` path (its ``.onnx.json`` beside it) or ``packaged:<name>``."""
    device: Device = "cpu"
    """Piper on ``cuda`` needs onnxruntime-gpu."""
    voice: str | None = None
    """Default voice (Piper: speaker name for multi-speaker voices)."""
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    """Default speaking rate (1.0 normal)."""
    gpt_sovits: GptSovitsSettings = GptSovitsSettings()
    """GPT-SoVITS engine."""
    hosted: HostedSettings = HostedSettings()
    """The hosted backend (used when ``engine`` is ``hosted``)."""


class AudioLimits(BaseModel):
    """Bounds on audio we accept (checked while decoding, never trusted from headers)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    max_bytes: int = 25 * 1024 * 1024
    """Largest encoded upload, in bytes (OpenAI's limit is 25 MB)."""
    max_seconds: float = 600.0
    """Longest decoded duration, in seconds."""
    max_channels: int = 8
    """Most channels in an input file (mixed down to mono)."""
    max_sample_rate: int = 192_000
    """Highest input sample rate."""


class SessionSettings(BaseModel):
    """The realtime conversation session: endpointing, speculation and history.

    ``silence_duration_ms`` is the latency knob, and it is cheaper than it looks. The session
    starts the final transcription at the first silent frame and (``speculative_response``) the
    reply as soon as that transcript is ready, holding its audio until the silence is long
    enough. So voice-to-voice is about max(silence, STT + LLM first phrase + TTS first audio),
    not their sum: on a 2-core CPU that chain takes 0.7 s or more, and any silence below it is
    free, while a shorter one only ends more turns at a mid-sentence pause (each false end
    costs CPU the real turn then waits for). 400 ms stays hidden behind the CPU chain and keeps
    voice-to-voice under 500 ms where the chain is faster (a GPU).
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    vad_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    """Speech probability at or above which a VAD frame counts as voiced."""
    silence_duration_ms: int = Field(default=400, ge=0, le=10_000)
    """Silence after the last voiced frame that ends a turn (OpenAI's default is 500)."""
    prefix_padding_ms: int = Field(default=300, ge=0, le=5_000)
    """Audio kept before the first voiced frame (quiet word onsets)."""
    min_speech_ms: int = Field(default=100, ge=0, le=5_000)
    """Voiced audio needed before speech counts as started (and interrupts the assistant):
    filters clicks and coughs."""
    partial_interval_ms: int = Field(default=1000, ge=0)
    """Transcribe the utterance so far after this much new audio (0: only at pauses, where the
    speculative transcription runs anyway). On a CPU a partial still running when the user
    stops delays the final transcript by up to one transcription: keep them sparse, or use 0
    for the lowest voice-to-voice latency."""
    speculative_response: bool = True
    """Start the reply on the speculative transcript before the end of turn is confirmed; its
    audio is held back until then, and it is dropped silently if the user goes on speaking."""
    history_max_tokens: int = Field(default=512, ge=16)
    """Conversation history sent to the LLM, in (approximate) tokens; the system prompt is
    always kept. Small on CPU: every token of history is prefilled again on every turn."""
    chars_per_token: float = Field(default=4.0, gt=0.0)
    """Characters per token used to estimate history length without a tokenizer."""
    input_sample_rate: int = Field(default=24_000, ge=8_000, le=192_000)
    """Sample rate of the client's audio (OpenAI Realtime's pcm16 is 24 kHz)."""
    output_sample_rate: int = Field(default=24_000, ge=8_000, le=192_000)
    """Sample rate of the audio the session sends (resampled from the TTS engine's rate)."""
    max_utterance_seconds: float = Field(default=60.0, gt=0.0)
    """Longest user turn; a longer one is ended (server VAD) or refused (manual commit)."""


class Settings(BaseSettings):
    """All of voxline's settings."""

    model_config = SettingsConfigDict(
        env_prefix="VOXLINE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        use_attribute_docstrings=True,  # field docstrings become descriptions (README table)
    )

    stt: STTSettings = STTSettings()
    """Speech to text."""
    llm: LLMSettings = LLMSettings()
    """Language model."""
    tts: TTSSettings = TTSSettings()
    """Text to speech."""
    audio: AudioLimits = AudioLimits()
    """Input audio limits."""
    session: SessionSettings = SessionSettings()
    """The realtime conversation session."""
    cache_dir: Path = Path.home() / ".cache" / "voxline"
    """Where derived artefacts (dequantized GGUF weights, ...) are cached."""
    hf_offline: bool = False
    """Never contact a model hub: hub ids must already be in the local cache."""


def llm_threads(configured: int) -> int:
    """The LLM's CPU thread count: ``configured``, or half the cores (at least 1) when 0."""
    return configured or max(1, (os.cpu_count() or 2) // 2)
