"""The golden sets on disk: manifests (JSON lines) read into frozen values.

Every set lives under one folder (``benchmarks/golden`` by default; ``--golden DIR`` for another)
whose README describes the files. A set's ``quick`` flag marks the items of ``--quick``, chosen
when the set was made so that every condition (voice, speed, noise, file of the corpus) keeps at
least one item. ``digest`` hashes every manifest and data file, so a scorecard says which golden
data it was computed on and two scorecards of different data are not compared by mistake.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import InvalidInput
from pipeline.types import AudioChunk

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
"""The golden sets shipped in the repository."""

T = TypeVar("T")

_DATA_SUFFIXES = frozenset({".jsonl", ".json", ".flac", ".ogg", ".md", ".txt", ".html", ".pdf"})


@dataclass(frozen=True, slots=True)
class SttClip:
    """A spoken utterance and what is said in it.

    Attributes:
        id: unique name.
        audio: the audio file.
        text: the reference transcript.
        conditions: the groups it is scored in (``real``, ``voice=piper-joe``, ``noise=clean``...).
        quick: part of the quick subset.
    """

    id: str
    audio: Path
    text: str
    conditions: tuple[str, ...]
    quick: bool


@dataclass(frozen=True, slots=True)
class Sentence:
    """A text for the TTS suite."""

    id: str
    text: str
    quick: bool


@dataclass(frozen=True, slots=True)
class QAPair:
    """A question with its expected answer.

    Attributes:
        answer: the short answer ("Tokyo").
        aliases: other accepted short forms.
        reference: a one-sentence answer, compared by meaning with the reply.
    """

    id: str
    question: str
    answer: str
    aliases: tuple[str, ...]
    reference: str
    quick: bool

    @property
    def answers(self) -> tuple[str, ...]:
        """The answer and its aliases."""
        return (self.answer, *self.aliases)


@dataclass(frozen=True, slots=True)
class Support:
    """Where an answer is found: a corpus file (relative to the corpus folder) and a verbatim
    quote of it."""

    file: str
    quote: str


@dataclass(frozen=True, slots=True)
class KbQuestion:
    """A spoken question about the knowledge-base corpus.

    Attributes:
        answerable: false when the corpus does not answer it (expected: "I don't know").
        answer, aliases, reference: as in ``QAPair`` (empty when unanswerable).
        support: the passages that answer it.
        audio: the question spoken.
    """

    id: str
    question: str
    answerable: bool
    answer: str
    aliases: tuple[str, ...]
    reference: str
    support: tuple[Support, ...]
    audio: Path
    quick: bool

    @property
    def answers(self) -> tuple[str, ...]:
        """The answer and its aliases."""
        return (self.answer, *self.aliases) if self.answer else ()


def _load(path: Path, build: Callable[[dict[str, Any]], T]) -> list[T]:
    """``build(row)`` for every JSON line of ``path``.

    Raises:
        InvalidInput: the file cannot be read, a line is not a JSON object, or lacks a field.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the golden set: {exc}", param="golden") from exc
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            items.append(build(row))
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise InvalidInput(f"{path}:{number}: {problem}", param="golden") from exc
    return items


def _pick(rows: list[Any], quick: bool) -> list[Any]:
    return [r for r in rows if r.quick] if quick else rows


@dataclass(frozen=True, slots=True)
class Golden:
    """One folder of golden sets."""

    root: Path = GOLDEN_DIR

    def stt(self, quick: bool = False) -> list[SttClip]:
        """The STT clips (``stt/manifest.jsonl``)."""
        rows = _load(
            self.root / "stt" / "manifest.jsonl",
            lambda r: SttClip(
                r["id"],
                self.root / r["audio"],
                r["text"],
                tuple(r["conditions"]),
                bool(r.get("quick")),
            ),
        )
        return _pick(rows, quick)

    def tts(self, quick: bool = False) -> list[Sentence]:
        """The TTS sentences (``tts/sentences.jsonl``)."""
        rows = _load(
            self.root / "tts" / "sentences.jsonl",
            lambda r: Sentence(r["id"], r["text"], bool(r.get("quick"))),
        )
        return _pick(rows, quick)

    def tts_checks(self) -> dict[str, Any]:
        """The thresholds of the TTS clip checks (``tts/checks.json``)."""
        return self._json("tts/checks.json")

    def answers(self, quick: bool = False) -> list[QAPair]:
        """The question/answer pairs (``answers/qa.jsonl``)."""
        rows = _load(
            self.root / "answers" / "qa.jsonl",
            lambda r: QAPair(
                r["id"],
                r["question"],
                r["answer"],
                tuple(r.get("aliases", ())),
                r["reference"],
                bool(r.get("quick")),
            ),
        )
        return _pick(rows, quick)

    @property
    def corpus(self) -> Path:
        """The knowledge-base corpus folder (``kb/corpus``)."""
        return self.root / "kb" / "corpus"

    def kb_questions(self, quick: bool = False) -> list[KbQuestion]:
        """The spoken questions about the corpus (``kb/questions.jsonl``)."""
        rows = _load(
            self.root / "kb" / "questions.jsonl",
            lambda r: KbQuestion(
                r["id"],
                r["question"],
                bool(r["answerable"]),
                r.get("answer") or "",
                tuple(r.get("aliases", ())),
                r.get("reference") or "",
                tuple(Support(s["file"], s["quote"]) for s in r.get("support", ())),
                self.root / r["audio"],
                bool(r.get("quick")),
            ),
        )
        return _pick(rows, quick)

    def latency_budgets(self) -> dict[str, Any]:
        """The latency budgets (``latency/budgets.json``)."""
        return self._json("latency/budgets.json")

    def _json(self, relative: str) -> dict[str, Any]:
        path = self.root / relative
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{path}: cannot read: {exc}", param="golden") from exc
        if not isinstance(data, dict):
            raise InvalidInput(f"{path}: not a JSON object", param="golden")
        return data

    def digest(self) -> str:
        """SHA-256 over every data file's path and bytes (the scripts, this README and the
        baseline scorecards scored on the data, ``baseline-*.json``, excluded)."""
        digest = hashlib.sha256()
        for path in sorted(self.root.rglob("*")):
            if (
                path.is_file()
                and path.suffix in _DATA_SUFFIXES
                and path != self.root / "README.md"
                and not path.name.startswith("baseline-")
            ):
                digest.update(path.relative_to(self.root).as_posix().encode() + b"\0")
                digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()


def load_audio_16k(path: Path) -> AudioChunk:
    """A golden clip as a mono float32 ``AudioChunk`` at 16 kHz.

    Raises:
        InvalidInput: the file is missing or not decodable audio.
    """
    from pipeline.audio import decode_audio
    from pipeline.settings import AudioLimits

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read: {exc}", param="golden") from exc
    return decode_audio(data, sample_rate=16_000, limits=AudioLimits())
