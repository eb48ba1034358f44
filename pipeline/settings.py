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

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
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
    capacity: int = Field(default=8, ge=1)
    """Calls sent to the endpoint at once; more wait in its queue (``VOXLINE_LIMITS__*``)."""


BackendName = Literal["gpu", "cpu", "hosted", "ray"]
"""``ray``: the stage's Ray Serve deployment (docs/ray.md); the others run in this process or,
for ``hosted``, behind an OpenAI-compatible URL."""


class FallbackSettings(BaseModel):
    """When a stage's chain gives up on a backend, and how it brings it back."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    first_output_timeout_s: float = Field(default=10.0, gt=0.0)
    """Seconds a backend may take to its first output before the next one is tried."""
    gap_timeout_s: float = Field(default=10.0, gt=0.0)
    """Seconds a backend may take between two outputs (a hung engine costs this, not the turn)."""
    failure_threshold: int = Field(default=3, ge=1)
    """Consecutive failures that open a backend's circuit breaker (calls then skip it)."""
    probe_interval_s: float = Field(default=15.0, gt=0.0)
    """Seconds between background health probes of an open backend; a passing probe closes it
    and traffic returns to it without a restart."""
    probe_timeout_s: float = Field(default=60.0, gt=0.0)
    """Seconds one probe may take (a cold start may load weights)."""
    trial_interval_s: float = Field(default=60.0, gt=0.0)
    """Seconds after which one real call may try an open backend whatever its probes say."""
    first_output_budget_s: float | None = Field(default=None, gt=0.0)
    """Rolling p95 time to first output above which a backend is demoted behind the others
    (unset: never)."""


class STTGpuSettings(BaseModel):
    """The ``gpu`` backend of STT: the settings of the stage, with these in place."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    model: str = "large-v3-turbo"
    """Model reference (hub id or faster-whisper size, or a local CTranslate2 directory)."""
    compute_type: str = "float16"
    """CTranslate2 compute type on the GPU."""
    window_floor_ms: int = Field(default=30_000, ge=1000, le=30_000)
    """Shortest encoder window on the GPU (see ``stt.window_floor_ms``): the full 30 s until the
    short window is measured on large-v3-turbo; a GPU encodes 30 s in milliseconds anyway."""


class LLMGpuSettings(BaseModel):
    """The ``gpu`` backend of the LLM: the settings of the stage, with these in place."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    engine: Literal["transformers", "llamacpp"] = "transformers"
    """Engine on the GPU."""
    model: str = "Qwen/Qwen2.5-7B-Instruct"
    """Model reference (hub id, local directory or ``.gguf`` file)."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "bfloat16"
    """Weights dtype on the GPU."""


class TTSGpuSettings(BaseModel):
    """The ``gpu`` backend of TTS: the settings of the stage, with these in place."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    engine: Literal["auto", "piper", "gpt_sovits"] = "auto"
    """Engine on the GPU. ``auto``: GPT-SoVITS when it is configured (its home and python set,
    here or as ``GPT_SOVITS_HOME`` / ``GPT_SOVITS_PYTHON``), else Piper (on CUDA only with
    onnxruntime-gpu; without it the default chain does not list Piper twice)."""
    model: str | None = None
    """Piper only: the voice reference on the GPU (unset: the stage's model)."""


