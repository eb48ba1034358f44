"""The edge with real server processes (``voxline serve``) on real state: usage survives
``kill -9``, two servers sharing one real Postgres enforce one rate limit, and the secure
default refuses to expose a server without keys. Also the ``voxline keys`` commands."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from typer.testing import CliRunner

from cli.main import app as cli
from pipeline.settings import StateSettings
from store import KeyLimits, Store

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "x", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 3}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXLINE_STATE__")}
    env.update(
        PYTHONPATH=str(ROOT),
        VOXLINE_DEMO_ENABLED="false",
        VOXLINE_LLM__ENGINE=os.environ.get("VOXLINE_LLM__ENGINE", "transformers"),
        **extra,
    )
    return env


@contextmanager
def serving(
    env: dict[str, str], *, ready: bool = False
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``voxline serve`` in a process of its own; yields its URL once it answers (``ready``:
    once its engines are warm)."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        probe = "/readyz" if ready else "/healthz"
        while True:
            assert process.poll() is None, (
                process.stderr.read().decode()[-2000:] if process.stderr else ""
            )
            try:
                if httpx.get(url + probe, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.25)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_usage_survives_kill_9_right_after_the_answer(tmp_path: Path) -> None:
    state = StateSettings(data_dir=tmp_path)
    with Store.open(state) as store:
        admin = store.keys.create("ops", ["admin"])
        user = store.keys.create("app", ["chat"])
    env = _env(VOXLINE_STATE__DATA_DIR=str(tmp_path))
    with serving(env, ready=True) as (url, process):
        answer = httpx.post(
            url + "/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {user.secret}"},
            timeout=120,
        )
        process.send_signal(signal.SIGKILL)  # the moment the answer arrived
        process.wait()
    assert answer.status_code == 200
    tokens = answer.json()["usage"]["total_tokens"]
    with serving(env) as (url, _):
        usage = httpx.get(
            url + "/v1/usage", headers={"Authorization": f"Bearer {admin.secret}"}, timeout=30
        ).json()
    [entry] = [e for e in usage["by_key"] if e["key_id"] == user.key.id]
    assert entry["total"]["tokens_in"] + entry["total"]["tokens_out"] == tokens
    assert entry["today"] == {
        "requests": 1,
        "tokens": tokens,
        "audio_seconds": 0.0,
        "cost_usd": entry["today"]["cost_usd"],
    }
    assert entry["today"]["cost_usd"] > 0
    assert usage["total"]["charges"] == 1


def test_two_servers_on_one_postgres_enforce_one_rate_limit(postgres_url: str) -> None:
    with Store.open(url=postgres_url) as store:
        key = store.keys.create("shared", ["chat"], KeyLimits(rpm=4))
    env = _env(VOXLINE_STATE__URL=postgres_url)
    auth = {"Authorization": f"Bearer {key.secret}"}
    with serving(env) as (first, _), serving(env) as (second, _):
        statuses = [
            httpx.get(url + "/v1/models", headers=auth, timeout=30).status_code
            for url in (first, second, first, second, first, second)
        ]
        remaining = httpx.get(second + "/v1/models", headers=auth, timeout=30)
    assert statuses == [200, 200, 200, 200, 429, 429]
    assert remaining.status_code == 429
    assert remaining.headers["x-ratelimit-remaining-requests"] == "0"


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    env = _env(VOXLINE_STATE__DATA_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--host", "0.0.0.0", "--port", "9"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "VOXLINE_EDGE__ALLOW_REMOTE_WITHOUT_KEYS" in done.stderr
    assert "voxline keys create" in done.stderr


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"VOXLINE_STATE__DATA_DIR": str(tmp_path)}
    created = runner.invoke(
        cli,
        ["keys", "create", "web", "--scopes", "realtime,admin", "--rpm", "60",
         "--max-sessions", "2", "--usd-per-month", "5.5", "--json"],
        env=env,
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    made = json.loads(created.stdout)
    assert made["key"].startswith("vx-") and made["id"].startswith("key_")
    assert made["scopes"] == ["admin", "realtime"]
    assert made["limits"]["rpm"] == 60 and made["limits"]["usd_per_month"] == 5.5
    plain = runner.invoke(cli, ["keys", "create", "other"], env=env)
    assert plain.exit_code == 0 and plain.stdout.strip().startswith("vx-")
    listed = json.loads(runner.invoke(cli, ["keys", "list", "--json"], env=env).stdout)
    assert [k["name"] for k in listed] == ["web", "other"]
    assert all("key" not in k for k in listed)
    assert made["key"] not in runner.invoke(cli, ["keys", "list"], env=env).stdout
    with Store.open(StateSettings(data_dir=tmp_path)) as store:  # stored hashed: it verifies
        verified = store.keys.verify(made["key"])
        assert verified is not None and verified.id == made["id"]
    revoked = runner.invoke(cli, ["keys", "revoke", made["id"]], env=env)
    assert revoked.exit_code == 0
    assert runner.invoke(cli, ["keys", "revoke", made["id"]], env=env).exit_code == 1
    with Store.open(StateSettings(data_dir=tmp_path)) as store:
        assert store.keys.verify(made["key"]) is None
    bad = runner.invoke(cli, ["keys", "create", "x", "--scopes", "root"], env=env)
    assert bad.exit_code == 2
