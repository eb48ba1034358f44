"""Document text from the golden corpus' real files (md, txt, html, pdf); bad files refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.doc_text import extract_text, html_text, kind_of
from pipeline.errors import InvalidInput

CORPUS = Path(__file__).parents[2] / "benchmarks" / "golden" / "kb" / "corpus" / "tarvo-aero5"


def test_the_pdf_text_is_extracted_with_its_list_items() -> None:
    text = extract_text((CORPUS / "safety.pdf").read_bytes(), "safety.pdf")
    assert "Children under 8 years old must not clean or maintain the purifier." in text
    assert "\n\u2022 Do not use the purifier in bathrooms" in text  # a bullet starts its line


def test_html_headings_become_markdown_and_scripts_vanish() -> None:
    text = extract_text((CORPUS / "troubleshooting.html").read_bytes(), "troubleshooting.html")
    assert text.startswith("# Tarvo Aero 5")
    assert "\n## Error codes\n" in text
    assert "E2 | The fan motor is blocked." in text
    assert html_text("<p>a &amp; b</p><script>alert(1)</script><h3>T</h3>") == "a & b\n\n### T"


def test_markdown_and_text_pass_through() -> None:
    md = (CORPUS / "manual.md").read_text()
    text = extract_text(md.encode(), "manual.md")
    assert text.split("\n")[0] == md.split("\n")[0] and text.split() == md.split()
    assert extract_text("\ufeffhello\r\nworld".encode(), "a.TXT") == "hello\nworld"


@pytest.mark.parametrize(
    ("data", "name", "code"),
    [
        (b"x", "a.docx", "unsupported_file"),
        (b"x", "noextension", "unsupported_file"),
        (b"\x00\x01", "a.txt", "invalid_file"),
        (b"\xff\xfe\xfa", "a.md", "invalid_file"),
        (b"hello", "a.pdf", "invalid_file"),
        (b"%PDF-1.7 broken", "a.pdf", "invalid_file"),
        (b"<html><script>x</script></html>", "a.html", "invalid_file"),
        (b"a" * 50, "a.txt", "file_too_large"),
    ],
)
def test_bad_files_are_refused_with_a_code(data: bytes, name: str, code: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        extract_text(data, name, max_chars=20)
    assert refused.value.code == code


def test_kinds() -> None:
    assert kind_of("X.HTM") == "html" and kind_of("a.markdown") == "markdown"
