"""One reply's completions in one llama.cpp context, counting the tokens they sample.

llama-cpp-python's stream reports no usage, so a stopping criterion, called after each sampled
token, counts them; it also ends the decode at the next token once the consumer went away.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pipeline.settings import LLMSettings
from pipeline.types import GenerationParams


class Decode:
    """The completions of one reply in one context, counting the tokens they sample.

    Args:
        llama: The context (a ``llama_cpp.Llama`` this reply holds).
        settings: The engine's settings (sampling defaults).
        params: The call's sampling options.
        stop: Set when the consumer goes away: each completion ends at its next token.
    """

    def __init__(
        self, llama: Any, settings: LLMSettings, params: GenerationParams, stop: Any
    ) -> None:
        self.llama, self.settings, self.params, self.stop = llama, settings, params, stop
        self.sampled = 0

    def run(
        self, prompt: list[int], max_tokens: int, stops: list[str], grammar: Any = None
    ) -> Iterator[tuple[str, str | None]]:
        """One completion of ``prompt``: ``(text, finish_reason)`` per streamed chunk."""
        from llama_cpp import StoppingCriteriaList

        seen = 0  # the longest context the stopping criterion was shown
        stop = self.stop

        def after_each_token(ids: Any, _logits: Any) -> bool:
            # Called after each sampled token with the context before it (and once more at the
            # end, with the same length), so the context's length counts the sampled tokens.
            nonlocal seen
            seen = max(seen, len(ids))
            return bool(stop.is_set())  # True ends llama.cpp's decode loop before the next token

        cfg, params = self.settings, self.params
        chunks = self.llama.create_completion(
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=cfg.temperature if params.temperature is None else params.temperature,
            top_p=cfg.top_p if params.top_p is None else params.top_p,
            # llama.cpp's extra samplers off, so a setting means the same on both engines
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
            seed=params.seed,
            stop=stops,  # ours are applied by the caller, so "stop" here means end of turn
            stopping_criteria=StoppingCriteriaList([after_each_token]),
            grammar=grammar,
            stream=True,
        )
        try:
            with contextlib.closing(chunks):
                for chunk in chunks:
                    if stop.is_set():
                        return
                    choice = chunk["choices"][0]
                    yield choice["text"], choice["finish_reason"]
        finally:
            self.sampled += seen - len(prompt) + 1 if seen else 0