class STTSettings(BaseModel):
    """Speech to text."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    engine: Literal["whisper", "hosted"] = "whisper"
    """Engine of the ``cpu`` backend (``hosted``: the default chain is the hosted backend)."""
    model: str = "packaged:whisper-tiny.en"
    """Model reference: a local CTranslate2 directory, ``packaged:<name>`` or a hub id
    (e.g. ``Systran/faster-whisper-large-v3`` or ``large-v3-turbo``)."""
    device: Device = "auto"
    """Device of the engine when built on its own (a chain sets cpu/cuda per backend)."""
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
    capacity: int = Field(default=1, ge=1)
    """Transcriptions the local engine runs at once, for all sessions and requests together;
    more wait by priority (finals, then speculative ones; partials are dropped instead). 1 on
    a CPU: CTranslate2 runs one Whisper call at a time per model anyway, and batching two
    sessions' clips measured no faster on 2 cores (README, "Overload")."""
    window_margin_ms: int = Field(default=3000, ge=0, le=30_000)
    """Whisper encodes the audio plus this much padding (at least ``window_floor_ms``) instead
    of a fixed 30-second window: a 3 s question costs a third of the time, at the same WER.
    Too little room after the speech and the decoder repeats itself or stops early (measured:
    whisper-base on 10-25 s utterances needs 3 s; tiny.en less)."""
    window_floor_ms: int = Field(default=10_000, ge=1000, le=30_000)
    """The shortest encoder window; 30000 restores Whisper's fixed 30-second window. Below
    about 8 s, tiny.en and base repeat short phrases ("ten of clubs") until cut off."""
    max_tokens_per_second: float = Field(default=12.0, gt=0.0, le=100.0)
    """Cap on decoded tokens per second of audio (plus 16): a decoder stuck in a loop stops
    there. Fast English speech needs about 6."""
    silence_dbfs: float = Field(default=-50.0, ge=-120.0, le=0.0)
    """Audio, or a 30-second window of it, with no 30 ms frame louder than this (RMS) is
    silence: it transcribes to empty text with no decoding (Whisper hallucinates on silence)."""
    file_fallback: bool = True
    """Whisper's temperature fallback for file transcriptions (``/v1/audio/transcriptions``): a
    window that decodes as a loop or improbably is decoded again at higher temperatures.
    Realtime transcriptions never use it (deterministic and bounded)."""
    realtime_deadline_ms: int = Field(default=1000, ge=0)
    """After this long a realtime transcription retries nothing (a window that looped is kept
    as decoded); every window is still decoded once within its token budget, so no words are
    dropped and the time stays proportional to the audio."""
    hosted: HostedSettings = HostedSettings()
    """The ``hosted`` backend: an OpenAI-compatible endpoint."""
    chain: list[BackendName] | None = None
    """Ordered backends, e.g. ``["gpu","cpu","hosted"]``. Unset: ``gpu`` then ``cpu`` on a
    machine with CUDA, else ``cpu``; then ``hosted`` when its base URL is set."""
    fallback: FallbackSettings = FallbackSettings()
    """Deadlines and circuit breaker of the chain."""
    gpu: STTGpuSettings = STTGpuSettings()
    """The ``gpu`` backend (used when the chain names it)."""

    @field_validator("language")
    @classmethod
    def _detect(cls, value: str | None) -> str | None:
        # an env var cannot spell None: "auto" or "" asks whisper to detect the language
        return None if value is None or value.strip().lower() in {"", "auto", "none"} else value


class LLMTierSettings(BaseModel):
    """One more LLM tier (``VOXLINE_LLM__TIERS``, JSON): the fields of the ``llm`` section it
    changes; unset ones are the section's. Each tier is a fallback chain of its own."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    engine: Literal["auto", "transformers", "llamacpp", "hosted"] | None = None
    """Engine of the tier's ``cpu`` backend (``hosted``: its chain is the hosted backend)."""
    model: str | None = None
    """Model reference (a ``.gguf`` path, a directory, ``packaged:<name>`` or a hub id)."""
    device: Device | None = None
    """Device of the engine when built on its own."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Default cap on generated tokens per reply."""
    context_tokens: int | None = Field(default=None, ge=256)
    """Context window."""
    threads: int | None = Field(default=None, ge=0)
    """CPU threads."""
    hosted: HostedSettings | None = None
    """The tier's ``hosted`` backend."""
    chain: list[BackendName] | None = None
    """Ordered backends of the tier's chain."""
    gpu: LLMGpuSettings | None = None
    """The tier's ``gpu`` backend."""


