"""Chunks keep to headings and sentences, overlap by whole sentences, and stay in budget."""

from __future__ import annotations

import itertools

import pytest

from pipeline.chunking import chunk_text, estimate_tokens, sentences
from pipeline.errors import InvalidInput

DOC = """# Manual

Intro sentence one. Intro sentence two.

## Filter

Replace the filter every 6 months. The indicator turns red when it is due.
Open the bottom cover to reach it.

## Wi-Fi

- Only 2.4 GHz networks work.
- 5 GHz networks are not supported.
"""


def test_headings_bound_chunks_and_lead_them() -> None:
    chunks = chunk_text(DOC, max_tokens=100, overlap_tokens=10)
    assert [c.heading for c in chunks] == ["Manual", "Manual > Filter", "Manual > Wi-Fi"]
    assert chunks[1].text.startswith("Manual > Filter\nReplace the filter every 6 months.")
    assert "Wi-Fi" not in chunks[1].text and "Intro" not in chunks[1].text
    # list items keep their own lines
    assert chunks[2].text.endswith(
        "- Only 2.4 GHz networks work.\n- 5 GHz networks are not supported."
    )
    assert [c.index for c in chunks] == [0, 1, 2]


def test_sentences_are_never_cut_and_neighbours_overlap() -> None:
    body = " ".join(f"Sentence number {n} says a fact about item {n}." for n in range(40))
    chunks = chunk_text(body, max_tokens=40, overlap_tokens=12)
    assert len(chunks) > 5
    said = sentences(body)
    for chunk in chunks:
        assert estimate_tokens(chunk.text) <= 40
        parts = sentences(chunk.text)
        assert all(p in said for p in parts)  # whole sentences only
    for a, b in itertools.pairwise(chunks):
        assert sentences(a.text)[-1] == sentences(b.text)[0]  # one sentence of overlap
    assert {s for c in chunks for s in sentences(c.text)} == set(said)  # nothing lost


def test_a_sentence_longer_than_a_chunk_is_split_at_words() -> None:
    long = "word " * 200 + "end."
    chunks = chunk_text(long, max_tokens=50, overlap_tokens=0)
    assert len(chunks) >= 4 and all(c.tokens <= 50 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == long.split()


def test_sizes_are_checked() -> None:
    with pytest.raises(InvalidInput):
        chunk_text(DOC, max_tokens=8)
    with pytest.raises(InvalidInput):
        chunk_text(DOC, max_tokens=100, overlap_tokens=60)
    assert chunk_text("", max_tokens=100) == []
