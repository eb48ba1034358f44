"""The voxline exception tree.

Every error a stage, the pipeline or the server raises on purpose is one of these::

    VoxlineError
     ├── InvalidInput            the caller's mistake: a 4xx, never retried, never a fallback
     │    └── AudioDecodeError   bytes that are not audio we can decode (or exceed a limit)
     └── StageError(stage, backend, retryable)
          ├── EngineUnavailable  the engine cannot serve now (not installed, process died, refused)
          ├── EngineTimeout      a deadline passed (first output, gap between chunks, whole call)
          ├── EngineOverloaded   out of memory, a full queue, HTTP 429/503 from a hosted peer
          ├── ModelLoadError     weights missing, offline, corrupt: names the reference and the fix
          └── InvalidToolCall    the model's function call broke its schema, even after a repair

Engines translate their library's exceptions at the boundary (``raise EngineTimeout(...) from e``)
so nothing above ``models/`` ever needs to know an engine's exception types, and nothing anywhere
branches on message text. ``retryable`` tells a fallback chain whether the next backend may be
tried with the same input: it is true for every StageError unless the failure would repeat on any
backend (a ModelLoadError is retryable: this backend cannot load, another may).
"""

from __future__ import annotations

from typing import Literal

Stage = Literal["stt", "llm", "tts", "vad", "pipeline"]


class VoxlineError(Exception):
    """Base class of every error voxline raises on purpose."""


class InvalidInput(VoxlineError):
    """The caller sent something we will not process (a 4xx).

    Args:
        message: What is wrong, phrased for the caller.
        param: The request field at fault, if any (the OpenAI error shape's ``param``).
        code: A short machine-readable code, e.g. ``"audio_too_long"``.
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class AudioDecodeError(InvalidInput):
    """Audio that cannot be decoded, is of an unsupported format, or breaks a decoding limit."""


class StageError(VoxlineError):
    """An engine failed to serve a request.

    Args:
        message: What happened.
        stage: Which pipeline stage failed.
        backend: The backend name (e.g. ``"whisper:cpu"``, ``"hosted"``).
        retryable: Whether another backend (or a later attempt) may succeed with the same input.
    """

    default_retryable = True

    def __init__(
        self,
        message: str,
        *,
        stage: Stage,
        backend: str,
        retryable: bool | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.stage = stage
        self.backend = backend
        self.retryable = self.default_retryable if retryable is None else retryable

    def __str__(self) -> str:
        return f"[{self.stage}/{self.backend}] {self.message}"


class EngineUnavailable(StageError):
    """The engine cannot serve right now: not installed, its process died, connection refused."""


class EngineTimeout(StageError):
    """A deadline passed: time to first output, the gap between chunks, or the whole call."""


class EngineOverloaded(StageError):
    """Out of (GPU) memory, a full queue, or a hosted peer answering 429/503."""


class ModelLoadError(StageError):
    """Weights are missing, unreachable offline or corrupt. The message names the reference and
    the fix; retrying the same backend will not help, another backend might."""


class InvalidToolCall(StageError):
    """The model called a function with arguments that do not match its schema (or a function
    that was not offered), and the one repair attempt did not fix it. Not retryable: the call
    has been streamed, and another backend would start the reply over. HTTP 502: the server
    is fine, its model's output was not."""

    default_retryable = False

    def __init__(self, message: str, *, backend: str, call_id: str, name: str) -> None:
        super().__init__(message, stage="llm", backend=backend)
        self.call_id = call_id
        self.name = name
