"""Text into overlapping chunks that keep to headings and sentences.

A chunk is what the knowledge base embeds, retrieves and cites, so it should be about one thing:

- **headings bound chunks**: a chunk never spans two sections, and each chunk starts with the
  path of headings above it ("Maintenance > Filter"), so a passage about "it" still says what
  it is about, to the embedding model and to the LLM that reads it;
- **sentences are not cut**: a chunk ends at a sentence (or list item) boundary; only a single
  sentence longer than a whole chunk is split, at word boundaries;
- **overlap**: the next chunk of a section repeats the last sentences of the one before, up to
  ``overlap_tokens``, so a fact that straddles a border is whole in one of them.

Sizes are in estimated tokens (``estimate_tokens``: words x 1.3, close to a BERT word-piece
count for English prose), so chunking needs no tokenizer. The input is the text of a file as
``models.doc_text`` extracts it: headings as Markdown ``#`` lines, paragraphs separated by blank
lines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.errors import InvalidInput

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[\u2022]?[A-Z0-9\u2022])")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+\u2022\u25aa]|\d+[.)]|\|)\s")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a document.

    Attributes:
        index: Its position in the document (0-based).
        text: The heading path on the first line (if any), then the passage.
        heading: The heading path alone ("" before the first heading).
        tokens: Estimated tokens of ``text``.
    """

    index: int
    text: str
    heading: str
    tokens: int


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text`` (words x 1.3, rounded up)."""
    return math.ceil(len(text.split()) * 1.3)


@dataclass(frozen=True, slots=True)
class _Section:
    heading: str
    paragraphs: list[str]


def _sections(text: str) -> Iterator[_Section]:
    path: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    lines: list[str] = []

    def close_paragraph() -> None:
        if lines:
            paragraphs.append("\n".join(lines))
            lines.clear()

    def heading() -> str:
        return " > ".join(title for _, title in path)

    for raw in text.splitlines():
        line = raw.rstrip()
        match = _HEADING.match(line)
        if match:
            close_paragraph()
            if paragraphs:
                yield _Section(heading(), paragraphs)
                paragraphs = []
            level = len(match.group(1))
            path = [(lv, title) for lv, title in path if lv < level]
            path.append((level, " ".join(match.group(2).split())))
        elif not line.strip():
            close_paragraph()
        else:
            lines.append(line.strip())
    close_paragraph()
    if paragraphs:
        yield _Section(heading(), paragraphs)


def sentences(paragraph: str) -> list[str]:
    """A paragraph's sentences; each line of a list or table is one."""
    out: list[str] = []
    prose: list[str] = []
    for line in paragraph.splitlines():
        if _LIST_ITEM.match(line):
            if prose:
                out += _SENTENCE_END.split(" ".join(prose))
                prose = []
            out.append(line.strip())
        else:
            prose.append(line.strip())
    if prose:
        out += _SENTENCE_END.split(" ".join(prose))
    return [" ".join(s.split()) for s in out if s.strip()]


def _pieces(sentence: str, max_tokens: int) -> list[str]:
    """A sentence, split at word boundaries when it alone is longer than ``max_tokens``."""
    if estimate_tokens(sentence) <= max_tokens:
        return [sentence]
    words = sentence.split()
    per = max(1, int(max_tokens / 1.3))
    return [" ".join(words[i : i + per]) for i in range(0, len(words), per)]


def chunk_text(text: str, *, max_tokens: int = 200, overlap_tokens: int = 40) -> list[Chunk]:
    """Cut a document into chunks (see the module docstring).

    Args:
        text: The document (Markdown-style headings, blank lines between paragraphs).
        max_tokens: Most estimated tokens of a chunk's passage (the heading line is extra).
        overlap_tokens: Most estimated tokens a chunk repeats from the one before it in its
            section (at most half of ``max_tokens``).

    Raises:
        InvalidInput: sizes out of range.
    """
    if max_tokens < 16:
        raise InvalidInput("chunks must hold at least 16 tokens", param="max_chunk_size_tokens")
    if not 0 <= overlap_tokens <= max_tokens // 2:
        raise InvalidInput(
            "the overlap must be between 0 and half the chunk size", param="chunk_overlap_tokens"
        )
    chunks: list[Chunk] = []
    for section in _sections(text):
        units = [
            piece
            for paragraph in section.paragraphs
            for sentence in sentences(paragraph)
            for piece in _pieces(sentence, max_tokens)
        ]
        for body in _windows(units, max_tokens, overlap_tokens):
            full = f"{section.heading}\n{body}" if section.heading else body
            chunks.append(Chunk(len(chunks), full, section.heading, estimate_tokens(full)))
    return chunks


def _windows(units: list[str], max_tokens: int, overlap_tokens: int) -> Iterator[str]:
    """Consecutive runs of ``units`` within ``max_tokens``, each starting with the tail of the
    run before it (up to ``overlap_tokens``)."""
    sizes = [estimate_tokens(u) for u in units]
    start = 0
    while start < len(units):
        end, used = start, 0
        while end < len(units) and (end == start or used + sizes[end] <= max_tokens):
            used += sizes[end]
            end += 1
        # list items and table rows keep their own lines; prose sentences run on
        yield "".join(
            ("\n" if i > start and _LIST_ITEM.match(units[i]) else " " if i > start else "")
            + units[i]
            for i in range(start, end)
        )
        if end >= len(units):
            return
        # step back over whole units that fit the overlap, but always move forward
        back, kept = end, 0
        while back - 1 > start and kept + sizes[back - 1] <= overlap_tokens:
            back -= 1
            kept += sizes[back]
        start = back
