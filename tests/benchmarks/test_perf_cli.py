"""``voxline bench endpoint`` and ``voxline bench phrasing`` end to end on the real default
models (Silero VAD, Whisper, the LLM, Piper), as ``test_cli.py`` runs ``turn``.

Only what the audio and the replay fix is asserted: the clips' pauses are exact silence in the
audio, so where the fixed silence ends a turn does not depend on the machine's speed; how soon
the smart turn end decides does (its transcript runs on the real clock), so only its shape is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from benchmarks.speech_sets import SETS
from cli.main import app

runner = CliRunner()
QUICK = ["--quick", "--warmup", "0", "--no-plots"]


def test_endpoint_on_a_paused_and_a_complete_clip(tmp_path: Path) -> None:
    data = tmp_path / "clips"
    data.mkdir()
    # a 1100 ms pause after "and" (manifest.tsv), and a question spoken without one
    for folder, name in (("pauses", "piper-joe_03"), ("heldout", "piper-joe-slow_01")):
        for suffix in (".flac", ".txt"):
            shutil.copy(SETS[folder] / f"{name}{suffix}", data / f"{folder}-{name}{suffix}")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["bench", "endpoint", *QUICK, "--data", str(data), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    metrics, details = results["scenarios"]["endpoint"], results["details"]["endpoint"]
    clips = details["clips"]
    assert clips["heldout-piper-joe-slow_01"]["inner_pause"] is False
    paused = clips["pauses-piper-joe_03"]
    assert paused["inner_pause"] is True
    # 1100 ms of silence is longer than the fixed 400 ms: the fixed silence ended a turn there
    assert paused["fixed"]["false_end"] is True and paused["fixed"]["turns"] == 2
    assert details["false_end_rates"]["fixed_false_end_paused"] == 1.0
    assert details["false_end_rates"]["fixed_false_end"] == 0.5  # the complete question did not
    for mode in ("fixed", "smart"):
        assert metrics[f"{mode}_endpoint_ms"]["n"] == 2  # every clip's last turn ended
        assert metrics[f"{mode}_endpoint_complete_ms"]["n"] == 1
        assert metrics[f"{mode}_false_end_paused"]["n"] == 1
        for clip in clips.values():
            outcome = clip[mode]
            assert outcome["ready_ms"] >= outcome["endpoint_ms"] > 0
    # the fixed silence cannot decide before 400 ms of silence reached the server (real-time pace)
    assert clips["heldout-piper-joe-slow_01"]["fixed"]["endpoint_ms"] >= 350
    # the smart turn end judged what it heard of the whole paused request
    heard = paused["smart"]["heard"]
    assert heard and all(v in {"complete", "incomplete", "unclear"} for _, _, v in heard)
    report = (out / "report.md").read_text()
    assert "endpoint fixed: delay p50 / p95 ms, false ends (paused)" in report
    assert "endpoint smart: delay p50 / p95 ms, false ends (paused)" in report


def test_phrasing_replays_one_reply_for_every_candidate(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["bench", "phrasing", *QUICK, "--limit", "1", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    metrics, details = results["scenarios"]["phrasing"], results["details"]["phrasing"]
    assert details["configured"] == {"first_phrase_max_words": 4}
    assert [row["candidate"] for row in details["table"]] == ["w0", "w3", "w4", "w5", "w6", "w8"]
    (said,) = details["first_phrases"].values()
    # one reply, cut by each candidate: the shorter cuts are prefixes of the longer ones
    assert said["w0"].startswith(said["w3"]) and said["w6"].startswith(said["w4"])
    assert said["w4"].split() == said["w0"].split()[: len(said["w4"].split())]
    assert len(said["w4"].split()) <= 4 + 3  # up to three words late, after a weak word
    assert metrics["cut_natural_w0"]["p50"] == 1.0  # punctuation only: always a natural cut
    for label in said:
        first, tts = metrics[f"first_phrase_ms_{label}"], metrics[f"tts_first_audio_ms_{label}"]
        assert metrics[f"first_audio_ms_{label}"]["p50"] == round(first["p50"] + tts["p50"], 1)
        assert tts["p50"] > 0 and metrics[f"tts_chunks_{label}"]["p50"] >= 1
    # the LLM's first phrase comes no later with a shorter cut
    assert metrics["first_phrase_ms_w4"]["p50"] <= metrics["first_phrase_ms_w0"]["p50"]
