"""The conversation a realtime session remembers: items in order, bounded by tokens.

On a CPU every token of history is prefilled again on every turn, so history is what makes a
long conversation slow; we keep only the most recent items that fit a token budget (estimated
from characters: no tokenizer is needed, and the estimate only has to be roughly right), and the
system prompt always.

Assistant items remember how many milliseconds of audio each spoken phrase took, so that an item
can be cut to what the listener actually heard (barge-in, or the client's ``truncate``): the text
is mapped to audio time phrase by phrase, proportionally within a phrase, at a word boundary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.events import ConversationItem, ItemKind
from pipeline.types import Message, Role, ToolCall


@dataclass(slots=True)
class Item:
    """A conversation item (mutable: a transcript arrives, a reply grows or is truncated).

    Attributes:
        item_id: Its id.
        role: ``user`` or ``assistant``.
        text: The content; ``None`` while a user's audio awaits its transcript.
        audio: Whether it is (or was) audio.
        spoken: Assistant items: each phrase sent as audio, with its audio duration in ms.
    """

    item_id: str
    role: Role
    text: str | None
    audio: bool = False
    spoken: list[tuple[str, float]] = field(default_factory=list)
    kind: ItemKind = "message"
    call_id: str | None = None
    name: str | None = None

    def snapshot(self) -> ConversationItem:
        """The frozen value the client sees."""
        return ConversationItem(
            self.item_id, self.role, self.text, self.audio, self.kind, self.call_id, self.name
        )

    def message(self) -> Message:
        """The item as the LLM sees it (a call as an assistant's tool call, a function's
        result as a ``tool`` message)."""
        text = self.text or ""
        if self.kind == "function_call":
            call = ToolCall(self.call_id or "", self.name or "", text)
            return Message("assistant", "", tool_calls=(call,))
        if self.kind == "function_call_output":
            return Message("tool", text, tool_call_id=self.call_id)
        return Message(self.role, text)

    @property
    def audio_ms(self) -> float:
        """Total audio sent for this item."""
        return sum(ms for _, ms in self.spoken)

    def truncate(self, audio_ms: float) -> None:
        """Keep only what the first ``audio_ms`` of the item's audio said."""
        kept: list[tuple[str, float]] = []
        elapsed = 0.0
        for text, ms in self.spoken:
            if elapsed >= audio_ms:
                break
            part = min(ms, audio_ms - elapsed)
            kept.append((text if part == ms else heard_text([(text, ms)], part), part))
            elapsed += ms
        self.spoken = kept
        self.text = " ".join(text for text, _ in kept if text)


class History:
    """Conversation items, trimmed to a token budget.

    Args:
        max_tokens: Budget of the messages sent to the LLM (system prompt excluded).
        chars_per_token: Characters per token of the estimate.
    """

    def __init__(self, *, max_tokens: int, chars_per_token: float = 4.0) -> None:
        self.max_tokens = max_tokens
        self.chars_per_token = chars_per_token
        self._items: list[Item] = []
        self.version = 0
        """Bumped whenever the messages an LLM would see change."""

    @property
    def items(self) -> tuple[Item, ...]:
        """The items kept, oldest first."""
        return tuple(self._items)

    @property
    def last_id(self) -> str | None:
        """The newest item's id."""
        return self._items[-1].item_id if self._items else None

    def get(self, item_id: str) -> Item | None:
        """The item with this id, if it is still kept."""
        return next((item for item in self._items if item.item_id == item_id), None)

    def add(self, item: Item) -> None:
        """Append an item, then forget the oldest ones beyond the budget."""
        self._items.append(item)
        self.changed()

    def changed(self) -> None:
        """Record that an item's text changed (and trim again)."""
        self.version += 1
        self._trim()

    def make_room(self, tokens: int) -> None:
        """Trim now if ``tokens`` more would pass the budget: the trim a new message would
        cause happens before the prompt cache is warmed for it, not after."""
        if self._trim(self.max_tokens - tokens):
            self.version += 1

    def tokens(self, text: str) -> int:
        """Estimated tokens of one message (its text plus a few for the chat template)."""
        return math.ceil(len(text) / self.chars_per_token) + 4

    def messages(self, system_prompt: str, extra: Sequence[Message] = ()) -> list[Message]:
        """What the LLM sees: the system prompt, the newest items that fit, then ``extra``.

        Items without text (audio awaiting its transcript, a reply cut before any audio) are
        skipped. The newest message is always included, even alone over the budget.
        """
        candidates = [item.message() for item in self._items if item.text] + list(extra)
        kept: list[Message] = []
        budget = self.max_tokens
        for message in reversed(candidates):
            cost = self.tokens(message.content + "".join(c.arguments for c in message.tool_calls))
            if kept and cost > budget:
                break
            kept.append(message)
            budget -= cost
        kept.reverse()
        # a function's result whose call was trimmed away would answer nothing the LLM sees
        calls = {c.call_id for m in kept for c in m.tool_calls}
        kept = [m for m in kept if m.role != "tool" or m.tool_call_id in calls]
        return [Message("system", system_prompt), *kept]

    def _trim(self, limit: int | None = None) -> bool:
        # Once over budget, drop the oldest items down to *half* the budget rather than just
        # under it: the conversation's start then stays the same for the next few turns, so an
        # LLM's prompt cache (llama.cpp keeps the previous prompt's KV) is reused instead of the
        # whole conversation being read again on every turn once the budget is reached.
        # Items still waiting for text keep their place (they are the newest).
        costs = [self.tokens(item.text) if item.text else 0 for item in self._items]
        total = sum(costs)
        if total <= (self.max_tokens if limit is None else limit):
            return False
        texts = [index for index, item in enumerate(self._items) if item.text]
        newest_text = texts[-1] if texts else len(self._items)
        keep_from = 0
        while total > self.max_tokens // 2 and keep_from < newest_text:
            total -= costs[keep_from]
            keep_from += 1
        del self._items[:keep_from]
        return keep_from > 0


def heard_text(spoken: Sequence[tuple[str, float]], audio_ms: float) -> str:
    """The text of the phrases heard in the first ``audio_ms`` of their audio.

    Whole phrases up to ``audio_ms``; of the phrase playing then, the same fraction of its
    characters as of its audio, cut back to a word boundary (a half word was not heard).
    """
    heard: list[str] = []
    elapsed = 0.0
    for text, ms in spoken:
        if elapsed + ms <= audio_ms:
            heard.append(text)
            elapsed += ms
            continue
        fraction = (audio_ms - elapsed) / ms if ms > 0 else 0.0
        cut = int(len(text) * max(0.0, fraction))
        if cut < len(text) and not text[cut : cut + 1].isspace():
            cut = text.rfind(" ", 0, cut) if cut > 0 else 0
        partial = text[: max(cut, 0)].strip()
        if partial:
            heard.append(partial)
        break
    return " ".join(heard)