class LLMSettings(BaseModel):
    """The language model."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    engine: Literal["auto", "transformers", "llamacpp", "hosted"] = "auto"
    """Engine of the ``cpu`` backend. ``auto``: llama.cpp when the ``llama`` extra is installed
    (about 4x the decode speed of transformers on a 2-core CPU), else transformers;
    ``hosted``: the default chain is the hosted backend."""
    model: str = "packaged:smollm2-135m-instruct"
    """Model reference: a local directory or ``.gguf`` file, ``packaged:<name>`` or a hub id
    (e.g. ``Qwen/Qwen2.5-7B-Instruct``)."""
    device: Device = "auto"
    """Device of the engine when built on its own (a chain sets cpu/cuda per backend)."""
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
    capacity: int = Field(default=1, ge=1)
    """Replies the local engine generates at once, for all sessions and requests together;
    more wait by priority. Both local engines decode one reply at a time (one model, one
    context); several sessions share it in turn."""
    gguf_cache_dir: Path | None = None
    """Where dequantized GGUF weights are cached (default: ``<cache_dir>/gguf``)."""
    hosted: HostedSettings = HostedSettings()
    """The ``hosted`` backend: an OpenAI-compatible endpoint."""
    chain: list[BackendName] | None = None
    """Ordered backends, e.g. ``["gpu","cpu","hosted"]``. Unset: ``gpu`` then ``cpu`` on a
    machine with CUDA, else ``cpu``; then ``hosted`` when its base URL is set."""
    fallback: FallbackSettings = FallbackSettings()
    """Deadlines and circuit breaker of the chain."""
    gpu: LLMGpuSettings = LLMGpuSettings()
    """The ``gpu`` backend (used when the chain names it)."""
    tiers: dict[str, LLMTierSettings] = {}
    """More LLM tiers by name, as JSON, e.g. ``{"large": {"model": "/models/qwen2.5-1.5b.gguf"},
    "hosted": {"engine": "hosted", "hosted": {"base_url": "https://.../v1"}}}``; this section
    is the ``router.default_tier``. Empty: one tier, every turn on this model."""


class RouterSettings(BaseModel):
    """Which LLM tier answers each turn (``pipeline.router``): the tier each cheap signal sends
    a turn to. The ``llm`` section itself is the ``default_tier``; the others are
    ``llm.tiers``. A tier named here but not configured falls back to the default tier."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    default_tier: str = "small"
    """The name of the ``llm`` section's own tier: small talk and unclassified turns."""
    tool_tier: str | None = "large"
    """Turns with functions offered, or a function's result to read."""
    knowledge_tier: str | None = "large"
    """Turns grounded in passages the knowledge base retrieved."""
    hard_tier: str | None = "hosted"
    """Long or hard requests (compare, calculate, write code...); without it, the
    ``long_answer_tier``."""
    long_answer_tier: str | None = "large"
    """Requests for an explanation, a description, a list."""
    question_tier: str | None = "large"
    """Other questions (facts: the smallest model gets them wrong most)."""
    hard_words: int = Field(default=40, ge=1)
    """A request of at least this many words is hard."""
    long_answer_tokens: int = Field(default=256, ge=1)
    """A request with a ``max_tokens`` of at least this asks for a long answer."""


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


