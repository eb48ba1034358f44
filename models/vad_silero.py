"""Silero VAD, streamed frame by frame, on the ONNX file that ships inside faster-whisper.

faster-whisper already depends on onnxruntime and bundles Silero v6 for its ``vad_filter``, so the
realtime path gets a good VAD with no extra download. faster-whisper runs the model over a whole
file at once; a live session needs it one 32 ms frame at a time, so we feed the model the way
faster-whisper does (each 512-sample window prefixed by the previous window's last 64 samples,
the LSTM state ``h``/``c`` carried from call to call) but across calls instead of within one.

One intra-op thread: a frame costs well under a millisecond, and more threads would only contend
with STT, LLM and TTS for the CPU. The ONNX session is shared by ``fork()``s (onnxruntime's
``run`` is thread-safe); the recurrent state is not, so every audio stream needs its own fork.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InvalidInput, ModelLoadError, StageError
from pipeline.types import Float32Array
from pipeline.vad import VAD

_CONTEXT_SAMPLES = 64  # samples of the previous window the model sees before each frame
_STATE_SHAPE = (1, 1, 128)


def default_model_path() -> Path:
    """``faster_whisper/assets/silero_vad_v6.onnx`` (located without importing faster-whisper,
    which would pull in CTranslate2)."""
    import importlib.util

    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "Silero VAD ships inside faster-whisper, which is not installed: pip install "
            "faster-whisper",
            stage="vad",
            backend="silero",
        )
    return Path(spec.origin).parent / "assets" / "silero_vad_v6.onnx"


class SileroVAD(VAD):
    """Silero VAD v6 behind the ``VAD`` contract: 512-sample frames at 16 kHz.

    Construction is cheap; ``load()`` builds the ONNX session (blocking, tens of ms) and
    ``probability`` loads on first use if nobody called it.

    Args:
        path: The ``.onnx`` file (default: the one inside faster-whisper).

    Raises:
        ModelLoadError: (from ``load``) the file is missing or not a Silero model.
    """

    name = "silero"
    sample_rate = 16_000
    frame_samples = 512

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._shared: list[Any] = [None]  # one ONNX session, shared with forks (loaded lazily)
        self._load_lock = threading.Lock()
        self.reset()

    def load(self) -> None:
        """Blocking: build the ONNX session (idempotent, thread-safe)."""
        self._ensure_session()

    def fork(self) -> SileroVAD:
        """A VAD for another stream with fresh state, sharing this one's ONNX session."""
        twin = SileroVAD(self.path)
        twin._shared = self._shared
        twin._load_lock = self._load_lock
        return twin

    def reset(self) -> None:
        """Zero the recurrent state and the context: the next frame starts a new stream."""
        self._h = np.zeros(_STATE_SHAPE, np.float32)
        self._c = np.zeros(_STATE_SHAPE, np.float32)
        self._context = np.zeros(_CONTEXT_SAMPLES, np.float32)

    def probability(self, frame: Float32Array) -> float:
        """Blocking: speech probability of the stream's next 512-sample frame.

        Raises:
            InvalidInput: not a 1-D array of 512 samples.
            StageError: onnxruntime failed.
        """
        if frame.ndim != 1 or len(frame) != self.frame_samples:
            raise InvalidInput(
                f"a VAD frame is {self.frame_samples} samples at {self.sample_rate} Hz; got "
                f"shape {frame.shape}",
                param="audio",
            )
        session = self._ensure_session()
        window = np.concatenate([self._context, frame.astype(np.float32, copy=False)])
        try:
            out, h, c = session.run(None, {"input": window[None, :], "h": self._h, "c": self._c})
        except Exception as exc:  # onnxruntime's errors share no importable base class
            raise StageError(
                f"Silero VAD failed ({type(exc).__name__}: {exc})",
                stage="vad",
                backend=self.name,
                retryable=False,
            ) from exc
        self._h, self._c = h, c
        self._context = window[-_CONTEXT_SAMPLES:].copy()
        return float(out.reshape(-1)[0])

    def _ensure_session(self) -> Any:
        session = self._shared[0]
        if session is not None:
            return session
        with self._load_lock:
            if self._shared[0] is None:
                self._shared[0] = self._load_session()
            return self._shared[0]

    def _load_session(self) -> Any:
        import onnxruntime

        path = self.path or default_model_path()
        if not path.is_file():
            raise ModelLoadError(
                f"Silero VAD model not found at {path}: reinstall faster-whisper, or point the "
                "VAD at a silero_vad .onnx file",
                stage="vad",
                backend=self.name,
            )
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1  # a frame is tiny: more threads only contend with STT/LLM
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 4
        try:
            session = onnxruntime.InferenceSession(
                str(path), providers=["CPUExecutionProvider"], sess_options=opts
            )
        except Exception as exc:  # InvalidProtobuf, Fail...: no common importable base
            raise ModelLoadError(
                f"could not load the Silero VAD model {path} ({type(exc).__name__}: {exc})",
                stage="vad",
                backend=self.name,
            ) from exc
        names = {i.name for i in session.get_inputs()}
        if names != {"input", "h", "c"}:
            raise ModelLoadError(
                f"{path} is not a Silero VAD v6 model (inputs {sorted(names)}, expected "
                "input, h, c)",
                stage="vad",
                backend=self.name,
            )
        return session
