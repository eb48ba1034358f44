"""``/v1/jobs`` on the real engines: the three kinds end to end, progress and events, and every
bad submission refused before a job exists."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from benchmarks.longform import build_recording
from benchmarks.stats import wer
from models.registry import Engines
from pipeline.audio import decode_audio, encode_wav
from pipeline.fallback_core import Chain
from pipeline.priority import Priority
from pipeline.settings import AudioLimits, JobSettings
from server.state import AppState
from tests.server.conftest import AppFactory, http_client, make_settings, spoken_wav

pytestmark = pytest.mark.asyncio(loop_scope="module")

FAST = JobSettings(
    chunk_seconds=20, min_chunk_seconds=8, poll_interval_s=0.2, speech_chunk_chars=80
)


def _app(app_factory: AppFactory, **jobs: Any) -> FastAPI:
    return app_factory(make_settings(jobs=FAST.model_copy(update=jobs)))


async def _wait(
    client: httpx.AsyncClient, job_id: str, timeout_s: float = 240
) -> list[dict[str, Any]]:
    """Poll the job until it ends; every object seen, in order (the timeout guards a hang)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        seen.append(job)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return seen
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end: {seen[-1]}")


class _Running:
    """The app's job worker running for the block (ASGITransport runs no lifespan)."""

    def __init__(self, app: FastAPI) -> None:
        self.state: AppState = app.state.voxline

    async def __aenter__(self) -> None:
        self.state.jobs.runner.start()

    async def __aexit__(self, *_: object) -> None:
        await self.state.jobs.runner.aclose()


async def test_a_long_recording_is_transcribed_in_chunks_with_timestamps(
    app_factory: AppFactory,
) -> None:
    recording, pieces = build_recording(50.0, seed=3)
    app = _app(app_factory)
    async with http_client(app) as client, _Running(app):
        created = await client.post(
            "/v1/jobs",
            data={"kind": "transcription"},
            files={"file": ("talk.wav", encode_wav(recording), "audio/wav")},
        )
        assert created.status_code == 200, created.text
        job = created.json()
        assert job["object"] == "job" and job["kind"] == "transcription"
        assert job["status"] == "queued" and job["progress"] == 0.0
        events = [e async for e in _events(client, job["id"])]
        seen = await _wait(client, job["id"])
        result = (await client.get(f"/v1/jobs/{job['id']}/result")).json()
        srt = (await client.get(f"/v1/jobs/{job['id']}/result", params={"format": "srt"})).text
        vtt = await client.get(f"/v1/jobs/{job['id']}/result", params={"format": "vtt"})
    final = seen[-1]
    assert final["status"] == "succeeded" and final["progress"] == 1.0
    assert final["chunks"]["total"] >= 3  # 50 s cut at most every 20 s
    progress = [s["progress"] for s in seen]
    assert progress == sorted(progress)
    assert events[-1]["type"] == "job.succeeded" and events[-1]["job"]["progress"] == 1.0
    reference = " ".join(p.text for p in pieces)
    assert wer(reference, result["text"]) < 0.15, result["text"]
    assert result["usage"]["seconds"] == pytest.approx(recording.duration, abs=0.01)
    starts = [_srt_seconds(line.split(" --> ")[0]) for line in srt.splitlines() if " --> " in line]
    assert starts == sorted(starts) and starts[-1] > 40.0  # stitched on the recording's time
    assert vtt.text.startswith("WEBVTT") and vtt.headers["content-type"].startswith("text/vtt")


def _srt_seconds(stamp: str) -> float:
    hours, minutes, rest = stamp.split(":")
    seconds, millis = rest.split(",")
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000


async def _events(client: httpx.AsyncClient, job_id: str) -> Any:
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])