class ReplySettings(BaseModel):
    """How a reply's text is cut into phrases for TTS (``pipeline/phrases.py``).

    The first phrase decides the time to first audio: TTS starts when it is complete, so its
    length is a trade between latency (a small LLM on a CPU takes tens of ms a word) and
    prosody (each phrase is spoken on its own, with a phrase-final intonation).
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    first_phrase_min_words: int = Field(default=3, ge=1)
    """The first phrase may end at a clause boundary (a comma...) once it has this many words."""
    first_phrase_max_words: int = Field(default=4, ge=0)
    """The first phrase is cut at a word boundary once it has this many words, even with no
    punctuation yet (0: never); not right after a word it should not end on ("the", "of", "is",
    "any", a number...): up to three words later."""
    phrase_min_words: int = Field(default=8, ge=1)
    """Later phrases end at a clause boundary only once they have this many words (whole
    sentences sound better)."""
    phrase_max_chars: int = Field(default=160, ge=20)
    """A phrase longer than this is cut at its last clause boundary or space."""


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

    ``turn_end=smart`` (the default) goes further: the transcript started at the pause says
    whether the user is done, so a finished question ends after ``complete_silence_ms`` and a
    sentence left hanging ("a table for ...") waits ``incomplete_silence_ms``. Silence is counted
    in audio received, as with the fixed silence: a client must keep streaming (silence) until the
    turn ends, up to ``incomplete_silence_ms`` of it.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    vad_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    """Speech probability at or above which a VAD frame counts as voiced."""
    silence_duration_ms: int = Field(default=400, ge=0, le=10_000)
    """Silence after the last voiced frame that ends a turn (OpenAI's default is 500); with
    ``turn_end=smart``, only when the transcript before the pause is unclear."""
    turn_end: Literal["fixed", "smart"] = "smart"
    """``fixed``: every turn ends after ``silence_duration_ms`` of silence. ``smart``: the
    transcript of the speech before a pause decides (``pipeline/turn_end.py``): one that reads
    complete ends the turn after ``complete_silence_ms``, one that stops mid-sentence ("a table
    for ...") waits ``incomplete_silence_ms``."""
    complete_silence_ms: int = Field(default=250, ge=0, le=10_000)
    """``smart`` turn end: the silence that ends a turn whose transcript reads complete."""
    incomplete_silence_ms: int = Field(default=1200, ge=0, le=10_000)
    """``smart`` turn end: the silence that ends a turn whose transcript stops mid-sentence,
    and the longest wait for the transcript of a pause."""
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
    prefill: bool = True
    """After each response, read the conversation so far into the LLM's prompt cache while the
    user listens (llama.cpp; spare engine capacity only), so the next turn's first token waits
    only for its own words, not for the previous reply read back or a trimmed history."""
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


class ObservabilitySettings(BaseModel):
    """Logs, traces and what they may contain (``/metrics`` needs no settings: always on)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    log_format: Literal["json", "text"] = "json"
    """``json``: one JSON object per line (for log shippers); ``text``: human-readable lines."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level logged (case-insensitive)."""
    log_content: bool = False
    """Debug only: log transcripts, replies and error messages verbatim. Off: each is replaced
    by ``<redacted N chars>``. Secrets and audio are never logged either way."""
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    """Where OpenTelemetry traces go: ``none`` (no-op tracer, costs nothing), ``console``
    (stdout) or ``otlp`` (OTLP/HTTP; needs the ``otel`` extra)."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP traces URL, e.g. ``http://127.0.0.1:4318/v1/traces`` (unset: the exporter's
    default, or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)."""
    service_name: str = "voxline"
    """``service.name`` of the traces."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class PricingSettings(BaseModel):
    """The cost ledger's price table, in USD.

    Hosted backends are priced per unit of work; the defaults are OpenAI's public list prices for
    whisper-1, gpt-4o-mini and tts-1 when this was written: edit them for your provider (a second
    voxline server as the hosted backend costs what its machine costs: set them to 0). Local
    engines are priced by the seconds they ran times an hourly rate for the machine kind.
    Charges are stored in the state store (``state``), each with the API key it was for.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    hosted_stt_usd_per_minute: float = Field(default=0.006, ge=0.0)
    """Hosted STT: USD per minute of audio in (whisper-1: 0.006)."""
    hosted_llm_input_usd_per_1m_tokens: float = Field(default=0.15, ge=0.0)
    """Hosted LLM: USD per million prompt tokens (gpt-4o-mini: 0.15)."""
    hosted_llm_output_usd_per_1m_tokens: float = Field(default=0.60, ge=0.0)
    """Hosted LLM: USD per million completion tokens (gpt-4o-mini: 0.60)."""
    hosted_tts_usd_per_1m_chars: float = Field(default=15.0, ge=0.0)
    """Hosted TTS: USD per million characters spoken (tts-1: 15)."""
    local_cpu_usd_per_hour: float = Field(default=0.05, ge=0.0)
    """Local engines on a CPU: USD per engine-hour (a share of a small cloud VM)."""
    local_gpu_usd_per_hour: float = Field(default=2.0, ge=0.0)
    """Local engines on a GPU: USD per engine-hour (about an on-demand datacenter GPU)."""


class StateSettings(BaseModel):
    """The durable state store: API keys, usage and quotas, the cost ledger, blobs, vectors.

    Unset ``url``: an embedded SQLite file ``<data_dir>/state.db`` (WAL journal: nothing
    acknowledged is lost when the process is killed), nothing to run. ``postgresql://...``: a
    Postgres server (with the pgvector extension) that several server replicas share.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    url: SecretStr | None = None
    """Database URL: ``sqlite:///PATH`` or ``postgresql://USER:PASSWORD@HOST:PORT/DB`` (needs
    the pgvector extension). Unset: ``sqlite:///<data_dir>/state.db``. Never logged."""
    data_dir: Path = Path.home() / ".local" / "share" / "voxline"
    """Where the default SQLite database lives."""
    pool_size: int = Field(default=5, ge=1, le=100)
    """Database connections each process keeps open (Postgres; SQLite opens them as needed)."""
    busy_timeout_s: float = Field(default=10.0, gt=0.0)
    """Seconds a write waits for another writer (SQLite's lock, a Postgres connection from the
    pool) before the call fails as unavailable."""
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """SQLite only. ``NORMAL``: a commit is in the WAL file when the call returns, so killing
    the process loses nothing; a power cut may lose the last commits (the file stays
    consistent). ``FULL``: every commit is synced to disk too (about 5 ms more per write)."""


class LimitsSettings(BaseModel):
    """What the server takes on at once, how it refuses the rest, and how it lets go.

    Past capacity, work is refused at once with 503 and ``Retry-After`` rather than queued
    until it times out: a realtime session over ``max_sessions`` at the handshake, an engine
    call when its engine's queue is full or its wait too long (docs/architecture.md,
    "Admission and scheduling"). Every queue between the engines and a client is bounded;
    a client that stops reading pauses its own synthesis, and is cut off after
    ``client_stall_timeout_s``.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    max_sessions: int = Field(default=0, ge=0)
    """Realtime sessions served at once, server-wide; one more is refused at the handshake
    (503, ``Retry-After``). 0: ``sessions_per_core`` per CPU core (see that setting)."""
    sessions_per_core: float = Field(default=1.0, gt=0.0)
    """What ``max_sessions`` 0 means: this many sessions per CPU core, at least 1. Chosen from
    ``voxline bench load`` on 2 cores with the default CPU models (README, "Overload,
    backpressure and shutdown"): 2 sessions at once kept the voice-to-voice p95 within 1.5 s
    in every run, 3 did not (1.3-3.4 s), 4 reached 3.0-4.5 s; the engines' work grows with
    sessions and is shared by the cores, so the limit scales with them. A GPU serves many
    more: measure and set ``max_sessions``."""
    engine_queue: int = Field(default=8, ge=0)
    """Calls that may wait for each engine (beyond its ``capacity``); past it the least
    urgent is refused (EngineBusy, 503)."""
    engine_max_wait_s: float = Field(default=5.0, gt=0.0)
    """A call whose estimated wait for its engine (calls ahead / capacity x the engine's mean
    time per call) is past this is refused at once; one still waiting at twice this is
    refused then."""
    client_stall_timeout_s: float = Field(default=10.0, gt=0.0)
    """A client that reads none of a response's audio for this long has that response
    cancelled with an error (realtime) or its stream aborted (HTTP)."""
    drain_timeout_s: float = Field(default=30.0, ge=0.0)
    """On SIGTERM: how long in-flight turns, speech streams and realtime responses may take
    to finish (``/readyz`` says 503 and new work is refused meanwhile); then realtime sockets
    close with 1001 and the process exits."""
    shutdown_timeout_s: float = Field(default=5.0, ge=0.0)
    """After the drain: how long uvicorn waits for the connections still open before it
    closes them."""
    header_timeout_s: float = Field(default=10.0, gt=0.0)
    """A connection that has not sent a request's complete headers within this is closed."""
    keep_alive_timeout_s: float = Field(default=5.0, gt=0.0)
    """An idle keep-alive connection is closed after this."""

    def session_limit(self) -> int:
        """``max_sessions``, or what 0 means on this machine."""
        if self.max_sessions:
            return self.max_sessions
        return max(1, int(self.sessions_per_core * (os.cpu_count() or 1)))


class EdgeSettings(BaseModel):
    """The edge of the server: API keys, origins and hosts, per-key limits (README, "Security").

    Auth is on as soon as one API key exists (``voxline keys create``); until then the server
    answers loopback clients only. Browsers are accepted from the server's own origin, loopback
    origins and ``allowed_origins``; the ``Host`` header must be a loopback name, the address the
    connection arrived on, or one of ``allowed_hosts`` (DNS rebinding).
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    allowed_origins: list[str] = []
    """Browser origins allowed besides the server's own and loopback ones, exactly as browsers
    send them (``https://app.example.com``; ``*``: any origin). Others are refused with 403,
    WebSocket handshakes included."""
    allowed_hosts: list[str] = []
    """``Host`` names accepted besides loopback names and the address the connection arrived
    on: ``voice.example.com``, ``*.example.com``, or ``*`` (no check). Set it to the name
    clients use when the server is exposed."""
    allow_remote_without_keys: bool = False
    """Serve non-loopback clients while no API key exists (no authentication at all). Off: the
    server refuses them, and ``voxline serve`` refuses to bind a non-loopback address."""
    metrics_from_loopback: bool = False
    """Let loopback clients scrape ``/metrics`` without a key (a local Prometheus); otherwise
    ``/metrics`` needs a key with the ``admin`` scope once keys exist."""
    client_secret_ttl_s: int = Field(default=600, ge=10, le=7200)
    """Lifetime of a realtime client secret when the request sets none (OpenAI's default)."""
    demo_login_ttl_s: int = Field(default=8 * 3600, ge=60, le=7 * 24 * 3600)
    """Lifetime of a demo login: the client secret its cookie holds."""
    session_lease_ttl_s: float = Field(default=30.0, ge=2.0)
    """Seconds a realtime session's slot (``max_sessions`` per key) outlives its last renewal:
    a crashed replica's sessions stop counting after this."""
    max_json_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest JSON request body (chat, speech, client secrets), refused with 413 before it is
    parsed. Uploads (transcriptions, turns, the demo) are bounded by ``audio.max_bytes``."""


class JobSettings(BaseModel):
    """Durable jobs (``POST /v1/jobs``): long audio, long text, batches of turns (docs/jobs.md).

    Jobs live in the state store, so they survive a restart: a job whose worker died is taken
    over once its lease lapses and resumes after its last finished chunk.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    workers: int = Field(default=1, ge=0, le=64)
    """Jobs this process runs at once (0: it only accepts jobs; another replica runs them)."""
    chunk_parallelism: int = Field(default=2, ge=1, le=64)
    """Chunks of one job in flight at once (they run at batch priority: interactive work first)."""
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    """Largest job upload in bytes (audio file, text, JSONL); larger ones are refused (413)."""
    max_seconds: float = Field(default=4 * 3600.0, gt=0.0)
    """Longest audio a transcription job accepts, in seconds (checked while decoding)."""
    max_text_chars: int = Field(default=1_000_000, ge=1)
    """Longest text a speech job accepts, in characters."""
    max_turns: int = Field(default=1000, ge=1)
    """Most lines in the JSONL file of a turns job."""
    max_pending: int = Field(default=1000, ge=1)
    """Queued and running jobs of all callers together; past it a submission gets 429."""
    max_pending_per_key: int = Field(default=20, ge=1)
    """Queued and running jobs of one API key (or of anonymous callers); past it 429."""
    chunk_seconds: float = Field(default=30.0, ge=5.0, le=600.0)
    """Longest audio chunk of a transcription job: audio is cut at the longest silence before
    this (whisper reads 30 s windows)."""
    min_chunk_seconds: float = Field(default=10.0, ge=0.5, le=600.0)
    """A cut is not made before this many seconds of chunk (fewer, longer chunks)."""
    min_silence_ms: int = Field(default=300, ge=32, le=10_000)
    """Silence (Silero VAD) long enough to cut at; a chunk with no voiced frame is skipped."""
    speech_chunk_chars: int = Field(default=600, ge=50, le=4096)
    """Largest text chunk of a speech job (whole sentences up to this many characters)."""
    lease_ttl_s: float = Field(default=30.0, gt=0.0)
    """A worker renews its claim on a job this often (a third of it, in fact); a job whose
    worker died is taken over this long after its last renewal."""
    poll_interval_s: float = Field(default=1.0, gt=0.0)
    """How often an idle worker looks for queued jobs (and for jobs whose worker died)."""
    max_attempts: int = Field(default=3, ge=1)
    """Times a job may be started (a worker that died counts); the next one fails it."""


class RayStageSettings(BaseModel):
    """One stage as a Ray Serve deployment: replicas, autoscaling, resources."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    num_replicas: int = Field(default=1, ge=1)
    """Replicas when autoscaling is off."""
    autoscaling: bool = False
    """Let Ray Serve scale between ``min_replicas`` and ``max_replicas``."""
    min_replicas: int = Field(default=1, ge=0)
    """Autoscaling: fewest replicas."""
    max_replicas: int = Field(default=2, ge=1)
    """Autoscaling: most replicas."""
    target_ongoing_requests: float = Field(default=2.0, gt=0.0)
    """Autoscaling: requests in flight per replica that Serve aims for."""
    max_ongoing_requests: int = Field(default=8, ge=1)
    """Requests a replica takes at once; more wait in Serve's queue."""
    num_cpus: float = Field(default=0.25, ge=0.0)
    """CPUs Ray reserves per replica (for placement only: fractions share a core; the engine's
    own thread settings decide what it uses)."""
    num_gpus: float = Field(default=0.0, ge=0.0)
    """GPUs (or a fraction of one) Ray reserves per replica."""
    chain: list[Literal["gpu", "cpu", "hosted"]] | None = None
    """The backends inside each replica (unset: ``gpu`` then ``cpu`` on a machine with CUDA,
    else ``cpu``)."""


class RaySettings(BaseModel):
    """Ray Serve: the stages as deployments, the API as their ingress (docs/ray.md)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    address: str | None = None
    """Ray cluster address (``auto``, ``HOST:PORT``, ``ray://HOST:10001``; ``local``: start one
    in this process). Unset: no Ray; a chain naming ``ray`` needs it."""
    app_name: str = "voxline"
    """Ray Serve application name (the stage deployments are looked up in it)."""
    namespace: str = "voxline"
    """Ray namespace the server and its deployments share."""
    replica_retries: int = Field(default=1, ge=0, le=8)
    """A stage call whose replica died is retried this many times (Serve routes it to another
    replica); what was already streamed is not repeated."""
    job_tasks: bool = True
    """On Ray, run job chunks as Ray tasks (any node) rather than in the ingress process."""
    task_num_cpus: float = Field(default=0.25, ge=0.0)
    """CPUs Ray reserves per job chunk task (the engine work is in the stage replicas)."""
    stt: RayStageSettings = RayStageSettings()
    """The STT deployment."""
    llm: RayStageSettings = RayStageSettings()
    """The LLM deployment."""
    tts: RayStageSettings = RayStageSettings()
    """The TTS deployment."""
    ingress: RayStageSettings = RayStageSettings(num_cpus=0.25)
    """The API deployment (HTTP routes and the realtime WebSocket)."""


class ReleaseSettings(BaseModel):
    """Releases (docs/releases.md): how the server follows the active release, what the
    promotion gate runs, and when a canary is rolled back.

    These are the process's own settings: a release cannot set them.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    poll_interval_s: float = Field(default=1.0, gt=0.0, le=60.0)
    """Seconds between two reads of the active-release pointer in the state store (one indexed
    row): a promotion or rollback reaches the server within this, plus the time to start a
    release's new models (none when only its prompt or sampling changed)."""
    gate_suites: str = "stt,tts,answers"
    """The ``voxline eval`` suites ``voxline release promote`` runs on the candidate (and on the
    active release, when its stored scorecard does not fit): comma-separated, as ``--suite``.
    Latency is left out by default: too noisy to gate on a shared machine."""
    gate_quick: bool = True
    """The gate runs the quick subsets (about 1 min per release on 2 cores for the default
    suites; the full sets take several times longer)."""
    golden_dir: Path | None = None
    """Golden-set folder the gate scores on (unset: the sets shipped in ``benchmarks/golden``)."""
    canary_min_turns: int = Field(default=20, ge=1)
    """Voice turns each of the canary and the active release must have served on this server
    since the canary started before they are compared."""
    canary_max_error_rate_increase: float = Field(default=0.05, ge=0.0, le=1.0)
    """The canary is rolled back when its share of failed turns exceeds the active release's
    by more than this (absolute: 0.05 is five points)."""
    canary_max_fallback_rate_increase: float = Field(default=0.10, ge=0.0, le=1.0)
    """...or its share of turns that fell back to another backend, by more than this."""
    canary_max_v2v_ratio: float = Field(default=1.25, ge=1.0)
    """...or its median voice-to-voice latency is more than this many times the active
    release's (and at least ``canary_v2v_floor_ms`` slower)."""
    canary_v2v_floor_ms: float = Field(default=50.0, ge=0.0)
    """Least V2V slowdown, in ms, that can roll a canary back (a 40 ms median must not fail on
    15 ms of noise)."""


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


class KBSettings(BaseModel):
    """The knowledge base: files, vector stores, retrieval in the voice turn, groundedness.

    A turn retrieves when its request (``/v1/turns``' ``tools``) or its realtime session
    (``session.tools``) names vector stores with OpenAI's ``file_search`` tool. See
    docs/knowledge.md for how each number here was chosen.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    embedding_model: str = "packaged:all-minilm-l6-v2"
    """Embedding model reference (``packaged:<name>``, a local sentence-transformers directory
    or a hub id). Changing it makes stores embedded with another model unsearchable (their
    dimension or space differs): re-add their files."""
    embedding_runtime: Literal["onnx", "torch"] = "onnx"
    """``onnx``: the model exported once to ONNX (cached under ``<cache_dir>/onnx``) and run by
    onnxruntime, about half the query latency of ``torch`` on a 2-core CPU."""
    embedding_threads: int = Field(default=1, ge=0)
    """Threads of one embedding call (0: the runtime's default, all cores). One keeps a query
    from stalling behind the engines that share the cores."""
    chunk_tokens: int = Field(default=200, ge=32, le=4096)
    """Target chunk size in (estimated) tokens. The embedding model reads at most 256 word
    pieces of a chunk."""
    chunk_overlap_tokens: int = Field(default=40, ge=0, le=2048)
    """Tokens a chunk repeats from the end of the one before it (at most half a chunk)."""
    top_k: int = Field(default=3, ge=1, le=50)
    """Passages retrieved per turn (a request's ``file_search.max_num_results`` overrides it);
    each one costs LLM prefill."""
    relevance_threshold: float = Field(default=0.45, ge=-1.0, le=2.0)
    """Relevance (cosine similarity + ``keyword_weight`` x the share of the question's words
    in the passage) below which a passage is not relevant. A turn with no relevant passage is
    answered "I don't know" (``dont_know``)."""
    keyword_weight: float = Field(default=0.3, ge=0.0, le=1.0)
    """Weight of keyword coverage in a passage's relevance (0: cosine similarity alone)."""
    dont_know: Literal["fixed", "llm"] = "fixed"
    """When nothing relevant is retrieved: ``fixed`` speaks ``dont_know_reply`` without calling
    the LLM; ``llm`` tells the LLM explicitly that the documents hold no answer."""
    dont_know_reply: str = "I don't know. The documents I can search don't say."
    """The fixed spoken reply when nothing relevant is retrieved."""
    support_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """Support score (of the answer against its sources) below which an answer is flagged as
    not grounded."""
    replace_unsupported: bool = False
    """Hold each grounded reply until its support is scored and speak ``safe_reply`` instead of
    a flagged one. Costs voice-to-voice latency: the first audio waits for the whole LLM reply."""
    safe_reply: str = "I'm not sure. I couldn't find a clear answer in the documents."
    """What is said instead of an unsupported answer (``replace_unsupported``)."""
    max_context_chars: int = Field(default=2400, ge=200)
    """Most characters of retrieved passages put in the prompt (the best ones first)."""
    max_file_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    """Largest file accepted by ``/v1/files`` (a larger upload is refused with 413)."""
    max_file_chars: int = Field(default=5_000_000, ge=1)
    """Most characters of text one file may hold once extracted (a PDF can expand a lot)."""


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
    reply: ReplySettings = ReplySettings()
    """How replies are cut into phrases for TTS."""
    observability: ObservabilitySettings = ObservabilitySettings()
    """Logs and traces."""
    pricing: PricingSettings = PricingSettings()
    """The cost ledger's price table."""
    state: StateSettings = StateSettings()
    """The durable state store."""
    limits: LimitsSettings = LimitsSettings()
    """Admission control, backpressure and graceful drain."""
    edge: EdgeSettings = EdgeSettings()
    """API keys, origins, hosts and per-key limits."""
    jobs: JobSettings = JobSettings()
    """Durable jobs."""
    voices: VoicesSettings = VoicesSettings()
    """Voices uploaded through the API (GPT-SoVITS)."""
    ray: RaySettings = RaySettings()
    """Ray Serve deployment."""
    router: RouterSettings = RouterSettings()
    """Which LLM tier answers each turn."""
    kb: KBSettings = KBSettings()
    """The knowledge base (files, vector stores, retrieval, groundedness)."""
    release: ReleaseSettings = ReleaseSettings()
    """Releases: following promotions, the promotion gate, canaries."""
    cache_dir: Path = Path.home() / ".cache" / "voxline"
    """Where derived artefacts (dequantized GGUF weights, ...) are cached."""
    hf_offline: bool = False
    """Never contact a model hub: hub ids must already be in the local cache."""
    demo_enabled: bool = True
    """Serve the Gradio demo at ``/demo`` (a client of this server's own ``/v1/realtime``)."""


def llm_threads(configured: int) -> int:
    """The LLM's CPU thread count: ``configured``, or half the cores (at least 1) when 0."""
    return configured or max(1, (os.cpu_count() or 2) // 2)
