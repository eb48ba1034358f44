"""Make the knowledge-base golden set: the corpus's PDF, the spoken questions, their manifest.

Run from the repository root (needs espeak-ng and groff: ``apt-get install -y espeak-ng
groff``)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/golden/make_kb.py

The corpus (``kb/corpus``) is a made-up product manual in four formats (``manual.md``,
``troubleshooting.html``, ``warranty.txt``, ``safety.pdf`` typeset by groff from
``kb/sources/safety.ms``) plus a snapshot of voxline's own README. Each question names the
passage that answers it (file + a verbatim quote, checked here against the file's text) or is
unanswerable from the corpus (the expected reply is "I don't know"). The questions are spoken by
the packaged Piper voice and by espeak-ng voices, a few of them faster than normal.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.eval.synth import VOICES, speak, write_clip

ROOT = Path(__file__).resolve().parent
KB = ROOT / "kb"
CORPUS = KB / "corpus"
REPO = ROOT.parents[1]

MANUAL = "tarvo-aero5/manual.md"
TROUBLE = "tarvo-aero5/troubleshooting.html"
WARRANTY = "tarvo-aero5/warranty.txt"
SAFETY = "tarvo-aero5/safety.pdf"
README = "voxline/README.md"

Q = tuple[str, str | None, list[str], str, str | None, str | None]
"""(question, answer, aliases, reference answer, file, quote): answer None is unanswerable."""

QUESTIONS: tuple[Q, ...] = (
    ("How big a room can the Aero 5 clean?", "up to 45 square metres", ["45 square"],
     "The Aero 5 is made for rooms of up to 45 square metres.", MANUAL,
     "rooms of up to 45 square metres"),
    ("How loud is the purifier in sleep mode?", "24 dB", ["24 db", "24 decibels"],
     "In Sleep mode the purifier is 24 decibels quiet.", MANUAL, "24 dB in Sleep mode"),
    ("How often should I replace the main filter?", "every 6 months", ["6 months"],
     "Replace the main filter every six months, or sooner when the indicator turns red.",
     MANUAL, "replace the 3-in-1 filter every 6 months"),
    ("Does the purifier work with a five gigahertz Wi-Fi network?", "no, only 2.4 GHz",
     ["2.4 ghz", "2.4 gigahertz", "not supported"],
     "No, it only works with 2.4 GHz Wi-Fi networks; 5 GHz is not supported.", MANUAL,
     "5 GHz networks are not supported"),
    ("How do I lock the control panel?", "hold the Lock key for 3 seconds", ["3 seconds"],
     "Hold the Lock key for three seconds to lock the panel.", MANUAL,
     "hold the Lock key for 3 seconds"),
    ("What does an orange ring light mean?", "the air quality is poor", ["poor"],
     "An orange ring light means the air quality is poor.", MANUAL, "orange for poor"),
    ("How long does a firmware update take?", "about 4 minutes", ["4 minutes"],
     "A firmware update takes about four minutes.", MANUAL, "take about 4 minutes"),
    ("What is the part number of the replacement filter?", "AF-50", ["af 50", "af50"],
     "Replacement filters are sold as part number AF-50.", MANUAL, "part number AF-50"),
    ("How do I reset the filter indicator?", "hold Mode and Timer together for 5 seconds",
     ["5 seconds"], "Hold the Mode and Timer keys together for five seconds.", MANUAL,
     "hold the Mode and Timer keys together for 5 seconds"),
    ("How much does the purifier weigh?", "4.8 kg", ["4.8 kilograms", "4.8 kg"],
     "The purifier weighs 4.8 kilograms.", MANUAL, "4.8 kg"),
    ("How often should I clean the pre-filter?", "every two weeks", ["two weeks", "2 weeks"],
     "Vacuum or rinse the pre-filter every two weeks.", MANUAL,
     "rinse it under lukewarm water every two weeks"),
    ("How long does turbo mode last before it goes back to auto?", "30 minutes",
     ["30 minutes"], "Turbo returns to Auto mode after thirty minutes.", MANUAL,
     "returns to Auto after 30 minutes"),
    ("What timer settings are available?", "2, 4 or 8 hours", ["8 hours"],
     "The timer can be set to two, four or eight hours.", MANUAL,
     "The timer can be set to 2, 4 or 8 hours"),
    ("How much power does it use on turbo?", "38 watts", ["38 w", "38 watts"],
     "At Turbo the purifier uses 38 watts.", MANUAL, "38 W at Turbo"),
    ("What does error code E3 mean?", "the particle sensor cannot read",
     ["sensor cannot read", "particle sensor"],
     "E3 means the particle sensor cannot read; clean the sensor window.", TROUBLE,
     "The particle sensor cannot read."),
    ("The purifier shows E5, what should I do?", "unplug it and let it cool for 30 minutes",
     ["cool"], "E5 means it overheated: unplug it and let it cool for thirty minutes.",
     TROUBLE, "let it cool for 30 minutes"),
    ("How do I restore the factory settings?", "hold Power and Lock together for 10 seconds",
     ["10 seconds"], "Hold the Power and Lock keys together for ten seconds.", TROUBLE,
     "Hold the Power and Lock keys together for 10 seconds."),
    ("Why does my purifier smell musty?", "the carbon layer is saturated",
     ["carbon", "replace the filter"],
     "A musty smell means the carbon layer is saturated, so replace the filter.", TROUBLE,
     "A musty smell means the activated carbon layer is saturated"),
    ("How close to the router should the purifier be when pairing?", "within 10 metres",
     ["10 metres", "10 meters"], "Keep it within ten metres of the router while pairing.",
     TROUBLE, "within 10 metres of the router while pairing"),
    ("How long is the warranty?", "2 years", ["2 years", "two years"],
     "The warranty lasts two years from the date of purchase.", WARRANTY,
     "for 2 years from the date"),
    ("How can I get a three year warranty?", "register it in the app within 60 days",
     ["60 days", "register"],
     "Register the purifier in the Tarvo Home app within sixty days of purchase.", WARRANTY,
     "Registering the purifier in the Tarvo Home app within 60 days of purchase extends "
     "the warranty to 3 years."),
    ("Are filters covered by the warranty?", "no, filters are consumables",
     ["consumable", "not covered"], "No, filters are consumables and are not covered.",
     WARRANTY, "Filters are consumables and are not covered by the warranty."),
    ("Where do I find the serial number?", "on the label under the bottom cover",
     ["bottom cover", "under the cover"],
     "The serial number is on the label under the bottom cover.", WARRANTY,
     "printed on the label under the bottom cover"),
    ("How many days do I have to return an unused purifier?", "30 days", ["30 days"],
     "An unused purifier can be returned within thirty days of purchase.", WARRANTY,
     "returned within 30 days of purchase"),
    ("Above what humidity should the purifier not be used?", "85 percent",
     ["85 percent", "85%"], "Do not use it where the humidity is above 85 percent.", SAFETY,
     "anywhere the humidity is above 85 percent"),
    ("Does the Aero 5 produce ozone?", "no, it emits no ozone", ["no ozone"],
     "No, the Aero 5 emits no ozone; its filtration is purely mechanical.", SAFETY,
     "The Aero 5 emits no ozone"),
    ("At what temperatures does the purifier work?", "between 5 and 35 degrees Celsius",
     ["5 and 35", "35 degrees"],
     "It works at temperatures between five and thirty five degrees Celsius.", SAFETY,
     "between 5 and 35 degrees Celsius"),
    ("Which license is voxline released under?", "GPL-3.0-or-later", ["gpl"],
     "voxline is licensed under the GPL 3.0 or later.", README,
     "the project is licensed GPL-3.0-or-later"),
    ("Which speech to text model does voxline use by default on a CPU?", "whisper tiny.en",
     ["tiny"], "On a CPU voxline uses whisper tiny English by default.", README,
     "whisper tiny.en, CTranslate2 int8"),
    ("How much silence ends a turn in the realtime session?", "400 milliseconds",
     ["400"], "Four hundred milliseconds of silence ends a turn.", README,
     "400 ms of silence ends a turn"),
    ("What audio format does the realtime WebSocket expect?", "pcm16 at 24 kHz",
     ["24 khz", "24 kilohertz", "pcm16", "pcm 16"],
     "Stream 16-bit PCM audio at 24 kilohertz.", README, "Stream pcm16 at 24 kHz"),
    ("Which command runs the benchmark?", "voxline bench", ["bench"],
     "The benchmark is run with the voxline bench command.", README,
     "`voxline bench` (per-stage and voice-to-voice latency"),
    ("How much does the Aero 5 cost?", None, [], "", None, None),
    ("Does the Aero 5 work with Amazon Alexa?", None, [], "", None, None),
    ("What colours does the purifier come in?", None, [], "", None, None),
    ("How much does a replacement filter cost?", None, [], "", None, None),
    ("Can the purifier remove carbon monoxide?", None, [], "", None, None),
    ("Who is the chief executive of Tarvo?", None, [], "", None, None),
    ("What is the battery life of the Aero 5?", None, [], "", None, None),
    ("How fast does the fan spin in revolutions per minute?", None, [], "", None, None),
)  # fmt: skip

QUICK = frozenset({0, 2, 7, 14, 19, 24, 28, 32, 33, 38})
"""Questions of the quick subset: every file, and two unanswerable ones."""

VOICE_CYCLE: tuple[tuple[str, float], ...] = (
    ("piper-joe", 1.0),
    ("espeak-en-us", 1.0),
    ("espeak-en-us-f3", 1.0),
    ("espeak-en-gb-scotland", 1.0),
    ("piper-joe", 1.2),
)


def plain_text(path: Path) -> str:
    """The readable text of a corpus file (the PDF's from its groff source): what a quote
    must appear in, whitespace collapsed."""
    if path.suffix == ".pdf":
        source = KB / "sources" / (path.stem + ".ms")
        lines = [ln for ln in source.read_text().splitlines() if not ln.startswith(".")]
        text = " ".join(lines).replace("\\(bu", "")
    elif path.suffix == ".html":
        text = html.unescape(re.sub(r"<[^>]+>", " ", path.read_text()))
    else:
        text = path.read_text()
    return " ".join(text.split())


def build_pdf() -> None:
    """Typeset ``safety.ms`` into the corpus PDF with groff's PDF device."""
    groff = shutil.which("groff")
    if groff is None:
        raise SystemExit("groff is not installed: apt-get install -y groff")
    pdf = subprocess.run(
        [groff, "-ms", "-T", "pdf", str(KB / "sources" / "safety.ms")],
        check=True,
        capture_output=True,
    ).stdout
    (CORPUS / SAFETY).write_bytes(pdf)


def snapshot_docs() -> None:
    """Copy voxline's README into the corpus (a snapshot: questions must not go stale)."""
    (CORPUS / "voxline").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "README.md", CORPUS / README)