async def test_long_text_becomes_one_audio_file(app_factory: AppFactory, engines: Engines) -> None:
    text = (
        "The bridge was closed for repairs, so we took the long road. "
        "She opened the letter slowly and read it twice. "
        "Children in the village learn to swim in the river every summer."
    )
    app = _app(app_factory)
    async with http_client(app) as client, _Running(app):
        job = (await client.post("/v1/jobs", data={"kind": "speech", "input": text})).json()
        # streamed as it is made: asked for before any chunk exists
        streamed = await client.get(f"/v1/jobs/{job['id']}/result", params={"stream": "true"})
        seen = await _wait(client, job["id"])
        audio = await client.get(f"/v1/jobs/{job['id']}/result")
    assert seen[-1]["status"] == "succeeded" and seen[-1]["chunks"]["total"] >= 2
    assert audio.headers["content-type"] == "audio/wav"
    clip = decode_audio(audio.content, sample_rate=16_000, limits=AudioLimits())
    assert clip.duration > 6.0
    assert streamed.headers["content-type"] == "audio/wav"
    assert streamed.content[44:] == audio.content[44:]  # the same samples, header aside
    heard = next(iter([t async for t in engines.stt.transcribe(clip) if t.final])).text
    assert wer(text, heard) < 0.25, heard


async def test_a_batch_of_turns_answers_every_line(app_factory: AppFactory) -> None:
    question = base64.b64encode(spoken_wav("What is the capital of France?")).decode()
    lines = [{"text": "Say hello."}, {"audio": question}]
    body = "\n".join(json.dumps(line) for line in lines).encode()
    app = _app(app_factory)
    async with http_client(app) as client, _Running(app):
        job = (
            await client.post(
                "/v1/jobs",
                data={"kind": "turns", "max_tokens": "16", "include_audio": "true"},
                files={"file": ("turns.jsonl", body, "application/jsonl")},
            )
        ).json()
        seen = await _wait(client, job["id"])
        result = await client.get(f"/v1/jobs/{job['id']}/result")
    assert seen[-1]["status"] == "succeeded", seen[-1]
    answers = [json.loads(line) for line in result.text.splitlines()]
    assert [a["index"] for a in answers] == [0, 1]
    assert answers[0]["transcript"] == "Say hello."
    assert "capital" in answers[1]["transcript"].lower()
    for answer in answers:
        assert answer["reply"].strip()
        wav = decode_audio(
            base64.b64decode(answer["audio"]), sample_rate=16_000, limits=AudioLimits()
        )
        assert wav.duration == pytest.approx(answer["audio_seconds"], abs=0.05)


def _turn_line(audio: bytes) -> bytes:
    return json.dumps({"audio": base64.b64encode(audio).decode()}).encode()


async def test_bad_submissions_are_refused_before_a_job_exists(app_factory: AppFactory) -> None:
    app = _app(app_factory, max_seconds=5.0, max_turns=2)
    long_audio = spoken_wav(
        "This sentence is long enough to take more than five seconds to say out loud, surely."
    )
    async with http_client(app) as client:
        cases = [
            ({"kind": "translation"}, None, 400, None),
            ({"kind": "transcription"}, None, 400, None),
            ({"kind": "transcription"}, ("x.wav", b"not audio at all", "audio/wav"), 400, None),
            ({"kind": "transcription"}, ("x.wav", long_audio, "audio/wav"), 400, "audio_too_long"),
            ({"kind": "speech", "input": "  "}, None, 400, "empty_input"),
            ({"kind": "speech", "input": "Hi.", "voice": "nobody"}, None, 400, "unknown_voice"),
            (
                {"kind": "turns"},
                ("t.jsonl", b'{"txt": 1}\n', "application/jsonl"),
                400,
                "invalid_jsonl",
            ),
            (
                {"kind": "turns"},
                ("t.jsonl", b'{"text": "a"}\n' * 3, "application/jsonl"),
                400,
                "too_many_turns",
            ),
            (  # each line is checked at once, not when its turn runs
                {"kind": "turns"},
                ("t.jsonl", b'{"text": "a"}\n{"audio": "!!"}\n', "application/jsonl"),
                400,
                "invalid_jsonl",
            ),
            (
                {"kind": "turns"},
                ("t.jsonl", b'{"text": "   "}\n', "application/jsonl"),
                400,
                "invalid_value",
            ),
            (
                {"kind": "turns"},
                ("t.jsonl", _turn_line(b"not audio at all") + b"\n", "application/jsonl"),
                400,
                None,
            ),
            ({"kind": "transcription", "language": "english!"}, None, 400, "unsupported_language"),
        ]
        for data, file, status, code in cases:
            files = {"file": file} if file else None
            response = await client.post("/v1/jobs", data=data, files=files)
            assert response.status_code == status, (data, response.text)
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error"
            if code:
                assert error["code"] == code, error
        listed = (await client.get("/v1/jobs")).json()
    assert listed == {"object": "list", "data": [], "has_more": False}


