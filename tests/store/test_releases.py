"""Releases and the active pointer, on SQLite and on the real Postgres."""

from __future__ import annotations

import json
import threading

import pytest

from pipeline.errors import InvalidInput
from store import Conflict, NotFound, Store
from store.release_types import IMPLICIT
from tests.store.conftest import Clock

ENV = {"VOXLINE_LLM__SYSTEM_PROMPT": "Be brief."}
TREE = {"llm": {"system_prompt": "Be brief."}}


def test_a_release_is_stored_immutable_and_listed(store: Store, clock: Clock) -> None:
    made = store.releases.create("terse", ENV, TREE, description="shorter answers")
    assert made.status == "candidate" and made.created_at == clock.now
    clock.advance(1)
    store.releases.create("warm", {"VOXLINE_TTS__SPEED": "0.9"}, {"tts": {"speed": "0.9"}})
    with pytest.raises(Conflict, match="immutable"):
        store.releases.create("terse", {}, {})
    got = store.releases.get("terse")
    assert got is not None and got.env == ENV and got.overrides == TREE
    assert got.description == "shorter answers"
    assert [r.name for r in store.releases.list()] == ["terse", "warm"]
    # the generic documents API sees the same records
    assert store.documents("release").get("warm") is not None
    for bad in ("Upper", "-dash", "", "a" * 64, IMPLICIT):
        with pytest.raises(InvalidInput):
            store.releases.create(bad, {}, {})


def test_promote_and_rollback_move_the_pointer_and_the_statuses(store: Store) -> None:
    assert store.releases.pointer().active == IMPLICIT  # nothing promoted: the own settings
    store.releases.create("a", ENV, TREE)
    store.releases.create("b", ENV, TREE)
    first = store.releases.promote("a")
    assert (first.active, first.previous) == ("a", (IMPLICIT,))
    second = store.releases.promote("b", expect_version=first.version)
    assert (second.active, second.previous) == ("b", (IMPLICIT, "a"))
    assert _statuses(store) == {"a": "retired", "b": "active"}
    with pytest.raises(InvalidInput, match="already active"):
        store.releases.promote("b")

    back = store.releases.rollback(reason="answers got long")
    assert (back.active, back.previous) == ("a", (IMPLICIT,))
    b = store.releases.require("b")
    assert b.status == "rolled_back" and b.reason == "answers got long"
    assert [e["event"] for e in b.history] == ["created", "promoted", "rolled_back"]
    assert store.releases.rollback(reason="again").active == IMPLICIT
    with pytest.raises(InvalidInput, match="nothing to roll back to"):
        store.releases.rollback(reason="once more")
    with pytest.raises(NotFound):
        store.releases.promote("nope")


def test_a_change_from_a_stale_pointer_is_refused(store: Store) -> None:
    store.releases.create("a", ENV, TREE)
    store.releases.create("b", ENV, TREE)
    seen = store.releases.pointer()
    store.releases.promote("a", expect_version=seen.version)
    with pytest.raises(Conflict, match="changed meanwhile"):
        store.releases.promote("b", expect_version=seen.version)  # the gate ran against IMPLICIT
    assert store.releases.pointer().active == "a"


def test_concurrent_promotions_from_one_pointer_version_let_one_win(store: Store) -> None:
    for name in ("a", "b", "c", "d"):
        store.releases.create(name, ENV, TREE)
    seen = store.releases.pointer().version
    outcomes: list[str] = []

    def promote(name: str) -> None:
        try:
            store.releases.promote(name, expect_version=seen)
            outcomes.append(name)
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=promote, args=(n,)) for n in ("a", "b", "c", "d")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o != "conflict"]
    assert len(winners) == 1 and store.releases.pointer().active == winners[0]
    assert store.releases.pointer().previous == (IMPLICIT,)


def test_a_canary_runs_beside_the_active_release_until_promoted_or_ended(
    store: Store, clock: Clock
) -> None:
    store.releases.create("a", ENV, TREE)
    store.releases.create("b", ENV, TREE)
    store.releases.promote("a")
    started = store.releases.start_canary("b", 10)
    assert started.canary is not None and started.canary.percent == 10
    assert started.canary.since == clock.now and started.serving() == ("a", "b")
    with pytest.raises(InvalidInput, match="already runs as a canary"):
        store.releases.start_canary("b", 20)
    with pytest.raises(InvalidInput, match="above 0 and below 100"):
        store.releases.start_canary("b", 100)

    # a replica that read an older pointer cannot end it; the current reader can, once
    assert store.releases.end_canary("b", reason="x", expect_version=started.version - 1) is None
    ended = store.releases.end_canary("b", reason="error rate", expect_version=started.version)
    assert ended is not None and ended.canary is None and ended.active == "a"
    assert store.releases.end_canary("b", reason="twice", expect_version=ended.version) is None
    b = store.releases.require("b")
    assert b.status == "rolled_back" and b.reason == "error rate"

    store.releases.start_canary("b", 50)
    promoted = store.releases.promote("b")
    assert promoted.active == "b" and promoted.canary is None
    assert promoted.previous == (IMPLICIT, "a")


def test_rollback_ends_a_running_canary_first(store: Store) -> None:
    store.releases.create("a", ENV, TREE)
    store.releases.promote("a")
    store.releases.create("b", ENV, TREE)
    store.releases.start_canary("b", 25)
    after = store.releases.rollback(reason="by hand")
    assert after.active == "a" and after.canary is None
    assert store.releases.require("b").status == "rolled_back"


def test_scorecards_are_kept_with_the_release_and_the_implicit_one(store: Store) -> None:
    card = json.dumps({"schema": "voxline.scorecard", "suites": {}}).encode()
    meta = {"suites": ["answers"], "quick": True, "summary": {"answers.contains_match": 0.8}}
    implicit = store.releases.set_scorecard(IMPLICIT, card, meta)
    assert implicit.status == "active" and implicit.overrides == {}
    assert store.releases.scorecard(IMPLICIT) == card
    store.releases.create("a", ENV, TREE)
    store.releases.set_scorecard("a", card, meta)
    newer = card.replace(b"{}", b'{"answers": {}}')
    scored = store.releases.set_scorecard("a", newer, meta)
    assert store.releases.scorecard("a") == newer and scored.scorecard is not None
    assert scored.env == ENV  # what it is made of never changes
    gated = store.releases.record_gate("a", {"against": IMPLICIT, "passed": False})
    assert gated.gate == {"against": IMPLICIT, "passed": False}
    with pytest.raises(NotFound):
        store.releases.set_scorecard("nope", card, meta)


def _statuses(store: Store) -> dict[str, str]:
    return {r.name: r.status for r in store.releases.list()}
