"""``voxline kb add/list/search`` on a state store of its own (real embedding model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

CORPUS = Path(__file__).parents[1] / "benchmarks" / "golden" / "kb" / "corpus" / "tarvo-aero5"


def test_add_creates_the_store_by_name_and_search_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXLINE_STATE__DATA_DIR", str(tmp_path))
    runner = CliRunner()
    added = runner.invoke(app, ["kb", "add", "aero", str(CORPUS / "manual.md"), str(CORPUS)])
    assert added.exit_code == 0, added.output
    listed = runner.invoke(app, ["kb", "list", "--json"])
    (store,) = json.loads(listed.stdout)
    assert store["name"] == "aero" and store["files"] == 5 and store["chunks"] > 10
    again = runner.invoke(app, ["kb", "add", store["id"], str(CORPUS / "warranty.txt")])
    assert again.exit_code == 0
    assert json.loads(runner.invoke(app, ["kb", "list", "--json"]).stdout)[0]["files"] == 6
    found = runner.invoke(app, ["kb", "search", "aero", "How long is the warranty?", "-k", "1"])
    assert found.exit_code == 0 and "warranty.txt" in found.stdout


def test_a_bad_file_fails_the_command_and_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXLINE_STATE__DATA_DIR", str(tmp_path))
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"not a pdf")
    result = CliRunner().invoke(app, ["kb", "add", "aero", str(bad)])
    assert result.exit_code == 1 and "bad.pdf" in result.output
    missing = CliRunner().invoke(app, ["kb", "add", "aero", str(tmp_path / "nope.md")])
    assert missing.exit_code == 2
