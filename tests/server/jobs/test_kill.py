"""A transcription job survives ``kill -9`` of its server: a new server process resumes it after
its last finished chunk, redoes none of them, and ends with the result an uninterrupted run
gives. Real server processes, real engines, the default SQLite store and a real Postgres."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.longform import build_recording
from benchmarks.stats import wer
from client.jobs import JobsClient
from pipeline.audio import encode_wav
from store import Store
from tests.server.jobs.server_process import ServerProcess

TTL_S = 3.0


def _stt_calls(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    counts = re.findall(
        r'voxline_stage_duration_seconds_count\{[^}]*stage="stt"[^}]*\} (\S+)', text
    )
    return int(sum(float(c) for c in counts))


def _chunks(store: Store, job_id: str) -> dict[str, Any]:
    docs = store.documents(f"jobchunk:{job_id}").list(limit=10_000)
    return {d.id: (d.created_at, d.version, d.payload) for d in docs}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_job_resumes_after_kill_9_and_redoes_nothing(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    recording, pieces = build_recording(60.0, seed=7)
    audio = tmp_path / "talk.wav"
    audio.write_bytes(encode_wav(recording))
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    env = {
        "VOXLINE_STATE__URL": url,
        "VOXLINE_JOBS__CHUNK_SECONDS": "12",
        "VOXLINE_JOBS__MIN_CHUNK_SECONDS": "5",
        "VOXLINE_JOBS__CHUNK_PARALLELISM": "1",  # chunks finish one by one: a kill lands between
        "VOXLINE_JOBS__LEASE_TTL_S": str(TTL_S),
        "VOXLINE_JOBS__POLL_INTERVAL_S": "0.2",
    }
    log = tmp_path / "server.log"
    first, second = ServerProcess(env, log), ServerProcess(env, log)
    store = Store.open(url=url)
    try:
        with JobsClient(first.start()) as client:
            job = client.submit("transcription", file=audio)
            deadline = time.monotonic() + 300
            while (seen := client.get(job["id"]))["chunks"]["done"] < 2:
                assert seen["status"] in ("queued", "running"), seen
                assert time.monotonic() < deadline, seen
                time.sleep(0.05)
        first.kill9()
        before = _chunks(store, job["id"])
        total = seen["chunks"]["total"]
        assert 2 <= len(before) < total, (len(before), total)  # killed mid-job

        with JobsClient(second.start(), timeout_s=60) as client:
            done = client.wait(job["id"], timeout_s=300, poll_s=0.2)
            resumed_calls = _stt_calls(second.url)
            text = json.loads(client.result(job["id"]))["text"]
            verbose = json.loads(client.result(job["id"], format="verbose_json"))
            # the same recording, uninterrupted, on the same server
            again = client.wait(client.submit("transcription", file=audio)["id"], timeout_s=300)
            clean = json.loads(client.result(again["id"], format="verbose_json"))
    finally:
        first.stop()
        second.stop()
    after = _chunks(store, job["id"])
    plan = json.loads(store.blobs.read(f"{job['id']}.plan"))
    store.close()

    assert done["status"] == "succeeded", (done, log.read_text()[-3000:])
    assert done["attempts"] == 2  # started by the first server, resumed by the second
    assert {k: after[k] for k in before} == before  # what was done before the kill is untouched
    voiced = sum(1 for span in plan if span[2])
    assert len(after) == voiced
    assert resumed_calls == voiced - len(before)  # the new server transcribed only the rest
    assert verbose["text"] == clean["text"] == text
    assert verbose["segments"] == clean["segments"]
    assert wer(" ".join(p.text for p in pieces), text) < 0.15
