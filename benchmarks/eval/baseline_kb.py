"""An extractive retrieval baseline for the ``rag`` suite (``--rag-backend
benchmarks.eval.baseline_kb:build``).

It is not the product's knowledge base (issue 13 builds that, in the server, on the state
store): it is the simplest thing that answers from the corpus, kept to show that the golden
questions are answerable by retrieval, to give the suite's numbers a floor any real knowledge
base should beat, and to run the suite end to end before the real one exists. Markdown, text
and HTML files are split into paragraphs (headings and blank lines; HTML block elements), each
paragraph is embedded with the judge's all-MiniLM-L6-v2, and a question is answered with the
sentence of the best paragraph closest to it, citing that paragraph, or "I don't know" when
the best paragraph scores under ``THRESHOLD``. PDFs are skipped: no PDF reader is a dependency.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.eval.suites.rag import Citation, GroundedAnswer
from pipeline.embedding import Embedder, Float32Matrix
from pipeline.settings import Settings

THRESHOLD = 0.4
"""Best-paragraph cosine similarity below which the baseline says it does not know."""

MIN_WORDS = 12
"""Paragraphs shorter than this are joined to the next one (a heading to its text)."""

_BLOCK = re.compile(r"</?(p|h[1-6]|tr|li|table|div|section|title)\b[^>]*>", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True, slots=True)
class Chunk:
    """A paragraph of a corpus file (``file`` relative to the corpus folder)."""

    file: str
    text: str


def _paragraphs(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix in {".html", ".htm"}:
        text = html.unescape(re.sub(r"<[^>]+>", " ", _BLOCK.sub("\n\n", text)))
    else:
        text = re.sub(r"^(#+ .*)$", r"\n\1\n", text, flags=re.MULTILINE)
    blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n", text)]
    out: list[str] = []
    pending = ""
    for block in filter(None, blocks):
        pending = f"{pending} {block}".strip()
        if len(pending.split()) >= MIN_WORDS:
            out.append(pending)
            pending = ""
    if pending:
        out.append(pending)
    return out


def read_corpus(corpus: Path) -> list[Chunk]:
    """Every paragraph of the md, txt and html files under ``corpus``."""
    return [
        Chunk(path.relative_to(corpus).as_posix(), paragraph)
        for path in sorted(corpus.rglob("*"))
        if path.suffix in {".md", ".txt", ".html", ".htm"}
        for paragraph in _paragraphs(path)
    ]


class BaselineKnowledgeBase:
    """Paragraph retrieval plus sentence extraction over an embedded corpus."""

    def __init__(self, embedder: Embedder, chunks: list[Chunk], vectors: Float32Matrix) -> None:
        self.embedder = embedder
        self.chunks = chunks
        self.vectors = vectors

    async def answer(self, question: str) -> GroundedAnswer:
        """The best paragraph's closest sentence, cited, or "I don't know"."""
        query = (await self.embedder.aembed([question]))[0]
        scores = self.vectors @ query
        best = int(np.argmax(scores))
        if float(scores[best]) < THRESHOLD:
            return GroundedAnswer("I don't know.", dont_know=True)
        chunk = self.chunks[best]
        sentences = [s for s in _SENTENCE.split(chunk.text) if s.strip()] or [chunk.text]
        closest = int(np.argmax(await self.embedder.aembed(sentences) @ query))
        citation = Citation(chunk.file, chunk.text, round(float(scores[best]), 4))
        return GroundedAnswer(sentences[closest], (citation,), dont_know=False)

    async def aclose(self) -> None:
        """Release the embedding model (``build`` made it for this knowledge base)."""
        await self.embedder.aclose()


async def build(settings: Settings, corpus: Path) -> BaselineKnowledgeBase:
    """Read and embed ``corpus`` (the ``KnowledgeBaseFactory`` of ``--rag-backend``)."""
    from benchmarks.eval.provenance import EMBEDDER_REF
    from models.embed_minilm import MiniLMEmbedder

    embedder = MiniLMEmbedder(EMBEDDER_REF, cache_dir=settings.cache_dir)
    await embedder.start()
    chunks = read_corpus(corpus)
    vectors = await embedder.aembed([c.text for c in chunks])
    return BaselineKnowledgeBase(embedder, chunks, vectors)
