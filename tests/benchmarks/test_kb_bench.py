"""The knowledge-base benchmark pieces: the synthetic 10,000-chunk corpus, the server settings
hand-over of the rag factory, and the rag suite's turn metrics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.eval.kb_server import settings_environ
from benchmarks.eval.suites.rag import GroundedAnswer, turn_metrics
from benchmarks.scenarios.retrieval import CHUNKS, FILES, corpus_file, section
from models.doc_text import extract_text
from pipeline.chunking import chunk_text
from pipeline.settings import KBSettings, LLMSettings, Settings


def test_the_synthetic_corpus_is_exactly_one_chunk_per_section() -> None:
    assert section(7) == section(7) and section(7) != section(8)
    text = extract_text(corpus_file(3), "synthetic-3.md")
    chunks = chunk_text(text, max_tokens=KBSettings().chunk_tokens)
    assert len(chunks) == CHUNKS // FILES
    assert chunks[0].heading == f"Topic {3 * CHUNKS // FILES}"


def test_a_server_gets_exactly_the_eval_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wanted = Settings(
        _env_file=None,  # type: ignore[call-arg]
        llm=LLMSettings(max_tokens=33, chain=["cpu", "hosted"]),
        kb=KBSettings(top_k=7),
        cache_dir=tmp_path,
    )
    for name in [k for k in os.environ if k.startswith("VOXLINE_")]:
        monkeypatch.delenv(name)
    for name, value in settings_environ(wanted).items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == wanted  # type: ignore[call-arg]


def test_turn_metrics_summarize_v2v_and_cost() -> None:
    answers = [
        GroundedAnswer("a", v2v_ms=float(ms), cost_usd=0.001) for ms in range(100, 1100, 100)
    ]
    metrics = turn_metrics([*answers, GroundedAnswer("b")])
    assert metrics["v2v_p50_ms"].value == 550.0 and metrics["v2v_p50_ms"].n == 10
    assert metrics["v2v_p95_ms"].value == pytest.approx(955.0)
    assert metrics["cost_per_turn_usd"].value == pytest.approx(0.001)
    assert turn_metrics([GroundedAnswer("c")]) == {}
