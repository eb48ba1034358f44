"""Taking over a stream midway without repeating what the listener already got.

When a fallback chain's backend fails after part of its output was sent, the next backend starts
over from its own beginning: an LLM restarts the reply, a TTS speaks the whole phrase again. What
was already sent must not be sent twice, so the new stream is spliced onto the old one here:
text by content (:class:`Continuation`), audio by duration (:class:`AudioSplice`). Both are plain
synchronous state machines, fed one piece at a time, so they are tested without any engine.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import soxr

from pipeline.types import AudioChunk, Float32Array

_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)")


def _word_start(text: str, i: int) -> bool:
    return i == 0 or not text[i - 1].isalnum()


def _word_end(text: str, i: int) -> bool:
    return i == len(text) or not text[i].isalnum()


class Continuation:
    """Splices a new LLM stream onto the reply text already sent.

    The new stream is held back while it could still be a repetition (its text so far occurs in
    what was sent). At the first text that cannot be, it is spliced:

    1. it repeats all that was sent, then goes on: pass on what follows the repetition
       (SmolLM2-135M does this when asked to continue, see ``CONTINUE_PROMPT``);
    2. it begins with the last words that were sent: pass on what follows them;
    3. it restarts the reply in other words (same first word as the sent text): drop it up to
       the end of the sentence in which it went its own way, then pass on the rest (a sentence
       rephrased twice is worse than a cut);
    4. otherwise it is a direct continuation: pass it on, with a space between two words.

    A stream that ends while held back only repeated what was sent, and adds nothing.

    Args:
        sent: The reply text the consumer already received (not only whitespace).
    """

    def __init__(self, sent: str) -> None:
        self.sent = sent
        self._head = ""  # the held-back text, without leading whitespace
        self._mode: Literal["hold", "skip_sentence", "pass"] = "hold"
        self._skip_from = 0

    def feed(self, text: str) -> str:
        """The part of the new stream's next piece ``text`` to pass on (maybe empty)."""
        if self._mode == "pass":
            return text
        self._head = (self._head + text).lstrip()
        if self._mode == "skip_sentence":
            return self._after_sentence()
        if not self._head or self._head in self.sent:
            return ""
        return self._splice()

    def _splice(self) -> str:
        head, sent = self._head, self.sent
        said = sent.lstrip()
        self._mode = "pass"
        if head.startswith(said):  # 1. repeated everything (a cut mid-word included)
            return head[len(said) :]
        for k in range(min(len(said), len(head)) - 1, 0, -1):  # 2. repeated the last words
            overlap = head[:k]
            if (
                sent.endswith(overlap)
                and _word_start(sent, len(sent) - k)
                and _word_end(head, k)
                and any(c.isalnum() for c in overlap)
            ):
                return head[k:]
        if head.split()[:1] == said.split()[:1]:  # 3. restarted in other words
            common = 0
            while common < min(len(head), len(said)) and head[common] == said[common]:
                common += 1
            self._mode, self._skip_from = "skip_sentence", common
            return self._after_sentence()
        gap = not sent[-1].isspace() and head[0].isalnum()  # 4. a continuation
        return (" " if gap else "") + head

    def _after_sentence(self) -> str:
        end = _SENTENCE_END.search(self._head, self._skip_from)
        if end is None:
            return ""
        self._mode = "pass"
        return self._head[end.end() :]


class AudioSplice:
    """The audio of one phrase, from one backend or several in turn, with nothing sent twice.

    Every chunk is converted to ``sample_rate`` (a streaming resampler per backend, so chunk
    borders do not click). After :meth:`restart` the new backend's audio is dropped until it
    reaches the duration already sent; audio is aligned by time, not by word. Leading exact
    silence is held back until the first sound, so a backend that produces only zeros for the
    whole phrase is caught before anything is sent (:attr:`heard` stays false).

    Args:
        sample_rate: The rate of every chunk this produces.
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.sent = 0  # samples passed on, at sample_rate
        self.heard = False  # whether any non-zero sample was passed on
        self._held: list[Float32Array] = []
        self._skip = 0
        self._position = 0  # samples the current backend produced, at sample_rate
        self._resampler: soxr.ResampleStream | None = None
        self._in_rate = sample_rate

    def restart(self) -> None:
        """A new backend takes over the phrase from its beginning."""
        self._skip, self._position = self.sent, 0
        self._held = []  # silence never sent: the new backend's own will replace it
        self._resampler, self._in_rate = None, self.sample_rate

    def push(self, chunk: AudioChunk) -> AudioChunk | None:
        """What to pass on of the current backend's next ``chunk`` (``None``: nothing yet)."""
        if chunk.sample_rate != self._in_rate:
            tail = self._drain()
            self._in_rate = chunk.sample_rate
            self._resampler = (
                None
                if chunk.sample_rate == self.sample_rate
                else soxr.ResampleStream(
                    chunk.sample_rate, self.sample_rate, 1, dtype="float32", quality="HQ"
                )
            )
            return self._take(np.concatenate([tail, self._convert(chunk.samples)]))
        return self._take(self._convert(chunk.samples))

    def flush(self) -> AudioChunk | None:
        """The current backend's stream ended: what the resampler still holds."""
        return self._take(self._drain())

    def held(self) -> AudioChunk | None:
        """The silence held back and never sent (``None`` when there is none)."""
        if not self._held:
            return None
        return AudioChunk(np.concatenate(self._held), self.sample_rate)

    def _convert(self, samples: Float32Array, last: bool = False) -> Float32Array:
        samples = samples.astype(np.float32, copy=False)
        if self._resampler is None:
            return samples
        out = self._resampler.resample_chunk(samples, last=last)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _drain(self) -> Float32Array:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        return self._convert(np.zeros(0, np.float32), last=True)

    def _take(self, samples: Float32Array) -> AudioChunk | None:
        start = self._position
        self._position += len(samples)
        if start < self._skip:
            samples = samples[self._skip - start :]
        if not len(samples):
            return None
        if not self.heard:
            if not np.any(samples):
                self._held.append(samples)
                return None
            self.heard = True
            samples = np.concatenate([*self._held, samples])
            self._held = []
        self.sent += len(samples)
        return AudioChunk(samples, self.sample_rate)
