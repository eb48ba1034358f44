"""A chat model on llama.cpp (llama-cpp-python), streamed token by token.

llama.cpp runs a quantized GGUF file as it is: the packaged SmolLM2 Q4_1 loads in well under a
second, with no dequantized copy, and decodes several times faster than transformers on a CPU.
It is optional (the ``llama`` extra) because llama-cpp-python ships as source only and takes
minutes to compile.

We format the chat ourselves with llama-cpp-python's own Jinja formatter (the one
``create_chat_completion`` uses for a GGUF that carries a chat template) and call
``create_completion`` with the tokens, rather than ``create_chat_completion``. That tells us the
prompt's length before any work (a conversation too long for the context is the caller's error,
and ``count_tokens`` trims history with the same template), and it lets us pass a stopping
criterion, which ``create_chat_completion`` drops: it runs after every sampled token, so it counts
the completion tokens (the stream reports no usage) and ends generation the moment the consumer
goes away.

A ``Llama`` object is one context and not thread-safe: the engine opens ``capacity`` of them
over the same file and decodes that many replies at once, each on its own (``_llama_pool``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from models._lazy import LazyModel
from models._llama_decode import Decode
from models._llama_pool import ContextPool
from models._tool_prompt import (
    CALL_PREFIX,
    TOOL_OPEN,
    arguments_prefix,
    chat_dicts,
    name_grammar,
    native_tools,
)
from models.weights import resolve
from pipeline import scheduler
from pipeline.errors import (
    EngineOverloaded,
    EngineUnavailable,
    InvalidInput,
    ModelLoadError,
    StageError,
)
from pipeline.offload import iterate_in_thread
from pipeline.settings import LLMSettings, llm_threads
from pipeline.stages import LLM
from pipeline.stops import StopFilter
from pipeline.tool_calls import new_call_id, offered
from pipeline.types import (
    ForcedTool,
    FunctionTool,
    GenerationParams,
    LLMCapabilities,
    Message,
    TextDelta,
    ToolCallDelta,
    Usage,
)

log = logging.getLogger("voxline.llm.llamacpp")

THREAD_NAME = "llm-llamacpp"
"""Name of the worker thread of every reply (tests and debuggers find it by it)."""

INSTALL_HINT = "pip install 'voxline[llama]'"


@dataclass(frozen=True, slots=True)
class _Loaded:
    llama: Any  # llama_cpp.Llama: the first context (tokenizer, chat template metadata)
    pool: ContextPool  # every context, ``llama`` among them
    formatter: Any  # llama_cpp.llama_chat_format.Jinja2ChatFormatter
    context_tokens: int
    native_tools: bool  # the chat template renders functions and calls itself


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    llama_cpp = _import_llama_cpp()  # loads the shared library, no weights
    return "cuda" if llama_cpp is not None and llama_cpp.llama_supports_gpu_offload() else "cpu"


class LlamaCppLLM(LLM):
    """llama.cpp behind the LLM contract.

    Args:
        settings: The ``llm`` section of the settings tree. ``model`` must be a ``.gguf`` file
            (a path or ``packaged:<name>``); ``context_tokens`` is llama.cpp's ``n_ctx``.

    ``name`` is ``llamacpp:<device>``. On ``cuda`` every layer is offloaded to the GPU. The
    engine decodes ``capacity`` replies at once, each in its own context; the threads are split
    between them (``threads`` for decoding, the cores for prompts, divided by ``capacity``).
    """

    def __init__(self, settings: LLMSettings) -> None:
        device = _pick_device(settings.device)
        super().__init__(name=f"llamacpp:{device}", device=device)
        self.settings = settings
        self.capabilities = LLMCapabilities(
            streaming=True, context_tokens=settings.context_tokens, tools=True
        )
        self.load_seconds: float | None = None
        self._model = LazyModel(self._load, stage="llm", backend=self.name)
        self._grammars: dict[str, Any] = {}  # compiled grammars by schema
        self._grammar_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._model.loaded

    def load(self) -> None:
        """Blocking: load the GGUF file (idempotent, thread-safe).

        Raises:
            EngineUnavailable: llama-cpp-python is not installed, it was built without GPU
                support and ``cuda`` was asked for, or the engine is closed.
            ModelLoadError: the reference is not an existing ``.gguf`` file, the file does not
                load, or it carries no chat template.
        """
        self._model.get()

    def warmup(self) -> None:
        """Blocking: load the model, generate two tokens, and one forced function call: the
        first grammar-constrained decode of a model costs seconds (measured 4-7 s for SmolLM2
        on 2 cores), every later one a few milliseconds per token."""
        warm = GenerationParams(max_tokens=2, temperature=0.0)
        call = dataclasses.replace(warm, tools=(_WARM_TOOL,), tool_choice=ForcedTool("warm"))
        for index in range(len(self._model.get().pool.llamas)):  # every context
            for params in (warm, call):
                for _ in self._generate([Message("user", "Hi")], params, threading.Event(), index):
                    pass

    async def prefill(
        self, messages: Sequence[Message], params: GenerationParams | None = None
    ) -> bool:
        """Read ``messages``'s prompt into llama.cpp's KV cache, in a worker thread.

        llama.cpp reuses the longest common prefix of the previous prompt (and what it
        generated) with the next one; the rendered chat of a conversation is a prefix of the
        next turn's but for the last few tokens of its assistant cue, so the next call reads only
        the new user message. Skipped (``False``) before the model is loaded and while a reply
        is decoding in every context: each cache is that reply's. With several contexts it
        is read into the one the conversation's last reply used (``_llama_pool``), where its
        next turn will go.
        """
        if not self._model.loaded:
            return False
        messages, params = list(messages), params or GenerationParams()

        def run() -> bool:
            # The thread takes the engine's slot over when it runs, not before: a prefill
            # cancelled while queued for a thread never runs, and the chain gives the slot back
            # (to_thread runs this in a copy of the caller's context, which holds the slot).
            return self._prefill(messages, params, scheduler.delegate())

        return await asyncio.to_thread(run)

    def _prefill(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        free_slot: Callable[[], None] | None,
    ) -> bool:
        try:
            loaded = self._model.get()
            prompt, _ = self._prompt(loaded, messages, offered(params))
            if len(prompt) >= loaded.context_tokens:
                return False
            with loaded.pool.take(messages, threading.Event(), wait=False) as llama:
                if llama is None:
                    return False
                llama.create_completion(prompt=prompt, max_tokens=1, temperature=0.0)
                return True
        finally:
            if free_slot is not None:
                free_slot()

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Blocking: the prompt length of ``messages`` with the chat template applied.

        For history trimming against ``capabilities.context_tokens``; loads the model if needed.
        """
        return len(self._prompt(self._model.get(), messages)[0])

    async def aclose(self) -> None:
        """Free the model now, each context still decoding a reply when that reply ends.

        A closed engine does not load again: later calls raise ``EngineUnavailable``.
        """
        loaded = self._model.close()
        if loaded is not None:
            # freeing a context under a running decode would crash the process
            loaded.pool.close()

    # -- loading ---------------------------------------------------------------------------

    def _load(self) -> _Loaded:
        llama_cpp = _import_llama_cpp()
        if llama_cpp is None:
            raise EngineUnavailable(
                f"the llamacpp engine needs llama-cpp-python: {INSTALL_HINT} "
                "(a source build of a few minutes), or set VOXLINE_LLM__ENGINE=transformers",
                stage="llm",
                backend=self.name,
                retryable=True,
            )
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        ref = self.settings.model
        try:
            resolved = resolve(ref, stage="llm")
        except ModelLoadError as exc:  # re-raised under our name: the chain reports backends
            raise ModelLoadError(exc.message, stage="llm", backend=self.name) from exc
        path = resolved.path
        if path is None or not path.is_file() or path.suffix != ".gguf":
            raise ModelLoadError(
                f"model {ref!r} is not a .gguf file: the llamacpp engine runs GGUF files only "
                "(a path or packaged:<name>); use the transformers engine for hub ids and "
                "model directories",
                stage="llm",
                backend=self.name,
            )
        if self.device == "cuda" and not llama_cpp.llama_supports_gpu_offload():
            raise EngineUnavailable(
                "LLM device is 'cuda' but llama-cpp-python was built without GPU support: "
                "rebuild it with CMAKE_ARGS='-DGGML_CUDA=on', or set VOXLINE_LLM__DEVICE=cpu",
                stage="llm",
                backend=self.name,
                retryable=True,
            )
        start = time.perf_counter()
        count = self.settings.capacity
        llamas: list[Any] = []
        try:
            for _ in range(count):
                llamas.append(
                    llama_cpp.Llama(
                        model_path=str(path),
                        n_ctx=self.settings.context_tokens,
                        # several contexts decode at once: together they keep to the threads
                        n_threads=max(1, llm_threads(self.settings.threads) // count),
                        n_threads_batch=max(1, (os.cpu_count() or 1) // count),
                        n_gpu_layers=-1 if self.device == "cuda" else 0,
                        verbose=False,
                    )
                )
        except (ValueError, RuntimeError, OSError) as exc:
            for opened in llamas:
                opened.close()
            raise ModelLoadError(
                f"model {ref!r} ({path}) did not load ({type(exc).__name__}: {exc}): the file "
                "is corrupt, of an architecture this llama.cpp build does not know, or too big",
                stage="llm",
                backend=self.name,
            ) from exc
        llama = llamas[0]
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            for opened in llamas:
                opened.close()
            raise ModelLoadError(
                f"model {ref!r} has no chat template in its GGUF metadata: use an "
                "instruction-tuned (chat) model",
                stage="llm",
                backend=self.name,
            )
        eos, bos = llama.token_eos(), llama.token_bos()
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llama.detokenize([eos], special=True).decode("utf-8", "replace"),
            bos_token=llama.detokenize([bos], special=True).decode("utf-8", "replace"),
            stop_token_ids=[eos],
        )
        self.load_seconds = time.perf_counter() - start
        log.info(
            "loaded %s (%s) on %s, %d context(s), in %.2f s",
            ref,
            path,
            self.device,
            count,
            self.load_seconds,
        )
        self.capabilities = LLMCapabilities(
            streaming=True, context_tokens=llama.n_ctx(), tools=True
        )
        pool = ContextPool(llamas)
        return _Loaded(llama, pool, formatter, llama.n_ctx(), native_tools(template))

    # -- generation ------------------------------------------------------------------------

    async def _stream(
        self, messages: list[Message], params: GenerationParams
    ) -> AsyncIterator[TextDelta]:
        items = iterate_in_thread(
            lambda stop: self._generate(messages, params, stop), thread_name=THREAD_NAME
        )
        async with contextlib.aclosing(items):
            async for delta in items:
                yield delta

    def _prompt(
        self,
        loaded: _Loaded,
        messages: Sequence[Message],
        tools: Sequence[FunctionTool] = (),
    ) -> tuple[list[int], list[str]]:
        """The prompt's tokens and the template's own stop strings (its end-of-turn text)."""
        chat, specs = chat_dicts(messages, tools, native=loaded.native_tools)
        result = loaded.formatter(messages=chat, tools=specs)
        tokens: list[int] = loaded.llama.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stops = result.stop if isinstance(result.stop, list) else [result.stop]
        return tokens, [s for s in stops if s]

    def _generate(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        stop: threading.Event,
        context: int | None = None,
    ) -> Iterator[TextDelta]:
        """Worker-thread side: yield text pieces (and a function call's pieces), then the
        usage delta; in the pool's warmest free context, or in context number ``context``."""
        loaded = self._model.get()
        tools = offered(params)
        prompt, template_stops = self._prompt(loaded, messages, tools)
        room = loaded.context_tokens - len(prompt)
        if room < 1:
            raise InvalidInput(
                f"the conversation is {len(prompt)} tokens; this model's context is "
                f"{loaded.context_tokens}",
                param="messages",
                code="context_length_exceeded",
            )
        budget = min(params.max_tokens or self.settings.max_tokens, room)
        with loaded.pool.take(messages, stop, only=context) as llama:
            if llama is None:  # stopped, or closed, while every context was busy
                if stop.is_set():
                    return
                raise EngineUnavailable("the engine is closed", stage="llm", backend=self.name)
            decode = Decode(llama, self.settings, params, stop)
            opening = TOOL_OPEN if tools and params.tool_choice != "auto" else None
            finish: Literal["stop", "length", "tool_calls"] = "stop"
            if opening is None:
                # the reply, as text; with functions offered, until it opens a call
                watch = (TOOL_OPEN,) if tools else ()
                stops = StopFilter((*params.stop, *watch))
                text = ""
                finish = "length"
                for piece_text, reason in decode.run(prompt, budget, template_stops):
                    text += piece_text
                    piece = stops.push(text)
                    if piece:
                        yield TextDelta(piece)
                    if stops.stopped:
                        finish = "stop"
                        break
                    if reason is not None:
                        finish = "length" if reason == "length" else "stop"
                if stop.is_set():
                    return
                piece = stops.flush()
                if piece:
                    yield TextDelta(piece)
                opening = _opened_call(text, params.stop) if tools else None
                ended_on_token = finish == "stop" and not stops.stopped
            if opening is not None:
                yield from self._call(decode, prompt, opening, tools, params, room)
                if stop.is_set():
                    return
                finish, ended_on_token = "tool_calls", True
            # An end of turn (or of a grammar) is a sampled token that is not part of the reply.
            completion = decode.sampled - 1 if ended_on_token else decode.sampled
            usage = Usage(prompt_tokens=len(prompt), completion_tokens=max(completion, 0))
            yield TextDelta("", usage=usage, finish_reason=finish)

    def _call(
        self,
        decode: Decode,
        prompt: list[int],
        opening: str,
        tools: Sequence[FunctionTool],
        params: GenerationParams,
        room: int,
    ) -> Iterator[TextDelta]:
        """Generate one function call after ``opening`` (the reply so far, up to and including
        ``TOOL_OPEN``): its name under a grammar of the offered names (unless one is forced),
        then its arguments under the grammar of that function's schema, streamed."""
        llama = decode.llama

        def tokens(text: str) -> list[int]:
            more: list[int] = llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            return prompt + more

        so_far = opening + CALL_PREFIX
        forced = params.tool_choice
        if isinstance(forced, ForcedTool):
            name = forced.name
        else:
            grammar = self._grammar("names:" + ",".join(t.name for t in tools), tools)
            said = "".join(t for t, _ in decode.run(tokens(so_far), 24, [], grammar))
            name = said.rstrip().removesuffix('"')
            if decode.stop.is_set() or name not in {t.name for t in tools}:
                return  # stopped, or cut short: the checker reports the missing call
        tool = next(t for t in tools if t.name == name)
        # compiled before the call is announced: a schema llama.cpp cannot turn into a grammar
        # is the request's fault (a 4xx), not a backend failure after the client saw a call
        grammar = self._grammar(json.dumps(tool.parameters, sort_keys=True), tool.parameters)
        call_id = new_call_id()
        yield TextDelta("", tool_call=ToolCallDelta(0, call_id, name, ""))
        so_far += arguments_prefix(name)
        # arguments are not a spoken reply: they get room beyond a voice-sized max_tokens
        limit = min(max(params.max_tokens or self.settings.max_tokens, ARGUMENT_TOKENS), room)
        for piece, _ in decode.run(tokens(so_far), limit, [], grammar):
            if piece:
                yield TextDelta("", tool_call=ToolCallDelta(0, call_id, name, piece))

    def _grammar(self, key: str, spec: Sequence[FunctionTool] | Mapping[str, Any]) -> Any:
        """A compiled grammar: of the offered names, or of one function's parameters schema
        (compiled once per schema: a grammar is parsed into llama.cpp's rules each time)."""
        from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

        with self._grammar_lock:
            grammar = self._grammars.get(key)
            if grammar is None:
                try:
                    if isinstance(spec, Mapping):
                        gbnf = json_schema_to_gbnf(json.dumps(spec))
                    else:
                        gbnf = name_grammar(spec)
                    grammar = LlamaGrammar.from_string(gbnf, verbose=False)
                except Exception as exc:  # llama.cpp's converter asserts on what it lacks
                    raise InvalidInput(
                        "a function's parameters schema uses what llama.cpp's grammar"
                        f" converter does not support ({type(exc).__name__}: {exc})"[:300],
                        param="tools",
                        code="unsupported_schema",
                    ) from exc
                if len(self._grammars) >= 64:  # bounded: clients choose the schemas
                    self._grammars.pop(next(iter(self._grammars)))
                self._grammars[key] = grammar
            return grammar

    def _translate(self, exc: Exception) -> StageError:
        if isinstance(exc, MemoryError):
            return EngineOverloaded(
                f"out of memory: {exc}", stage="llm", backend=self.name, retryable=True
            )
        if isinstance(exc, RuntimeError):  # llama-cpp-python's type for a failed decode
            return EngineUnavailable(
                f"llama.cpp failed: {exc}", stage="llm", backend=self.name, retryable=True
            )
        return super()._translate(exc)


_WARM_TOOL = FunctionTool(
    "warm", parameters={"type": "object", "properties": {"ok": {"type": "boolean"}}}
)

ARGUMENT_TOKENS = 256
"""Least room a function call's arguments get, whatever the reply's ``max_tokens``."""


def _opened_call(text: str, stops: Sequence[str]) -> str | None:
    """The reply up to and including ``TOOL_OPEN`` when it opened a call before any stop
    string of the caller's (``None``: it did not)."""
    at = text.find(TOOL_OPEN)
    if at < 0 or any(0 <= text.find(s) < at for s in stops if s):
        return None
    return text[: at + len(TOOL_OPEN)]
