"""The smallest capable model per turn: pick an LLM tier from cheap signals.

A server may hold several LLM tiers (``VOXLINE_LLM__TIERS``: e.g. ``small`` for small talk, a
larger local model, a hosted one for the hardest), each a fallback chain of its own. The router
sits where knowledge and tools do, between the transcript and the LLM, and decides per turn in
microseconds, from what is known before any model runs:

1. **pinned**: the request named a tier (chat ``model``, ``/v1/turns`` ``tier``, a realtime
   session's ``model``);
2. **tools**: functions are offered (or the conversation is answering a call's result): calls
   need a model that follows a schema and an instruction, the ``tool_tier``;
3. **retrieval**: the knowledge base found passages to ground the answer in
   (``retrieval_hits``), the ``knowledge_tier``;
4. **the transcript**, read by a small rule classifier of the last user message: ``hard``
   (long, or asking to compare, calculate, analyse, write code...: the ``hard_tier``),
   ``long_answer`` (explain, describe, how, why, list...: an answer of several sentences, the
   ``long_answer_tier``), ``question`` (a wh-question or a question mark: facts, which the
   smallest model gets wrong, the ``question_tier``), ``small_talk`` (greetings, thanks, yes/no,
   a few words: the ``default_tier``);
5. otherwise the ``default_tier``.

A tier the policy names but the server does not have falls back to the default tier (the reason
says so). Every result names the tier and the reason (``Route``): ``response.done``'s
``voxline`` object, the ``/v1/turns`` result, the logs and the ``voxline_llm_routes_total``
metric. The fallback chains apply inside each tier as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.errors import InvalidInput
from pipeline.stages import LLM
from pipeline.tool_calls import offered
from pipeline.types import GenerationParams, Message


@dataclass(frozen=True, slots=True)
class Route:
    """Which tier answers a turn, and why.

    Attributes:
        tier: The tier's name.
        reason: ``pinned``, ``tools``, ``retrieval``, ``hard``, ``long_answer``, ``question``,
            ``small_talk``, ``default`` or ``single_tier``; ``+fallback`` is appended when the
            tier the reason asked for is not configured and the default answered.
    """

    tier: str
    reason: str


@dataclass(frozen=True, slots=True)
class RouterPolicy:
    """Which tier each signal sends a turn to (``None``: the signal is ignored).

    Attributes:
        default_tier: Small talk and anything no signal claims.
        tool_tier: Turns with functions offered or a function's result to read.
        knowledge_tier: Turns grounded in retrieved passages.
        hard_tier: Long or hard requests.
        long_answer_tier: Requests for an explanation, a description, a list.
        question_tier: Other questions (facts).
        hard_words: A request of at least this many words is hard.
        long_answer_tokens: A ``max_tokens`` of at least this asks for a long answer.
    """

    default_tier: str = "small"
    tool_tier: str | None = "large"
    knowledge_tier: str | None = "large"
    hard_tier: str | None = "hosted"
    long_answer_tier: str | None = "large"
    question_tier: str | None = "large"
    hard_words: int = 40
    long_answer_tokens: int = 256


_SMALL_TALK = re.compile(
    r"^\W*(hi|hello|hey|good (morning|afternoon|evening|night)|thanks?( you)?|thank you|"
    r"bye|goodbye|see you|ok(ay)?|yes|yeah|no|nope|sure|great|cool|nice|"
    r"how are you|how's it going|what's up|nice to meet you)\b",
    re.IGNORECASE,
)
_HARD = re.compile(
    r"\b(compare|comparison|difference between|pros and cons|analy[sz]e|calculate|compute|"
    r"step by step|prove|derive|write (a |some )?(code|program|function|script|essay|poem)|"
    r"translate|summari[sz]e|trade-?offs?)\b",
    re.IGNORECASE,
)
_LONG = re.compile(
    r"\b(explain|describe|tell me (about|more)|how (do|does|can|should|would|to)|why|"
    r"what are the (steps|ways|reasons)|list|walk me through|overview)\b",
    re.IGNORECASE,
)
_QUESTION = re.compile(
    r"(\?\s*$)|^\W*(what|who|whom|whose|when|where|which|how|is|are|was|were|do|does|did|"
    r"can|could|will|would|should)\b",
    re.IGNORECASE,
)


def classify(text: str, *, hard_words: int = 40) -> str:
    """The rule classifier's label for a user message: ``hard``, ``long_answer``,
    ``question``, ``small_talk`` or ``default``."""
    words = text.split()
    if not words:
        return "default"
    if len(words) >= hard_words or _HARD.search(text):
        return "hard"
    if _LONG.search(text):
        return "long_answer"
    if _SMALL_TALK.match(text) and len(words) <= 6:
        return "small_talk"
    if _QUESTION.search(text):
        return "question"
    return "small_talk" if len(words) <= 3 else "default"


@dataclass(slots=True)
class Router:
    """Picks one of ``tiers`` per turn (see the module docstring).

    Args:
        tiers: The LLM of each tier, by name (each a fallback chain).
        policy: Which tier each signal sends a turn to.
    """

    tiers: Mapping[str, LLM]
    policy: RouterPolicy = field(default_factory=RouterPolicy)

    def __post_init__(self) -> None:
        if not self.tiers:
            raise ValueError("a router needs at least one tier")
        if self.policy.default_tier not in self.tiers:
            raise ValueError(
                f"the default tier {self.policy.default_tier!r} is not one of the tiers: "
                + ", ".join(self.tiers)
            )

    @property
    def names(self) -> tuple[str, ...]:
        """The tiers, default first."""
        default = self.policy.default_tier
        return (default, *(n for n in self.tiers if n != default))

    def check_pin(self, tier: str | None, *, param: str) -> str | None:
        """``tier`` if it names a tier (``None`` passes).

        Raises:
            InvalidInput: an unknown tier.
        """
        if tier is not None and tier not in self.tiers:
            raise InvalidInput(
                f"unknown LLM tier {tier[:64]!r}; tiers: {', '.join(self.names)}",
                param=param,
                code="invalid_value",
            )
        return tier

    def route(
        self,
        messages: Sequence[Message],
        params: GenerationParams | None = None,
        *,
        pinned: str | None = None,
        retrieval_hits: int | None = None,
    ) -> Route:
        """The tier for a turn answering ``messages``."""
        if pinned is not None and pinned in self.tiers:
            return Route(pinned, "pinned")
        if len(self.tiers) == 1:
            return Route(self.policy.default_tier, "single_tier")
        p = self.policy
        params = params or GenerationParams()
        last = next((m for m in reversed(messages) if m.role in ("user", "tool")), None)
        if offered(params) or (last is not None and last.role == "tool"):
            return self._to(p.tool_tier, "tools")
        if retrieval_hits:
            return self._to(p.knowledge_tier, "retrieval")
        label = classify(last.content if last is not None else "", hard_words=p.hard_words)
        if label != "hard" and (params.max_tokens or 0) >= p.long_answer_tokens:
            label = "long_answer"
        wanted = {
            "hard": (p.hard_tier, p.long_answer_tier),  # no hosted tier: the larger local one
            "long_answer": (p.long_answer_tier,),
            "question": (p.question_tier,),
        }.get(label, ())
        return self._to(next((t for t in wanted if t in self.tiers), wanted[:1] or None), label)

    def llm(self, route: Route) -> LLM:
        """The LLM of the routed tier."""
        return self.tiers[route.tier]

    def _to(self, tier: str | tuple[str | None, ...] | None, reason: str) -> Route:
        if isinstance(tier, tuple):
            tier = tier[0]
        if tier is None or tier == self.policy.default_tier:
            return Route(self.policy.default_tier, reason)
        if tier not in self.tiers:
            return Route(self.policy.default_tier, f"{reason}+fallback")
        return Route(tier, reason)
