"""A chat model on transformers (PyTorch), streamed token by token.

transformers is the engine that runs everywhere the pipeline does: the packaged SmolLM2 GGUF on a
two-core CPU (dequantized once and cached, see ``models._gguf_cache``) and a bf16 hub model such
as Qwen2.5-7B-Instruct on a GPU, with nothing to compile.

We drive the decode loop ourselves instead of calling ``model.generate`` with a
``TextIteratorStreamer``: ``generate`` blocks until the reply is done, so streaming through it
needs a second thread and cancelling it needs a ``StoppingCriteria``. Our loop is a plain
generator drained by ``iterate_in_thread``: one worker thread per reply, the stop event checked
before every forward pass, so a cancelled reply costs at most one more token.

Loading is explicit and blocking (``load()``, run off the event loop by ``start()``); a reply
that finds the model unloaded loads it in its worker thread, so scripts and tests need no
registry. Replies on one engine are serialized: on a CPU two concurrent decodes only share the
same cores, and on a GPU one model instance is not worth racing for.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from safetensors import SafetensorError

from models._gguf_cache import load_gguf
from models._lazy import LazyModel, decoding_slot
from models.weights import ResolvedModel, hub_error, resolve
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
from pipeline.types import GenerationParams, LLMCapabilities, Message, TextDelta, Usage

log = logging.getLogger("voxline.llm.transformers")

THREAD_NAME = "llm-transformers"
"""Name of the worker thread of every reply (tests and debuggers find it by it)."""

_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError)
# One model is read at a time in this process. Two LLM tiers start concurrently
# (models.registry.start_engines), and transformers' loading is not thread-safe: its lazy
# imports can hand a thread a half-imported module ("cannot import name
# 'AutoModelForCausalLM'"), and it builds a model on the "meta" device by patching torch
# globally, so the other thread's model comes out without data ("Cannot copy out of meta
# tensor"). Seen with two tiers of the packaged model; loading them in turn costs a second.
_LOAD_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class _Loaded:
    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    eos_ids: frozenset[int]
    context_tokens: int
    forward_args: dict[str, Any]  # keyword arguments of every forward pass
    cache_arg: str  # the KV cache's name in forward() and its output (renamed in transformers 5)


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch  # needed to answer; loads no weights

    return "cuda" if torch.cuda.is_available() else "cpu"


def _pick_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


class TransformersLLM(LLM):
    """A transformers causal LM behind the LLM contract.

    Args:
        settings: The ``llm`` section of the settings tree.
        cache_dir: ``Settings.cache_dir``; dequantized GGUF weights go to ``<cache_dir>/gguf``
            unless ``settings.gguf_cache_dir`` says otherwise.
        offline: Never contact the model hub (``Settings.hf_offline``): a hub id must already be
            in the local Hugging Face cache.

    ``name`` is ``transformers:<device>``. After ``load()``, ``load_seconds`` and
    ``loaded_from_cache`` (``None`` unless the model is a GGUF file) tell how the start went.
    """

    def __init__(self, settings: LLMSettings, *, cache_dir: Path, offline: bool = False) -> None:
        device = _pick_device(settings.device)
        super().__init__(name=f"transformers:{device}", device=device)
        self.settings = settings
        self.offline = offline
        self.gguf_cache_dir = settings.gguf_cache_dir or cache_dir / "gguf"
        self.capabilities = LLMCapabilities(streaming=True, context_tokens=settings.context_tokens)
        self.load_seconds: float | None = None
        self.loaded_from_cache: bool | None = None
        self._model = LazyModel(self._load, stage="llm", backend=self.name)
        self._generate_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._model.loaded

    def load(self) -> None:
        """Blocking: load the model and tokenizer (idempotent, thread-safe).

        Raises:
            ModelLoadError: the reference does not resolve, the files do not load, the model has
                no chat template, or a hub id is neither cached nor downloadable.
            EngineUnavailable: CUDA was asked for but torch sees no CUDA device, or the engine
                is closed.
            EngineOverloaded: out of memory while loading.
        """
        self._model.get()

    def warmup(self) -> None:
        """Blocking: load the model and generate two tokens (first-call allocations, kernels)."""
        warm = GenerationParams(max_tokens=2, temperature=0.0)
        for _ in self._generate([Message("user", "Hi")], warm, threading.Event()):
            pass

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Blocking: the prompt length of ``messages`` with the chat template applied.

        For history trimming against ``capabilities.context_tokens``; loads the model if needed.
        """
        return len(self._prompt_ids(self._model.get(), messages))

    async def aclose(self) -> None:
        """Drop the model; a reply still running keeps it alive until it ends.

        A closed engine does not load again: later calls raise ``EngineUnavailable``.
        """
        self._model.close()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    # -- loading ---------------------------------------------------------------------------

    def _load(self) -> _Loaded:
        import torch

        ref = self.settings.model
        try:
            resolved = resolve(ref, stage="llm")
        except ModelLoadError as exc:  # re-raised under our name: the chain reports backends
            raise self._load_error(exc.message) from exc
        if self.device == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailable(
                "LLM device is 'cuda' but torch sees no CUDA device: set VOXLINE_LLM__DEVICE=cpu "
                "(or auto), or install the CUDA build of torch",
                stage="llm",
                backend=self.name,
                retryable=True,
            )
        if self.device == "cpu":
            # process-wide: torch has one pool
            torch.set_num_threads(llm_threads(self.settings.threads))
        dtype = _pick_dtype(self.settings.dtype, self.device)
        start = time.perf_counter()
        try:
            model, tokenizer = self._read_weights(resolved, dtype)
            model.to(self.device)
        except _LOAD_ERRORS as exc:
            if isinstance(exc, torch.OutOfMemoryError):
                raise self._translate(exc) from exc
            raise self._load_error(
                f"model {ref!r} ({resolved.location}) did not load ({type(exc).__name__}: {exc}): "
                "the files are corrupt or not a causal language model transformers knows"
            ) from exc
        model.eval()
        if not getattr(tokenizer, "chat_template", None):
            raise self._load_error(
                f"model {ref!r} has no chat template: use an instruction-tuned (chat) model"
            )
        self.load_seconds = time.perf_counter() - start
        where = f"{resolved.location} on {self.device}/{dtype}"
        log.info("loaded %s (%s) in %.2f s", ref, where, self.load_seconds)
        eos = model.generation_config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        if tokenizer.eos_token_id is not None:
            eos_ids.add(int(tokenizer.eos_token_id))
        trained = getattr(model.config, "max_position_embeddings", None)
        context = min(self.settings.context_tokens, int(trained or self.settings.context_tokens))
        self.capabilities = LLMCapabilities(streaming=True, context_tokens=context)
        accepted = inspect.signature(model.forward).parameters
        # Logits for the last position only: the prompt's would cost prompt x vocabulary floats.
        forward_args = {"use_cache": True, "logits_to_keep": 1}
        if "logits_to_keep" not in accepted:  # before transformers 4.50
            forward_args = {"use_cache": True, "num_logits_to_keep": 1}
        cache_arg = "cache" if "cache" in accepted else "past_key_values"
        return _Loaded(model, tokenizer, frozenset(eos_ids), context, forward_args, cache_arg)

    def _load_error(self, message: str) -> ModelLoadError:
        return ModelLoadError(message, stage="llm", backend=self.name)

    def _read_weights(self, resolved: ResolvedModel, dtype: Any) -> tuple[Any, Any]:
        with _LOAD_LOCK:  # see its comment
            return self._read_weights_locked(resolved, dtype)

    def _read_weights_locked(self, resolved: ResolvedModel, dtype: Any) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # Straight onto the GPU: a 7B model staged in host memory first would need 15 GB more.
        placement = {"device_map": self.device} if self.device == "cuda" else {}
        path = resolved.path
        if path is None:  # a hub id
            try:
                hub_id = str(resolved.hub_id)
                model = AutoModelForCausalLM.from_pretrained(
                    hub_id, dtype=dtype, local_files_only=self.offline, **placement
                )
                tokenizer = AutoTokenizer.from_pretrained(hub_id, local_files_only=self.offline)
            except OSError as exc:  # transformers' one type for "could not get the files"
                raise hub_error(resolved.ref, stage="llm", backend=self.name, cause=exc) from exc
            return model, tokenizer
        if path.is_file() and path.suffix == ".gguf":
            loaded = load_gguf(path, self.gguf_cache_dir, dtype=dtype)
            self.loaded_from_cache = loaded.from_cache
            return loaded.model, loaded.tokenizer
        if path.is_dir():
            return (
                AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **placement),
                AutoTokenizer.from_pretrained(path),
            )
        raise self._load_error(
            f"model {resolved.ref!r} ({path}) is neither a .gguf file nor a model directory"
        )

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

    def _prompt_ids(self, loaded: _Loaded, messages: Sequence[Message]) -> list[int]:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        prompt = loaded.tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=False
        )
        # The template already wrote the special tokens; adding them again would double BOS.
        ids: list[int] = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return ids

    def _generate(
        self, messages: Sequence[Message], params: GenerationParams, stop: threading.Event
    ) -> Iterator[TextDelta]:
        """Worker-thread side: yield text pieces, then the usage delta."""
        import torch

        loaded = self._model.get()
        prompt_ids = self._prompt_ids(loaded, messages)
        room = loaded.context_tokens - len(prompt_ids)
        if room < 1:
            raise InvalidInput(
                f"the conversation is {len(prompt_ids)} tokens; this model's context is "
                f"{loaded.context_tokens}",
                param="messages",
                code="context_length_exceeded",
            )
        max_new = min(params.max_tokens or self.settings.max_tokens, room)
        cfg = self.settings
        temperature = cfg.temperature if params.temperature is None else params.temperature
        top_p = cfg.top_p if params.top_p is None else params.top_p
        rng = None if params.seed is None else torch.Generator(self.device).manual_seed(params.seed)
        with decoding_slot(self._generate_lock, stop) as ours, torch.inference_mode():
            if not ours:
                return
            inputs = torch.tensor([prompt_ids], device=self.device)
            kv: dict[str, Any] = {}  # the KV cache from the previous step
            generated: list[int] = []
            stops = StopFilter(params.stop)
            text = ""
            finish: Literal["stop", "length"] = "length"
            for _ in range(max_new):
                if stop.is_set():
                    return
                out = loaded.model(input_ids=inputs, **loaded.forward_args, **kv)
                kv = {loaded.cache_arg: getattr(out, loaded.cache_arg)}
                token = _sample(out.logits[0, -1], temperature, top_p, rng)
                if token in loaded.eos_ids:
                    finish = "stop"
                    break
                generated.append(token)
                inputs = torch.tensor([[token]], device=self.device)
                # Re-decoding the whole reply (not the new token alone) keeps multi-token
                # characters and the tokenizer's spaces right; replies are short, so it is cheap.
                text = loaded.tokenizer.decode(generated, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    continue
                piece = stops.push(text)
                if piece:
                    yield TextDelta(piece)
                if stops.stopped:
                    finish = "stop"
                    break
            if not stops.stopped:  # release what was held back: a stop-string prefix, a "\ufffd"
                piece = stops.push(text)
                finish = "stop" if stops.stopped else finish
                piece += stops.flush()
                if piece:
                    yield TextDelta(piece)
            usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(generated))
            yield TextDelta("", usage=usage, finish_reason=finish)

    def _translate(self, exc: Exception) -> StageError:
        import torch

        if isinstance(exc, torch.OutOfMemoryError | MemoryError):
            return EngineOverloaded(
                f"out of memory: {exc}", stage="llm", backend=self.name, retryable=True
            )
        if isinstance(exc, RuntimeError):  # torch's type for kernel and device failures
            return EngineUnavailable(
                f"torch failed: {exc}", stage="llm", backend=self.name, retryable=True
            )
        return super()._translate(exc)


def _sample(logits: Any, temperature: float, top_p: float, rng: Any) -> int:
    """The next token: greedy at temperature 0, else nucleus sampling."""
    import torch

    if temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=rng))
    sorted_probs, order = torch.sort(probs, descending=True)
    # Keep the smallest head whose mass reaches top_p (the first token always stays).
    outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
    sorted_probs[outside] = 0.0
    return int(order[torch.multinomial(sorted_probs, 1, generator=rng)])
