"""The job record: what ``store.documents("job")`` holds for one job, and its API object.

A job's document has the status (``queued`` -> ``running`` -> ``succeeded`` | ``failed`` |
``cancelled``) and a small JSON payload: kind, owner, input blob, options, progress, the blob of
its chunk plan, the blob of its result, its error, and one entry per run (which worker started it
when, and how many chunks were already done: a resumed run starts after them). The payload stays
small because it is rewritten at every finished chunk; plans, chunk outputs and results live in
blobs and in chunk documents (:mod:`server.jobs.queue`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from store import Document

JobKind = Literal["transcription", "speech", "turns"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
KINDS: tuple[JobKind, ...] = ("transcription", "speech", "turns")
ACTIVE: tuple[JobStatus, ...] = ("queued", "running")
TERMINAL: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled")
DOCUMENT_KIND = "job"


@dataclass(frozen=True, slots=True)
class Job:
    """One job as stored (see the module docstring for the lifecycle)."""

    id: str
    kind: JobKind
    status: JobStatus
    owner: str | None
    """The API key id that submitted it (``None``: keys are off); only it sees the job."""
    input_blob: str
    options: Mapping[str, Any]
    created_at: float
    updated_at: float
    version: int = 1
    input_seconds: float | None = None
    """Transcription: the audio's duration; speech: ``None``."""
    chunks_total: int | None = None
    """Chunks to do, once planned (``None`` before)."""
    chunks_done: int = 0
    plan_blob: str | None = None
    result_blob: str | None = None
    result_type: str | None = None
    error: Mapping[str, Any] | None = None
    runs: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)
    """One entry per start: ``{"worker", "started_at", "chunks_done", "resumed"}``."""
    failures: int = 0
    """Runs that ended badly: a worker that died (its job taken over), an engine failure."""

    @property
    def progress(self) -> float:
        """Finished share of the work, 0 to 1 (1 only once it succeeded)."""
        if self.status == "succeeded":
            return 1.0
        if not self.chunks_total:
            return 0.0
        # the last step (stitching, encoding) is not a chunk: 1.0 waits for it
        return round(min(self.chunks_done / self.chunks_total, 1.0) * 0.99, 4)

    def payload(self) -> dict[str, Any]:
        """The document payload."""
        return {
            "kind": self.kind,
            "owner": self.owner,
            "input_blob": self.input_blob,
            "options": dict(self.options),
            "input_seconds": self.input_seconds,
            "chunks_total": self.chunks_total,
            "chunks_done": self.chunks_done,
            "plan_blob": self.plan_blob,
            "result_blob": self.result_blob,
            "result_type": self.result_type,
            "error": None if self.error is None else dict(self.error),
            "runs": [dict(r) for r in self.runs],
            "failures": self.failures,
        }

    def with_(self, **changes: Any) -> Job:
        """A copy with ``changes``."""
        return replace(self, **changes)

    def public(self) -> dict[str, Any]:
        """The API's job object (``GET /v1/jobs/{id}``)."""
        out: dict[str, Any] = {
            "id": self.id,
            "object": "job",
            "kind": self.kind,
            "status": self.status,
            "progress": self.progress,
            "created_at": int(self.created_at),
            "updated_at": int(self.updated_at),
            "chunks": {"total": self.chunks_total, "done": self.chunks_done},
            "attempts": len(self.runs),
            "options": dict(self.options),
        }
        if self.input_seconds is not None:
            out["input_seconds"] = round(self.input_seconds, 3)
        if self.error is not None:
            out["error"] = dict(self.error)
        if self.status == "succeeded":
            out["result_url"] = f"/v1/jobs/{self.id}/result"
        return out


def job_of(doc: Document) -> Job:
    """The job in a stored document."""
    p = doc.payload
    return Job(
        id=doc.id,
        kind=cast(JobKind, p["kind"]),
        status=cast(JobStatus, doc.status),
        owner=p.get("owner"),
        input_blob=p["input_blob"],
        options=p.get("options") or {},
        created_at=doc.created_at,
        updated_at=doc.updated_at,
        version=doc.version,
        input_seconds=p.get("input_seconds"),
        chunks_total=p.get("chunks_total"),
        chunks_done=int(p.get("chunks_done") or 0),
        plan_blob=p.get("plan_blob"),
        result_blob=p.get("result_blob"),
        result_type=p.get("result_type"),
        error=p.get("error"),
        runs=tuple(p.get("runs") or ()),
        failures=int(p.get("failures") or 0),
    )
