"""Fault isolation across real processes on loopback (issue 4).

Server B is a normal voxline server. Server A's three chains are ``["hosted", "cpu"]`` with the
hosted backends pointing at B, so A's STT, LLM and TTS hosted adapters all talk to a real server.
Then B is stopped mid-session: A's turns must keep completing on its own CPU engines (its first
backend now points at a port where nothing listens). B is started again: A must go back to B by
itself, through its breakers' background probes, without a restart.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import speak

pytestmark = pytest.mark.timeout(600)

STAGES = ("STT", "LLM", "TTS")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXLINE_")}
    env.update(
        HF_HUB_OFFLINE="1",
        VOXLINE_LLM__MAX_TOKENS="16",
        VOXLINE_LLM__ENGINE="transformers",
        VOXLINE_LLM__TEMPERATURE="0",
        VOXLINE_DEMO_ENABLED="false",
        VOXLINE_OBSERVABILITY__LOG_LEVEL="WARNING",
    )
    return env


class Server:
    """``voxline serve`` in a child process."""

    def __init__(self, port: int, env: dict[str, str], log: Path) -> None:
        self.port, self.env, self.log = port, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(self.port)],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )

    def wait_ready(self, timeout_s: float = 240.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"server on {self.port} not ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    logs = tmp_path_factory.mktemp("logs")
    b = Server(_free_port(), _base_env(), logs / "b.log")
    env_a = _base_env()
    for stage in STAGES:
        env_a.update(
            {
                f"VOXLINE_{stage}__CHAIN": '["hosted","cpu"]',
                f"VOXLINE_{stage}__HOSTED__BASE_URL": f"{b.url}/v1",
                f"VOXLINE_{stage}__HOSTED__CONNECT_TIMEOUT_S": "1",
                f"VOXLINE_{stage}__HOSTED__MAX_RETRIES": "0",
                f"VOXLINE_{stage}__FALLBACK__FAILURE_THRESHOLD": "1",
                f"VOXLINE_{stage}__FALLBACK__PROBE_INTERVAL_S": "1",
                f"VOXLINE_{stage}__FALLBACK__PROBE_TIMEOUT_S": "5",
                f"VOXLINE_{stage}__FALLBACK__TRIAL_INTERVAL_S": "3",
            }
        )
    env_a["VOXLINE_TTS__HOSTED__VOICE"] = "alloy"
    a = Server(_free_port(), env_a, logs / "a.log")
    b.start()
    a.start()
    try:
        b.wait_ready()
        a.wait_ready()
        yield a, b
    finally:
        a.stop()
        b.stop()


QUESTION = speak("What is the capital of France?")


def _turn(server: Server) -> dict[str, object]:
    from pipeline.audio import encode_wav

    files = {"file": ("q.wav", encode_wav(QUESTION), "audio/wav")}
    response = httpx.post(f"{server.url}/v1/turns", files=files, timeout=120)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _backends(body: dict[str, object]) -> dict[str, str]:
    backends = body["backends"]
    assert isinstance(backends, dict)
    return {k: str(v) for k, v in backends.items()}


def test_turns_survive_the_primary_dying_and_return_to_it(servers: tuple[Server, Server]) -> None:
    a, b = servers
    healthy = [_turn(a) for _ in range(2)]
    for body in healthy:
        assert all(v.startswith("hosted:") for v in _backends(body).values()), body
        assert body["fallbacks"] == []
        assert "paris" in str(body["reply"]).lower() or body["reply"]

    b.stop()  # the primary dies mid-session: nothing listens on its port any more
    degraded = [_turn(a) for _ in range(4)]  # every turn still completes (status 200 above)
    for body in degraded:
        backends = _backends(body)
        assert backends == {"stt": "whisper:cpu", "llm": "transformers:cpu", "tts": "piper:cpu"}
        assert "france" in str(body["transcript"]).lower()
        audio = body["audio"]
        assert isinstance(audio, dict) and float(audio["seconds"]) > 0.3
    switched = degraded[0]["fallbacks"]
    assert isinstance(switched, list)
    assert {f["stage"] for f in switched} == {"stt", "llm", "tts"}
    assert all(f["to_backend"] is not None for f in switched)
    # later turns switch too (skipped while a breaker is open, or a refused trial call)
    for body in degraded[1:]:
        later = body["fallbacks"]
        assert isinstance(later, list) and later
        assert all(f["from_backend"].startswith("hosted:") for f in later)
        assert {f["reason"] for f in later} <= {"circuit_open", "error"}

    b.start()  # the primary comes back: A returns to it by itself, no restart
    b.wait_ready()
    deadline = time.monotonic() + 60
    recovered = None
    while time.monotonic() < deadline:
        body = _turn(a)
        if all(v.startswith("hosted:") for v in _backends(body).values()):
            recovered = body
            break
        time.sleep(1)
    assert recovered is not None, "A did not go back to B within 60 s"

    def total(body: dict[str, object]) -> float:
        timings = body["timings"]
        assert isinstance(timings, dict)
        return float(timings["total_ms"])

    print(
        "\nfallback report: healthy turn total ms",
        [round(total(x)) for x in healthy],
        "| first turn after B died",
        round(total(degraded[0])),
        "| later degraded turns",
        [round(total(x)) for x in degraded[1:]],
        "| p50 added by the switch",
        round(total(degraded[0]) - statistics.median(total(x) for x in degraded[1:])),
    )
