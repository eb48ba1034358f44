"""Chunk sizes and the relevance threshold, measured on the golden knowledge-base questions.

``python -m benchmarks.eval.chunk_sizes`` chunks the golden corpus (``benchmarks/golden/kb``) at
several sizes and overlaps exactly as the knowledge base does (``models.doc_text`` +
``pipeline.chunking``), embeds the chunks and the 40 questions with the knowledge base's model,
and reports per configuration:

- ``recall@1`` / ``recall@3``: answerable questions with a chunk in the top 1 / 3 that is from
  the right file and holds the golden quote (``scoring.quote_supported``, as the rag suite
  scores citations);
- ``mrr``: mean reciprocal rank of the first such chunk (within the top 10);
- the best-score separation of answerable from unanswerable questions: the threshold that
  maximizes balanced accuracy, and the share of each side it classifies right.

No LLM is involved: this is retrieval alone, in a couple of minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.eval.golden import GOLDEN_DIR, Golden, KbQuestion
from benchmarks.eval.scoring import quote_supported
from models.doc_text import KINDS, extract_text
from models.embed_minilm import MiniLMEmbedder
from pipeline.chunking import chunk_text


@dataclass(frozen=True, slots=True)
class Row:
    """One configuration's retrieval quality."""

    max_tokens: int
    overlap: int
    chunks: int
    recall_1: float
    recall_3: float
    mrr: float
    threshold: float
    answerable_above: float
    unanswerable_below: float


def _hit(file: str, text: str, q: KbQuestion) -> bool:
    return any(
        Path(file).name == Path(s.file).name and quote_supported(text, s.quote) for s in q.support
    )


def measure(
    embedder: MiniLMEmbedder,
    corpus: Path,
    questions: Sequence[KbQuestion],
    max_tokens: int,
    overlap: int,
) -> Row:
    """Retrieval quality of one chunking configuration."""
    chunks: list[tuple[str, str]] = []
    for path in sorted(corpus.rglob("*")):
        if path.suffix.lower() in KINDS:
            text = extract_text(path.read_bytes(), path.name)
            for c in chunk_text(text, max_tokens=max_tokens, overlap_tokens=overlap):
                chunks.append((path.relative_to(corpus).as_posix(), c.text))
    matrix = embedder.embed([t for _, t in chunks])
    queries = embedder.embed([q.question for q in questions])
    sims = queries @ matrix.T
    ranks, best = [], []
    for q, row in zip(questions, sims, strict=True):
        order = np.argsort(-row)[:10]
        best.append(float(row[order[0]]))
        if q.answerable:
            found = [i for i, c in enumerate(order) if _hit(chunks[c][0], chunks[c][1], q)]
            ranks.append(found[0] + 1 if found else None)
    answerable = [b for b, q in zip(best, questions, strict=True) if q.answerable]
    unanswerable = [b for b, q in zip(best, questions, strict=True) if not q.answerable]
    threshold, above, below = _separation(answerable, unanswerable)
    n = len(ranks)
    return Row(
        max_tokens,
        overlap,
        len(chunks),
        round(sum(r == 1 for r in ranks) / n, 3),
        round(sum(r is not None and r <= 3 for r in ranks) / n, 3),
        round(sum(1 / r for r in ranks if r is not None) / n, 3),
        threshold,
        above,
        below,
    )


def _separation(answerable: list[float], unanswerable: list[float]) -> tuple[float, float, float]:
    best = (0.0, 0.0, 0.0, -1.0)
    for t in np.arange(0.20, 0.70, 0.01):
        above = sum(a >= t for a in answerable) / len(answerable)
        below = sum(u < t for u in unanswerable) / len(unanswerable)
        if (above + below) / 2 > best[3]:
            best = (round(float(t), 2), round(above, 3), round(below, 3), (above + below) / 2)
    return best[0], best[1], best[2]


def main(argv: Sequence[str] | None = None) -> None:
    """Print one JSON line per configuration."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="64,100,150,200,256")
    parser.add_argument("--overlaps", default="0,0.2")
    args = parser.parse_args(argv)
    golden = Golden(GOLDEN_DIR)
    questions = golden.kb_questions(False)
    embedder = MiniLMEmbedder(runtime="onnx")
    embedder.load()
    for size in (int(s) for s in args.sizes.split(",")):
        for share in (float(o) for o in args.overlaps.split(",")):
            row = measure(embedder, golden.corpus, questions, size, int(size * share))
            print(json.dumps(_as_dict(row)))


def _as_dict(row: Row) -> dict[str, object]:
    return {name: getattr(row, name) for name in Row.__slots__}


if __name__ == "__main__":
    main()
