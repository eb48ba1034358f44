"""A client of a voxline server's durable jobs (``/v1/jobs``), over HTTP.

Used by ``voxline jobs``, the long-audio benchmark and the tests. Synchronous (httpx): a job
takes minutes, and its callers are command lines and scripts. Errors in the OpenAI shape become
:class:`JobsError` with the server's status, code and message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")


class JobsError(Exception):
    """The server refused a request (``status``, ``code`` and its message)."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(f"{status} {code or ''}: {message}".replace(" :", ":"))
        self.status = status
        self.code = code
        self.message = message


class JobsClient:
    """Submit, watch, cancel and fetch jobs.

    Args:
        url: The server's base URL (``http://127.0.0.1:8000``).
        api_key: Sent as ``Authorization: Bearer`` when given.
        timeout_s: Per request (an upload of a long recording takes a while).
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 300.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def __enter__(self) -> JobsClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def submit(
        self,
        kind: str,
        *,
        file: Path | None = None,
        text: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Submit a job (a file, or ``text`` for speech); returns the job object."""
        data = {"kind": kind, **{k: str(v) for k, v in (options or {}).items() if v is not None}}
        if text is not None:
            data["input"] = text
        if file is None:
            return self._json(self._http.post("/v1/jobs", data=data))
        with file.open("rb") as handle:
            files = {"file": (file.name, handle, "application/octet-stream")}
            return self._json(self._http.post("/v1/jobs", data=data, files=files))

    def get(self, job_id: str) -> dict[str, Any]:
        """The job object."""
        return self._json(self._http.get(f"/v1/jobs/{job_id}"))

    def list(self, *, status: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The caller's jobs, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        data: list[dict[str, Any]] = self._json(self._http.get("/v1/jobs", params=params))["data"]
        return data

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job."""
        return self._json(self._http.post(f"/v1/jobs/{job_id}/cancel"))

    def result(self, job_id: str, *, format: str | None = None) -> bytes:
        """The result's bytes (a transcription in ``format``: json, text, srt, vtt...)."""
        params = {"format": format} if format else None
        response = self._http.get(f"/v1/jobs/{job_id}/result", params=params)
        self._check(response)
        return response.content

    def events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """The job's SSE events (each ``{"type", "job"}``) until it ends."""
        with self._http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[6:])

    def wait(
        self,
        job_id: str,
        *,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        timeout_s: float | None = None,
        poll_s: float = 0.5,
    ) -> dict[str, Any]:
        """Block until the job ends (polling; survives a server restart); returns it.

        Raises:
            TimeoutError: it had not ended after ``timeout_s``.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                job = self.get(job_id)
            except httpx.TransportError:  # the server is restarting: the job is in its store
                job = None
            if job is not None:
                if on_update is not None:
                    on_update(job)
                if job["status"] in TERMINAL:
                    return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job and job['status']}")
            time.sleep(poll_s)

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        self._check(response)
        body: dict[str, Any] = response.json()
        return body

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            error = response.json()["error"]
            code, message = error.get("code"), error.get("message", "")
        except (ValueError, KeyError, TypeError):
            code, message = None, response.text[:200]
        raise JobsError(response.status_code, code, message)
