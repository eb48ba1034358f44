"""Work beyond one request and how the service is rolled out: durable jobs, Ray Serve
deployments, releases."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