async def test_uploads_over_the_job_limit_are_413(app_factory: AppFactory) -> None:
    app = _app(app_factory, max_bytes=64 * 1024)
    big = encode_wav(build_recording(10.0)[0])  # ~320 kB
    async with http_client(app) as client:
        response = await client.post(
            "/v1/jobs", data={"kind": "transcription"}, files={"file": ("a.wav", big, "audio/wav")}
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] in ("request_too_large", "audio_too_large")


async def test_too_many_pending_jobs_are_refused_with_retry_after(app_factory: AppFactory) -> None:
    app = _app(app_factory, max_pending_per_key=2)
    async with http_client(app) as client:
        for _ in range(2):
            ok = await client.post("/v1/jobs", data={"kind": "speech", "input": "Hello."})
            assert ok.status_code == 200
        refused = await client.post("/v1/jobs", data={"kind": "speech", "input": "Hello."})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] and refused.json()["error"]["code"] == "too_many_jobs"


async def test_cancel_result_and_missing_jobs(app_factory: AppFactory) -> None:
    app = _app(app_factory)  # no worker runs: the job stays queued
    async with http_client(app) as client:
        job = (await client.post("/v1/jobs", data={"kind": "speech", "input": "Hello."})).json()
        early = await client.get(f"/v1/jobs/{job['id']}/result")
        cancelled = await client.post(f"/v1/jobs/{job['id']}/cancel")
        again = await client.post(f"/v1/jobs/{job['id']}/cancel")
        events = [e async for e in _events(client, job["id"])]
        missing = await client.get("/v1/jobs/job_nope")
        deleted = await client.delete(f"/v1/jobs/{job['id']}")
        gone = await client.get(f"/v1/jobs/{job['id']}")
    assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_ready"
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert again.status_code == 409
    assert [e["type"] for e in events] == ["job.cancelled"]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert deleted.json()["deleted"] is True and gone.status_code == 404


async def test_a_busy_engine_makes_a_job_wait_without_spending_an_attempt(
    app_factory: AppFactory, engines: Engines
) -> None:
    # one attempt only: had a refusal counted as a failure, the job would have failed
    app = _app(app_factory, max_attempts=1)
    state: AppState = app.state.voxline
    assert isinstance(engines.tts, Chain)
    tts = engines.tts.backends[0].scheduler
    assert tts is not None
    refused_before, saved_queue = tts.refused, tts.max_queue
    held = await tts.acquire(Priority.INTERACTIVE)  # a user is being answered
    tts.max_queue = 0  # and nothing may wait: batch work is refused at once
    try:
        async with http_client(app) as client, _Running(app):
            job = (await client.post("/v1/jobs", data={"kind": "speech", "input": "Hello."})).json()
            # refused, queued again, claimed again, refused again (a scheduler has no event to
            # wait on; the guard keeps a hang short)
            deadline = time.monotonic() + 60
            while tts.refused < refused_before + 2 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            assert tts.refused >= refused_before + 2
            waiting = (await client.get(f"/v1/jobs/{job['id']}")).json()
            assert waiting["status"] in ("queued", "running"), waiting
            tts.max_queue = saved_queue
            held.release()  # spare capacity: the job gets it
            seen = await _wait(client, job["id"])
        stored = await asyncio.to_thread(state.jobs.runner.queue.get, job["id"], any_owner=True)
    finally:
        tts.max_queue = saved_queue
        held.release()
    assert seen[-1]["status"] == "succeeded", seen[-1]
    assert stored is not None and stored.failures == 0
