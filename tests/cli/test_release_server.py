"""Issue 14's "done when", end to end: a real ``voxline serve`` process on a free port with the
packaged models, and the real ``voxline release`` commands in processes of their own, sharing one
state store.

- A candidate whose system prompt makes the answers wrong is refused by ``promote``, which names
  the answer metrics; the server stays on its release.
- A good candidate passes the gate and is promoted; the server follows within 5 s (the issue's
  contract; it polls every 0.5 s here), new turns and sessions get it, and a session that was
  open before keeps the release it started with.
- ``rollback`` restores the previous release, followed within 5 s too.
- A canary that passes the gate but fails live (its TTS endpoint is down) is rolled back by the
  server, with the reason shown by ``release list``.

The gate runs the answers suite on five golden questions the default model answers right (the
items are copied from ``benchmarks/golden``), so the test stays CI-sized. SmolLM2-135M ignores
instructions such as "always answer with one random word" (the answers stay right), but it
follows examples: the bad candidate's system prompt holds three earlier turns, in SmolLM2's own
chat format, answered "Banana.", and every answer becomes "Banana.".
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.configs import ConfigSpec
from benchmarks.server_proc import local_server
from client.realtime import RealtimeClient
from tests.server.conftest import spoken_wav

GOLDEN_IDS = ("qa01", "qa14", "qa18", "qa25", "qa30")
"""Questions SmolLM2-135M answers right with the default prompt (and the good one)."""

FOLLOW_WITHIN_S = 5.0
"""Issue 14: a running server follows a promotion or rollback within 5 s."""

BAD_PROMPT = (
    "You are a voice assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of Italy?<|im_end|>\n<|im_start|>assistant\nBanana."
    "<|im_end|>\n<|im_start|>user\nHow many legs does a spider have?<|im_end|>\n"
    "<|im_start|>assistant\nBanana.<|im_end|>\n<|im_start|>user\nWho painted the Mona Lisa?"
    "<|im_end|>\n<|im_start|>assistant\nBanana."
)
GOOD_PROMPT = "You are a friendly voice assistant. Answer in one or two short spoken sentences."


def _golden(root: Path) -> Path:
    source = Path(__file__).resolve().parents[2] / "benchmarks" / "golden" / "answers" / "qa.jsonl"
    items = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    chosen = [{**item, "quick": True} for item in items if item["id"] in GOLDEN_IDS]
    assert len(chosen) == len(GOLDEN_IDS)
    (root / "answers").mkdir(parents=True)
    (root / "answers" / "qa.jsonl").write_text("".join(json.dumps(i) + "\n" for i in chosen))
    return root


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens on it once closed


class Voxline:
    """The ``voxline`` command, run as its own process with the test's environment (waited on
    in a thread: the realtime session open meanwhile must keep answering the server's pings)."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd

    @property
    def state_env(self) -> dict[str, str]:
        """The variables naming the commands' state store."""
        return {k: v for k, v in self.env.items() if k.startswith("VOXLINE_STATE__")}

    async def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "cli", *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    async def create(self, name: str, lines: dict[str, str], folder: Path) -> None:
        env_file = folder / f"{name}.env"
        env_file.write_text("".join(f"{k}={json.dumps(v)}\n" for k, v in lines.items()))
        done = await self("release", "create", name, "--env", str(env_file))
        assert done.returncode == 0, done.stderr


async def _release(http: httpx.AsyncClient) -> str:
    models = (await http.get("/v1/models")).json()
    release: str = models["voxline"]["release"]["active"]
    assert {m["release"] for m in models["data"]} == {release}
    return release


async def _followed(http: httpx.AsyncClient, name: str, since: float) -> float:
    """Seconds from ``since`` until ``/v1/models`` names ``name`` (polled every 50 ms)."""
    while (await _release(http)) != name:
        assert time.monotonic() - since < FOLLOW_WITHIN_S, f"the server did not follow {name}"
        await asyncio.sleep(0.05)
    return time.monotonic() - since


async def _ask(rt: RealtimeClient, text: str) -> dict[str, Any]:
    """A typed question in a realtime session; its ``response.done`` response."""
    await rt.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            },
        }
    )
    await rt.send({"type": "response.create"})
    deadline = time.monotonic() + 120  # only guards against a hang
    while time.monotonic() < deadline and not rt.closed:
        for received in await rt.receive_for(1.0):
            if received.type == "response.done":
                response: dict[str, Any] = received.event["response"]
                return response
    raise AssertionError("no response.done" + (": the session was closed" if rt.closed else ""))


async def _turn(http: httpx.AsyncClient, question: bytes) -> httpx.Response:
    return await http.post("/v1/turns", files={"file": ("q.wav", question, "audio/wav")})


