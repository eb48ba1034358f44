"""The shipped spoken sets (``benchmarks/speech``) and how ``--data`` finds them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from benchmarks.data import data_dir, load_dir
from benchmarks.scenarios.endpoint import inner_pause_s
from benchmarks.speech_sets import HELDOUT, PAUSED, ROOT, SETS
from pipeline.settings import AudioLimits
from pipeline.types import AudioChunk


def manifest() -> dict[str, dict[str, str]]:
    with (ROOT / "manifest.tsv").open(encoding="utf-8") as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


def test_every_clip_has_its_text_and_a_manifest_row() -> None:
    rows = manifest()
    for name, folder in SETS.items():
        clips = load_dir(folder, AudioLimits())
        assert len(clips) == len({"heldout": HELDOUT, "pauses": PAUSED}[name]) * (
            2 if name == "heldout" else 4
        )
        for clip in clips:
            row = rows[f"{name}/{clip.name}.flac"]
            assert clip.reference == row["text"]
            assert 1.0 < clip.speech_end_s < clip.audio.duration


@pytest.mark.parametrize("name", ["pauses", "heldout"])
def test_pauses_are_where_the_manifest_says(name: str) -> None:
    rows = manifest()
    for clip in load_dir(SETS[name], AudioLimits()):
        pause_ms = int(rows[f"{name}/{clip.name}.flac"]["pause_ms"])
        measured = inner_pause_s(clip.audio) * 1000
        if name == "heldout":
            assert measured < 250, clip.name  # no pause a turn could end at
        else:  # the silence inserted, plus the quiet edges of the words around it
            assert pause_ms - 20 <= measured <= pause_ms + 250, clip.name


def test_data_names_a_shipped_set_or_a_folder(tmp_path: Path) -> None:
    assert data_dir("heldout") == SETS["heldout"]
    assert data_dir(str(tmp_path)) == tmp_path
    (tmp_path / "heldout").mkdir()  # a folder of that name, where the command runs, wins
    assert data_dir(str(tmp_path / "heldout")) == tmp_path / "heldout"


def test_inner_pause_is_the_longest_silence_between_voiced_frames() -> None:
    rate = 16_000
    tone = (0.5 * np.sin(np.arange(rate // 2) / 3)).astype(np.float32)

    def silence(s: float) -> np.ndarray:
        return np.zeros(int(s * rate), np.float32)

    audio = np.concatenate([silence(0.3), tone, silence(0.2), tone, silence(0.7), tone, silence(1)])
    assert inner_pause_s(AudioChunk(audio, rate)) == pytest.approx(0.7, abs=0.011)
    assert inner_pause_s(AudioChunk(np.concatenate([tone, silence(1)]), rate)) == 0.0
