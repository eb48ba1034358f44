"""docs/settings.md is generated from the settings tree and must not drift from it."""

from __future__ import annotations

from pathlib import Path

from server.settings_doc import settings_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_the_settings_reference_is_up_to_date() -> None:
    assert DOC.read_text() == settings_markdown(), "run `voxline settings > docs/settings.md`"


def test_every_variable_has_a_meaning() -> None:
    rows = [line for line in settings_markdown().splitlines() if line.startswith("| `VOXLINE_")]
    assert len(rows) > 60
    assert all(not line.rstrip().endswith("|  |") for line in rows)
    assert any("VOXLINE_TTS__GPT_SOVITS__POOL_SIZE" in line for line in rows)
    assert any("VOXLINE_LLM__FALLBACK__FIRST_OUTPUT_TIMEOUT_S" in line for line in rows)
