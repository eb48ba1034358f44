"""Text out of the documents a knowledge base ingests: txt, Markdown, HTML and PDF.

The output is what ``pipeline.chunking`` reads: Markdown-style headings (``# Title``) and
paragraphs separated by blank lines. Markdown and plain text pass through; HTML headings become
``#`` lines and block elements (paragraphs, list items, table rows) become paragraphs, script and
style dropped, using the standard library's parser (a knowledge base needs no browser-grade
parser); PDF text comes from pypdf (pure Python, from PyPI), page by page.

Everything that can be wrong with a file is an ``InvalidInput`` raised here, before anything is
stored: ``unsupported_file`` (a type we do not read), ``invalid_file`` (bytes that are not what
the name says: binary in a text file, a damaged or encrypted PDF, a file with no text at all),
``file_too_large`` (more text than ``max_chars``).
"""

from __future__ import annotations

import html
import io
import logging
import re
from html.parser import HTMLParser
from pathlib import PurePosixPath

from pipeline.errors import InvalidInput

log = logging.getLogger("voxline.kb.text")

KINDS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
"""File extensions read, and what each is read as."""

_BLOCKS = frozenset(
    "p div li tr br section article header footer table ul ol dl dt dd blockquote pre title".split()
)
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_SKIPPED = frozenset({"script", "style", "noscript", "template", "svg", "head"})


def kind_of(filename: str) -> str:
    """What a file is read as, from its name.

    Raises:
        InvalidInput: ``unsupported_file``: not txt, md, html or pdf.
    """
    suffix = PurePosixPath(filename.lower()).suffix
    kind = KINDS.get(suffix)
    if kind is None:
        raise InvalidInput(
            f"unsupported file type {suffix or '(none)'!r}: the knowledge base reads "
            + ", ".join(sorted(KINDS)),
            param="file",
            code="unsupported_file",
        )
    return kind


def extract_text(data: bytes, filename: str, *, max_chars: int = 5_000_000) -> str:
    """The text of a document, headings as ``#`` lines (see the module docstring).

    Raises:
        InvalidInput: ``unsupported_file``, ``invalid_file`` or ``file_too_large``.
    """
    kind = kind_of(filename)
    if kind == "pdf":
        text = _pdf_text(data)
    else:
        text = _decode(data)
        if kind == "html":
            text = html_text(text)
    text = re.sub(r"[ \t\f\v]+", " ", text).replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if not text:
        raise InvalidInput("the file holds no text", param="file", code="invalid_file")
    if len(text) > max_chars:
        raise InvalidInput(
            f"the file holds more than {max_chars} characters of text",
            param="file",
            code="file_too_large",
        )
    return text


def _decode(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise InvalidInput("the file is binary, not text", param="file", code="invalid_file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the file is not UTF-8 text (byte {exc.start})", param="file", code="invalid_file"
        ) from exc


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._heading: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skip += 1
        elif tag in _HEADINGS:
            self._heading = _HEADINGS[tag]
            self.parts.append("\n\n" + "#" * self._heading + " ")
        elif tag in _BLOCKS:
            self.parts.append("\n\n")
        elif tag in {"td", "th"}:
            self.parts.append(" | ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skip = max(0, self._skip - 1)
        elif tag in _HEADINGS:
            self._heading = None
            self.parts.append("\n\n")
        elif tag in _BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        # inside a heading the text must stay on its ``#`` line
        self.parts.append(" ".join(data.split()) + " " if self._heading else data)


def html_text(markup: str) -> str:
    """The text of an HTML page: headings as ``#`` lines, blocks as paragraphs."""
    parser = _HtmlText()
    parser.feed(markup)
    parser.close()
    text = html.unescape("".join(parser.parts))
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p.strip(" |") for p in paragraphs if p.strip(" |"))


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader  # deferred: only PDFs need it
    from pypdf.errors import PdfReadError

    if not data.startswith(b"%PDF-"):
        raise InvalidInput("the file is not a PDF", param="file", code="invalid_file")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise InvalidInput("the PDF is encrypted", param="file", code="invalid_file")
        pages = [page.extract_text() or "" for page in reader.pages]
    except InvalidInput:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        # pypdf raises plain Python errors for many kinds of damage
        raise InvalidInput(
            f"the PDF cannot be read: {type(exc).__name__}", param="file", code="invalid_file"
        ) from exc
    # a line break inside a paragraph is layout, not structure; a blank line stays a break
    return "\n\n".join(_reflow(page) for page in pages if page.strip())


def _reflow(page: str) -> str:
    # a bullet starts a line of its own (a list item); other line breaks are wrapping
    page = re.sub(r"\s*\n\s*(?=[\u2022\u25aa\u2013*-]\s)", "\n\u2022LINE", page)
    paragraphs = re.split(r"\n\s*\n", page)
    out = []
    for paragraph in paragraphs:
        lines = [" ".join(line.split()) for line in paragraph.split("\n\u2022LINE")]
        out.append("\n".join(line for line in lines if line))
    return "\n\n".join(p for p in out if p)
