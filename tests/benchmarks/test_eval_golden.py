"""The golden sets in the repository are whole: every file decodes, every quote is in its file,
every condition keeps an item in the quick subset, and the digest sees a change."""

from __future__ import annotations

import html
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.data import QUESTIONS
from benchmarks.eval.golden import Golden, load_audio_16k
from benchmarks.eval.scoring import normalize_answer
from pipeline.errors import InvalidInput

GOLDEN = Golden()


def test_stt_clips_decode_and_are_mostly_held_out() -> None:
    clips = GOLDEN.stt()
    assert len(clips) >= 150 and len({c.id for c in clips}) == len(clips)
    for clip in clips:
        audio = load_audio_16k(clip.audio)
        assert 0.8 < audio.duration < 12, clip.id
        assert audio.samples.std() > 0.005, clip.id
    builtin = {normalize_answer(q) for q in QUESTIONS}
    assert not builtin & {normalize_answer(c.text) for c in clips}
    real = [c for c in clips if "real" in c.conditions]
    assert len(real) >= 10


def test_every_condition_has_a_quick_item_and_a_clean_reference() -> None:
    conditions = Counter(c for clip in GOLDEN.stt() for c in clip.conditions)
    quick = Counter(c for clip in GOLDEN.stt(quick=True) for c in clip.conditions)
    assert set(quick) == set(conditions)
    for facet in ("voice=", "speed=", "noise="):
        assert sum(c.startswith(facet) for c in conditions) >= 3, facet
    assert {"noise=clean", "speed=1", "real", "synthetic"} <= set(conditions)
    assert conditions["noise=clean"] == conditions["noise=pink-10db"]  # same sentences


def _plain(path: Path) -> str:
    if path.suffix == ".pdf":  # the PDF is typeset from a groff source kept beside the corpus
        source = GOLDEN.root / "kb" / "sources" / (path.stem + ".ms")
        text = " ".join(ln for ln in source.read_text().splitlines() if not ln.startswith("."))
    elif path.suffix == ".html":
        text = html.unescape(re.sub(r"<[^>]+>", " ", path.read_text()))
    else:
        text = path.read_text()
    return " ".join(text.split())


def test_kb_questions_cite_quotes_that_are_in_their_files() -> None:
    questions = GOLDEN.kb_questions()
    assert len(questions) >= 30
    answerable = [q for q in questions if q.answerable]
    unanswerable = [q for q in questions if not q.answerable]
    assert len(unanswerable) >= 5 and all(not q.support for q in unanswerable)
    for q in answerable:
        assert q.support and q.answers and q.reference, q.id
        for s in q.support:
            assert s.quote in _plain(GOLDEN.corpus / s.file), (q.id, s.quote)
    files = {s.file for q in answerable for s in q.support}
    suffixes = {Path(f).suffix for f in files}
    assert suffixes == {".md", ".html", ".txt", ".pdf"}
    assert (GOLDEN.corpus / "tarvo-aero5" / "safety.pdf").read_bytes()[:5] == b"%PDF-"
    for q in questions:
        assert 1.0 < load_audio_16k(q.audio).duration < 8, q.id
    quick = GOLDEN.kb_questions(quick=True)
    assert {q.answerable for q in quick} == {True, False}


def test_answer_and_tts_sets_and_budgets_load() -> None:
    pairs = GOLDEN.answers()
    assert len(pairs) >= 30 and all(p.reference and p.answer for p in pairs)
    assert not {normalize_answer(q) for q in QUESTIONS} & {
        normalize_answer(p.question) for p in pairs
    }
    assert 0 < len(GOLDEN.answers(quick=True)) < len(pairs)
    assert len(GOLDEN.tts()) >= 15 and GOLDEN.tts(quick=True)
    budgets = GOLDEN.latency_budgets()["budgets"]
    assert budgets["v2v_ms"] == {"p50": 450, "p95": 700}
    per_stage = ("endpoint_ms", "stt_ms", "first_phrase_ms", "tts_ttfb_ms")
    assert sum(budgets[m]["p50"] for m in per_stage) <= budgets["v2v_ms"]["p50"]


def test_the_digest_changes_with_any_data_file(tmp_path: Path) -> None:
    copy = Golden(tmp_path / "golden")
    shutil.copytree(GOLDEN.root, copy.root)
    assert copy.digest() == GOLDEN.digest()
    (copy.root / "answers" / "qa.jsonl").write_text(
        (copy.root / "answers" / "qa.jsonl").read_text().replace("Tokyo", "Kyoto")
    )
    assert copy.digest() != GOLDEN.digest()


def test_a_broken_manifest_is_invalid_input_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "answers").mkdir()
    good = '{"id": "q", "question": "Q?", "answer": "A", "reference": "A."}'
    (tmp_path / "answers" / "qa.jsonl").write_text(good + "\nnot json\n")
    with pytest.raises(InvalidInput, match=r"qa\.jsonl:2"):
        Golden(tmp_path).answers()
    (tmp_path / "answers" / "qa.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(InvalidInput, match=r"qa\.jsonl:1: missing field 'question'"):
        Golden(tmp_path).answers()
    with pytest.raises(InvalidInput, match="cannot read"):
        Golden(tmp_path).stt()
