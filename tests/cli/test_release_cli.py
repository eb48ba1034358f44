"""``voxline release``: what it refuses before any model loads, listing, canaries, rollback.

The gate itself (models, scorecards) runs in ``test_release_server.py``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from cli.release import SERVER_ONLY
from pipeline.knowledge import KnowledgePolicy
from pipeline.settings import KBSettings, StateSettings
from store import Store

runner = CliRunner()


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("VOXLINE_STATE__DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path / "state"


@pytest.fixture
def store(state_dir: Path) -> Iterator[Store]:
    with Store.open(StateSettings(data_dir=state_dir)) as opened:
        yield opened


def _env(tmp_path: Path, text: str) -> str:
    path = tmp_path / "release.env"
    path.write_text(text)
    return str(path)


def test_create_checks_every_line_and_list_shows_the_release(
    state_dir: Path, tmp_path: Path
) -> None:
    bad = runner.invoke(
        app, ["release", "create", "x", "--env", _env(tmp_path, "VOXLINE_LLM__TOPP=1\n")]
    )
    assert bad.exit_code == 2 and "VOXLINE_LLM__TOPP: unknown setting 'TOPP'" in bad.output
    secret = _env(tmp_path, "VOXLINE_LLM__HOSTED__API_KEY=sk-secret123\n")
    refused = runner.invoke(app, ["release", "create", "x", "--env", secret])
    assert refused.exit_code == 2 and "a secret" in refused.output
    server_only = runner.invoke(
        app, ["release", "create", "x", "--env", _env(tmp_path, "VOXLINE_STATE__POOL_SIZE=3\n")]
    )
    assert server_only.exit_code == 2 and "a server setting" in server_only.output
    value = runner.invoke(
        app, ["release", "create", "x", "--env", _env(tmp_path, "VOXLINE_TTS__SPEED=9\n")]
    )
    assert value.exit_code == 2 and "VOXLINE_TTS__SPEED: Input should be less than" in value.output
    assert json.loads(runner.invoke(app, ["release", "list", "--json"]).output)["releases"] == []

    good = _env(tmp_path, "VOXLINE_LLM__SYSTEM_PROMPT='Be brief.'\nVOXLINE_TTS__SPEED=1.1\n")
    made = runner.invoke(app, ["release", "create", "brief", "--env", good, "--description", "d"])
    assert made.exit_code == 0, made.output
    again = runner.invoke(app, ["release", "create", "brief", "--env", good])
    assert again.exit_code == 1 and "immutable" in again.output
    listed = json.loads(runner.invoke(app, ["release", "list", "--json"]).output)
    assert listed["active"] == "settings" and listed["canary"] is None
    (brief,) = listed["releases"]
    assert brief["env"] == {"VOXLINE_LLM__SYSTEM_PROMPT": "Be brief.", "VOXLINE_TTS__SPEED": "1.1"}
    assert (brief["status"], brief["description"], brief["gate"]) == ("candidate", "d", None)
    table = runner.invoke(app, ["release", "list"]).output
    assert "brief" in table and "candidate" in table and "active: settings" in table


def test_a_release_sets_the_retrieval_policy_not_how_the_store_embeds(
    state_dir: Path, tmp_path: Path
) -> None:
    # every kb field is decided: the retrieval policy a turn applies, or the server's
    policy = {f.name for f in dataclasses.fields(KnowledgePolicy)}
    refused = {key.split(".", 1)[1] for key in SERVER_ONLY if key.startswith("kb.")}
    assert policy | refused == set(KBSettings.model_fields) and not policy & refused
    embed = _env(tmp_path, "VOXLINE_KB__EMBEDDING_MODEL=packaged:other\n")
    refused_run = runner.invoke(app, ["release", "create", "x", "--env", embed])
    assert refused_run.exit_code == 2 and "embedding model" in refused_run.output
    good = _env(tmp_path, "VOXLINE_KB__TOP_K=5\nVOXLINE_ROUTER__HARD_WORDS=20\n")
    made = runner.invoke(app, ["release", "create", "knobs", "--env", good])
    assert made.exit_code == 0, made.output


def test_promote_and_rollback_refuse_what_cannot_be_done(store: Store) -> None:
    unknown = runner.invoke(app, ["release", "promote", "nope"])
    assert unknown.exit_code == 2 and "no release 'nope'" in unknown.output
    implicit = runner.invoke(app, ["release", "promote", "settings"])
    assert implicit.exit_code == 2 and "roll back to it" in implicit.output
    nothing = runner.invoke(app, ["release", "rollback"])
    assert nothing.exit_code == 2 and "nothing to roll back to" in nothing.output

    for name in ("a", "b"):
        store.releases.create(name, {}, {})
    store.releases.start_canary("a", 10)
    busy = runner.invoke(app, ["release", "promote", "b"])
    assert busy.exit_code == 2 and "'a' runs as a canary" in busy.output
    percent = runner.invoke(app, ["release", "promote", "a", "--canary", "100"])
    assert percent.exit_code == 2 and "--canary" in percent.output


def test_a_surviving_canary_is_promoted_without_a_second_gate_and_rollback_ends_one(
    store: Store,
) -> None:
    store.releases.create("c", {}, {})
    store.releases.record_gate("c", {"against": "settings", "passed": True})
    store.releases.start_canary("c", 10)
    promoted = runner.invoke(app, ["release", "promote", "c"])
    assert promoted.exit_code == 0, promoted.output
    assert "promoted canary c" in promoted.output
    assert store.releases.pointer().active == "c"
    assert store.releases.require("c").scorecard is None  # no eval ran

    store.releases.create("d", {}, {})
    store.releases.start_canary("d", 20)
    ended = runner.invoke(app, ["release", "rollback", "--reason", "looks off"])
    assert ended.exit_code == 0 and "canary d rolled back" in ended.output
    assert store.releases.pointer().active == "c"
    listed = json.loads(runner.invoke(app, ["release", "list", "--json"]).output)
    d = next(r for r in listed["releases"] if r["name"] == "d")
    assert (d["status"], d["reason"]) == ("rolled_back", "looks off")
    back = runner.invoke(app, ["release", "rollback"])
    assert back.exit_code == 0 and "settings active again (was c)" in back.output