@pytest.mark.timeout(1500)
async def test_the_gate_refuses_a_bad_prompt_promotes_a_good_one_and_servers_follow(
    tmp_path: Path,
) -> None:
    golden = _golden(tmp_path / "golden")
    overrides = {
        "state": {"data_dir": str(tmp_path / "state")},
        "release": {
            "poll_interval_s": "0.5",
            "gate_suites": "answers",
            "golden_dir": str(golden),
            "canary_min_turns": "2",
        },
        "demo_enabled": "false",
    }
    config = ConfigSpec("release-test", None, overrides)
    # COLUMNS: rich wraps its lines at 80 columns when not on a terminal
    voxline = Voxline({**os.environ, **config.environ(), "COLUMNS": "200"}, tmp_path)
    assert voxline.state_env["VOXLINE_STATE__DATA_DIR"] == str(tmp_path / "state")
    question = spoken_wav("What is the capital of Japan?")

    async with (
        # the server on the commands' store (local_server gives a server one of its own)
        local_server(config, tmp_path / "server.log", extra_env=voxline.state_env) as server,
        httpx.AsyncClient(base_url=server.url, timeout=120) as http,
    ):
        assert await _release(http) == "settings"
        async with RealtimeClient(server.url) as before:  # open across every change below
            assert before.created is not None
            assert before.created["session"]["voxline"]["release"] == "settings"

            # 1. the bad candidate: refused, the answer metrics named, the server unmoved
            await voxline.create("banana", {"VOXLINE_LLM__SYSTEM_PROMPT": BAD_PROMPT}, tmp_path)
            refused = await voxline("release", "promote", "banana", "--out", str(tmp_path / "gate"))
            assert refused.returncode == 1, refused.stderr
            assert "regression: answers.contains_match: 1.000 -> 0.000" in refused.stderr
            assert "regression: answers.semantic_match" in refused.stderr
            assert "the gate refused banana" in refused.stderr
            await asyncio.sleep(1.5)  # three polls
            assert await _release(http) == "settings"

            # 2. the good candidate: promoted, followed within 5 s
            await voxline.create("friendly", {"VOXLINE_LLM__SYSTEM_PROMPT": GOOD_PROMPT}, tmp_path)
            promoted = await voxline(
                "release", "promote", "friendly", "--out", str(tmp_path / "gate")
            )
            assert promoted.returncode == 0, promoted.stderr
            assert "baseline: the stored scorecard of settings" in promoted.stderr
            assert "promoted friendly" in promoted.stderr
            await _followed(http, "friendly", time.monotonic())
            turn = await _turn(http, question)
            assert turn.status_code == 200, turn.text
            assert turn.json()["release"] == "friendly" and "Tokyo" in turn.json()["reply"]
            async with RealtimeClient(server.url) as after:
                done = await _ask(after, "What is the capital of Canada?")
                assert done["status"] == "completed" and done["voxline"]["release"] == "friendly"
            # the session opened before the promotion is still there, on its release
            kept = await _ask(before, "What is the capital of Canada?")
            assert kept["status"] == "completed" and kept["voxline"]["release"] == "settings"

        # 3. rollback: back to the server's own settings, followed within 5 s
        back = await voxline("release", "rollback", "--reason", "checking rollback")
        assert back.returncode == 0, back.stderr
        await _followed(http, "settings", time.monotonic())
        turn = await _turn(http, question)
        assert turn.status_code == 200 and turn.json()["release"] == "settings"

        # 4. a canary whose TTS is down: it passes the gate (answers only) but fails live
        down = {
            "VOXLINE_TTS__ENGINE": "hosted",
            "VOXLINE_TTS__HOSTED__BASE_URL": f"http://127.0.0.1:{_closed_port()}/v1",
            "VOXLINE_TTS__HOSTED__MAX_RETRIES": "0",
        }
        await voxline.create("tts-down", down, tmp_path)
        canary = await voxline("release", "promote", "tts-down", "--canary", "50")
        assert canary.returncode == 0, canary.stderr
        deadline = time.monotonic() + FOLLOW_WITHIN_S
        while (await http.get("/readyz")).json()["release"]["canary"] != "tts-down":
            assert time.monotonic() < deadline, "the server did not start the canary"
            await asyncio.sleep(0.05)
        statuses = [(await _turn(http, question)).status_code for _ in range(4)]
        assert sorted(statuses) == [200, 200, 503, 503]  # every other turn, evenly
        deadline = time.monotonic() + FOLLOW_WITHIN_S
        while (await http.get("/readyz")).json()["release"]["canary"] is not None:
            assert time.monotonic() < deadline, "the canary was not rolled back"
            await asyncio.sleep(0.05)
        listed = await voxline("release", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        releases = {r["name"]: r for r in json.loads(listed.stdout)["releases"]}
        assert releases["tts-down"]["status"] == "rolled_back"
        assert releases["tts-down"]["reason"].startswith(
            "canary rolled back automatically: error rate 1.00 vs 0.00"
        )
        assert releases["banana"]["gate"]["passed"] is False
        assert releases["friendly"]["status"] == "rolled_back"
        assert releases["friendly"]["reason"] == "checking rollback"
        table = await voxline("release", "list")
        assert "tts-down" in table.stdout and "rolled_back" in table.stdout
        metrics = (await http.get("/metrics")).text
        assert 'voxline_turns_total{fallback="false",outcome="failed",release="tts-down"} 2.0' in (
            metrics
        )
    lines = [
        json.loads(x) for x in (tmp_path / "server.log").read_text().splitlines() if x[:1] == "{"
    ]
    turns = {(x.get("release"), x["status"]) for x in lines if x.get("route") == "/v1/turns"}
    assert {("friendly", 200), ("settings", 200), ("tts-down", 503)} <= turns  # access lines
