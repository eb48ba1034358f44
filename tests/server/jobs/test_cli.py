"""``voxline jobs`` against a live server: submit with a progress bar, status, wait, cancel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app as cli
from pipeline.audio import decode_audio
from pipeline.settings import AudioLimits, JobSettings
from tests.server.conftest import AppFactory, LiveServer, make_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_submit_wait_status_and_cancel(app_factory: AppFactory, tmp_path: Path) -> None:
    runner = CliRunner()
    app = app_factory(make_settings(jobs=JobSettings(poll_interval_s=0.2)))
    out = tmp_path / "speech.wav"
    with LiveServer(app) as server:
        url = ["--url", server.url]
        done = runner.invoke(
            cli,
            [
                "jobs",
                "submit",
                "speech",
                "--text",
                "Hello there. How are you?",
                "--wait",
                "--out",
                str(out),
                *url,
            ],
        )
        assert done.exit_code == 0, done.output
        assert "chunks" in done.stderr  # the progress bar
        listed = runner.invoke(cli, ["jobs", "status", *url])
        jobs = json.loads(listed.stdout)["data"]
        assert [j["status"] for j in jobs] == ["succeeded"]
        shown = runner.invoke(cli, ["jobs", "status", jobs[0]["id"], *url])
        assert json.loads(shown.stdout)["progress"] == 1.0
        late = runner.invoke(cli, ["jobs", "cancel", jobs[0]["id"], *url])
        missing = runner.invoke(cli, ["jobs", "wait", "job_nope", *url])
    clip = decode_audio(out.read_bytes(), sample_rate=16_000, limits=AudioLimits())
    assert clip.duration > 1.0
    assert late.exit_code == 2 and "job_ended" in late.stderr
    assert missing.exit_code == 2 and "not_found" in missing.stderr
