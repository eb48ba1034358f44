"""OpenAI ``stop`` semantics for a streamed reply, shared by every local LLM engine."""

from __future__ import annotations

from collections.abc import Sequence


class StopFilter:
    """Streams a growing reply while keeping OpenAI's ``stop`` semantics.

    A stop string ends the reply and is not part of it, so text that might be the start of one is
    held back until the next tokens show whether it is. Feed the whole reply so far to ``push``;
    it returns the piece that is safe to send now.

    Args:
        stops: The stop strings (empty ones are ignored).
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.stopped = False
        self._sent = 0
        self._text = ""

    def push(self, text: str) -> str:
        """Take the reply so far; return what can be sent now. Sets ``stopped`` on a stop string."""
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped = True
            self._text = text[: min(found)]
            return self.flush()
        self._text = text
        ready = len(text) - self._held_back(text)
        if ready <= self._sent:
            return ""
        piece = text[self._sent : ready]
        self._sent = ready
        return piece

    def flush(self) -> str:
        """The reply ended: return whatever is still held back."""
        piece = self._text[self._sent :]
        self._sent = len(self._text)
        return piece

    def _held_back(self, text: str) -> int:
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