def main() -> None:
    """Check every quote, speak every question, write ``kb/questions.jsonl``."""
    if not (CORPUS / README).exists():
        snapshot_docs()
    build_pdf()
    rows: list[dict[str, Any]] = []
    for i, (question, answer, aliases, reference, file, quote) in enumerate(QUESTIONS):
        support = []
        if file is not None and quote is not None:
            if " ".join(quote.split()) not in plain_text(CORPUS / file):
                raise SystemExit(f"q{i + 1:02d}: quote not found in {file}: {quote!r}")
            support.append({"file": file, "quote": quote})
        voice, speed = VOICE_CYCLE[i % len(VOICE_CYCLE)]
        audio = speak(question, VOICES[voice], speed)
        path = f"kb/audio/kb{i + 1:02d}.ogg"
        write_clip(ROOT / path, audio)
        rows.append(
            {
                "id": f"kb{i + 1:02d}",
                "question": question,
                "answerable": answer is not None,
                "answer": answer,
                "aliases": aliases,
                "reference": reference or None,
                "support": support,
                "audio": path,
                "voice": voice,
                "speed": speed,
                "quick": i in QUICK,
            }
        )
    out = KB / "questions.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    answerable = sum(r["answerable"] for r in rows)
    print(f"{len(rows)} questions ({answerable} answerable) -> {out}")


if __name__ == "__main__":
    main()
