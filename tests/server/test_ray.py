"""voxline on a real local Ray cluster (loopback, 2 CPUs): the stages as Serve deployments, the
API as their ingress (HTTP and the realtime WebSocket), job chunks as Ray tasks, and a turn
that completes while the STT replica serving it is killed (``kill -9``) mid-turn.

The cluster is started once for the module (about 35 s on 2 cores: Ray, then every replica
loading its engine). Skipped when ``ray[serve]`` (the ``ray`` extra) is not installed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from benchmarks.longform import build_recording
from benchmarks.stats import wer
from client.jobs import JobsClient
from client.realtime import RealtimeClient
from pipeline.audio import encode_wav
from pipeline.settings import (
    FallbackSettings,
    JobSettings,
    RaySettings,
    RayStageSettings,
    Settings,
    StateSettings,
)
from tests.conftest import speak

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
# The cluster's start (Ray, Serve, five replicas each loading its engine) is part of the first
# test: about 35 s on two quiet cores, over 300 s on two cores shared with two busy loops.
pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

QUESTION = (
    "I would like to know which city is the capital of France, and also how many people "
    "live there today, if you happen to know it."
)
# A turn whose transcription takes long enough (about 20 s of speech: several hundred ms of
# decoding even in the short window) for the test to see its replica start and kill it mid-way.
LONG_QUESTION = (
    "Good morning. My family is planning a trip to Europe next spring, and we have been reading "
    "travel guides for weeks. We want to visit museums, walk along the rivers and try the local "
    "food in every town we pass through. " + QUESTION
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """voxline deployed on a fresh local Ray cluster; yields the ingress URL."""
    from server.ray_serve import application

    # Serve's controller gives its HTTP proxy 5 s to report ready and 10 s per health check, then
    # kills it; on two busy cores the proxy's imports alone take longer. The cluster's processes
    # inherit these from this one (raylet → workers).
    for name in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
        os.environ.setdefault(name, "60")
    ray.init(num_cpus=2, include_dashboard=False, namespace="voxline-test", log_to_driver=False)
    port = _free_port()
    small = RayStageSettings(num_cpus=0.25)
    # The test checks where work runs and that a killed replica is survived, not speed: a replica
    # sharing busy cores may take longer than the default 10 s to its first output.
    patient = {"fallback": FallbackSettings(first_output_timeout_s=60, gap_timeout_s=60)}
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]  # pydantic-settings keyword
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]  # pydantic-settings keyword
        demo_enabled=False,
        stt=defaults.stt.model_copy(update=patient),
        llm=defaults.llm.model_copy(update=patient),
        tts=defaults.tts.model_copy(update=patient),
        state=StateSettings(data_dir=Path(tempfile.mkdtemp(prefix="vx-ray-"))),
        jobs=JobSettings(chunk_seconds=12, min_chunk_seconds=5, poll_interval_s=0.2),
        ray=RaySettings(
            stt=small.model_copy(update={"num_replicas": 2}), llm=small, tts=small, ingress=small
        ),
    )
    try:
        _deploy(application(settings, address="auto"), port)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the ingress never got ready"
            time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def _deploy(app: Any, port: int, attempts: int = 2) -> None:
    """Start Serve and the app; once more after a failed start (a proxy that missed even the
    raised readiness limits: the cluster's start, not voxline's deployment; docs/ray.md)."""
    for attempt in range(attempts):
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(app, name="voxline", route_prefix="/")
            return
        except (ray.exceptions.RayError, RuntimeError):
            if attempt == attempts - 1:
                raise
            serve.shutdown()


def _stt_replicas() -> list[psutil.Process]:
    """The STT replicas' processes (children of the cluster this test started)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "VoxlineSTT" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def test_the_api_runs_its_stages_on_ray_deployments(cluster: str) -> None:
    ready = httpx.get(f"{cluster}/readyz").json()
    assert {s["chain"] for s in ready["stages"].values()} == {"ray"}
    wav = (Path(__file__).parents[1] / "data" / "arctic_a0007.wav").read_bytes()
    text = httpx.post(
        f"{cluster}/v1/audio/transcriptions",
        data={"model": "whisper-1"},
        files={"file": ("a.wav", wav, "audio/wav")},
        timeout=120,
    ).json()["text"]
    assert wer("And you always want to see it in the superlative degree.", text) < 0.2
    assert len(_stt_replicas()) == 2


def test_a_realtime_session_runs_through_the_ingress(cluster: str) -> None:
    async def session() -> list[str]:
        async with RealtimeClient(cluster, connect_timeout_s=60) as rt:
            await rt.update_session(instructions="Answer in a few words.")
            frames = rt.frames(rt.pcm(speak("What is the capital of France?")))
            received = []
            async for tick in rt.stream_frames([*frames, *[rt.silence()] * 40]):
                received += tick.events
            deadline = time.monotonic() + 120
            while "response.done" not in {r.type for r in received}:
                assert time.monotonic() < deadline and not rt.closed, [r.type for r in received]
                received += await rt.receive_for(1.0)
            return [r.type for r in received]

    types = asyncio.run(session())
    assert "conversation.item.input_audio_transcription.completed" in types
    assert "response.output_audio.delta" in types


def test_job_chunks_run_as_ray_tasks(cluster: str, tmp_path: Path) -> None:
    recording, pieces = build_recording(30.0, seed=5)
    path = tmp_path / "talk.wav"
    path.write_bytes(encode_wav(recording))
    with JobsClient(cluster) as client:
        job = client.submit("transcription", file=path)
        done = client.wait(job["id"], timeout_s=300, poll_s=0.3)
        text = client.result(job["id"], format="text").decode()
    assert done["status"] == "succeeded", done
    assert done["chunks"]["total"] >= 2
    assert wer(" ".join(p.text for p in pieces), text) < 0.15


def test_a_turn_completes_while_its_stt_replica_is_killed(cluster: str) -> None:
    audio = encode_wav(speak(LONG_QUESTION))
    replicas = _stt_replicas()
    assert len(replicas) == 2
    before = {p.pid: p.cpu_times().user + p.cpu_times().system for p in replicas}
    answer: dict[str, Any] = {}

    def turn() -> None:
        try:
            answer["response"] = httpx.post(
                f"{cluster}/v1/turns", files={"file": ("q.wav", audio, "audio/wav")}, timeout=300
            )
        except httpx.HTTPError as exc:  # said below, not lost in the thread
            answer["error"] = exc

    thread = threading.Thread(target=turn)
    thread.start()
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline:  # the replica that is transcribing
        time.sleep(0.01)
        for proc in replicas:
            busy = proc.cpu_times().user + proc.cpu_times().system - before[proc.pid]
            if busy > 0.1:
                os.kill(proc.pid, signal.SIGKILL)
                killed = proc.pid
                break
    thread.join(timeout=300)
    assert killed is not None, "no STT replica started transcribing"
    assert "response" in answer, f"the turn got no answer: {answer.get('error')!r}"
    response = answer["response"]
    assert response.status_code == 200, response.text
    result = response.json()
    assert "capital" in result["transcript"].lower() and result["reply"].strip()
    switched = [f for f in result["fallbacks"] if f["stage"] == "stt"]
    assert switched and switched[0]["reason"] == "error", result["fallbacks"]
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == "zombie"
