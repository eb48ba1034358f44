"""The server process: logs and traces, prices, the state store, admission and drain, and the
edge (API keys, origins, hosts).

These are settings of the process that serves, not of the pipeline it runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


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
