"""A stand-in GPT-SoVITS *checkout* for the adapter's tests.

Not a stage double: the adapter, its pool and the real worker script run it in real worker
processes, as they run upstream; it replaces only upstream's ``TTS_infer_pack.TTS`` module.

The real upstream needs its own venv, gigabytes of weights and seconds per sentence on a CPU; the
adapter's own behaviour (process start-up, the pipe protocol, streaming, cancel, crash, timeout,
the pool) does not. ``make_stub_checkout`` writes a directory laid out like upstream's checkout
(``GPT_SoVITS/TTS_infer_pack/TTS.py`` importable as ``TTS_infer_pack.TTS`` plus a top-level
``tools`` package, so both ``PYTHONPATH`` entries are needed) whose ``TTS_Config`` / ``TTS`` have
upstream's API surface and quirks: ``run(inputs)`` is a generator of ``(sample_rate, int16 array)``
chunks (here a 440 Hz tone) at the version's rate; the text is cut into segments after sentence
punctuation, and after every segment come ``fragment_interval`` seconds of exact zeros (0.3 s by
default: a separate chunk when streaming, appended when not), as upstream does; the reference
clip is "encoded" (a ``set_ref`` event) only when it differs from the previous request's, as
upstream's prompt cache does; ``stop()`` sets a flag checked between chunks, an exception first
yields one second of silence at 16 kHz and then re-raises, ``TTS()`` rewrites the config yaml,
and it prints to stdout (and writes to fd 1 directly, as native code does).

Knobs, read by the stub in the worker process:

- env ``STUB_CHUNKS`` (default 5) chunks per segment of ``STUB_CHUNK_MS`` (100) ms each, each
  produced after
  ``STUB_CHUNK_DELAY`` (0.01) seconds; ``STUB_RATE`` overrides the version's sample rate (as
  upstream's v3 super-sampling does); ``STUB_LOAD_DELAY`` seconds spent in ``TTS()``;
  ``STUB_LOAD_FAIL``: while the file it names exists, ``TTS()`` raises ``FileNotFoundError``.
- in the text: ``LONG`` makes 100 times as many chunks; ``CRASH`` kills the process
  (``os._exit(1)``) after the first chunk; ``HANG`` sleeps forever before the first chunk;
  ``FAIL`` raises after the first chunk.
- env ``STUB_LOG``: a file where the stub appends one JSON line per event
  (``load``, ``run`` with the inputs, ``set_ref``, ``stop``, ``closed``), each with the process
  id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_TTS_PY = '''
"""Stub of GPT-SoVITS's TTS_infer_pack/TTS.py (written by tests/fakes/gpt_sovits_checkout.py)."""
import json
import os
import re
import time
from copy import deepcopy

import numpy as np

from tools.audio_sr import AP_BWE  # noqa: F401  # as upstream: needs the checkout root on the path

VERSIONS = ["v1", "v2", "v3", "v4", "v2Pro", "v2ProPlus"]


def _log(event, **fields):
    path = os.environ.get("STUB_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\\n")


class TTS_Config:
    default_configs = {
        v: {"device": "cpu", "is_half": False, "version": v, "t2s_weights_path": f"{v}.ckpt",
            "vits_weights_path": f"{v}.pth"}
        for v in VERSIONS
    }
    v1_languages = ["auto", "en", "zh", "ja", "all_zh", "all_ja"]
    v2_languages = ["auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh", "all_ja",
                    "all_yue", "all_ko"]

    def __init__(self, configs=None):
        os.makedirs("GPT_SoVITS/configs/", exist_ok=True)
        self.configs_path = "GPT_SoVITS/configs/tts_infer.yaml"
        if isinstance(configs, str):
            self.configs_path = configs
            configs = {}
        configs_ = deepcopy(self.default_configs)
        configs_.update(configs or {})
        self.configs = configs_.get("custom", configs_["v2"])
        self.device = self.configs.get("device", "cpu")
        if "cuda" in str(self.device):
            print("Warning: CUDA is not available, set device to CPU.")
            self.device = "cpu"
        self.is_half = False
        self.version = self.configs.get("version")
        assert self.version in VERSIONS, "Invalid version!"
        for key in ("t2s_weights_path", "vits_weights_path"):
            path = self.configs.get(key)
            if not path or not os.path.exists(path):
                path = self.default_configs[self.version][key]
                print(f"fall back to default {key}: {path}")
            setattr(self, key, path)
        self.languages = self.v1_languages if self.version == "v1" else self.v2_languages
        self.use_vocoder = self.version in ("v3", "v4")
        self.sampling_rate = 32000

    def save_configs(self, configs_path=None):
        with open(configs_path or self.configs_path, "w") as f:
            f.write(f"custom: {{version: {self.version}}}\\n")


class TTS:
    def __init__(self, configs):
        self.configs = configs if isinstance(configs, TTS_Config) else TTS_Config(configs)
        print(f"Loading stub weights for {self.configs.version}")
        os.write(1, b"native code writing to fd 1\\n")
        time.sleep(float(os.environ.get("STUB_LOAD_DELAY", "0")))
        if os.path.exists(os.environ.get("STUB_LOAD_FAIL", "/nonexistent")):
            raise FileNotFoundError("stub: pretrained weights are missing")
        self.vocoder_configs = {"sr": {"v3": 24000, "v4": 48000}.get(self.configs.version)}
        self.configs.save_configs()
        self.stop_flag = False
        self.cached_ref = None
        _log("load", config=self.configs.configs, configs_path=self.configs.configs_path)

    def stop(self):
        self.stop_flag = True
        _log("stop")

    def run(self, inputs):
        self.stop_flag = False
        text = inputs.get("text", "")
        assert inputs.get("text_lang", "") in self.configs.languages
        ref = inputs.get("ref_audio_path", "")
        if not os.path.exists(ref):
            raise ValueError(f"{ref} not exists")
        _log("run", inputs=inputs)
        if ref != self.cached_ref:
            _log("set_ref", ref=ref)
            self.cached_ref = ref
        print("stub: synthesizing", text)
        streaming = inputs.get("streaming_mode", False) or inputs.get("return_fragment", False)
        sr = self.vocoder_configs["sr"] if self.configs.use_vocoder else self.configs.sampling_rate
        sr = int(os.environ.get("STUB_RATE", sr))
        count = int(os.environ.get("STUB_CHUNKS", "5")) * (100 if "LONG" in text else 1)
        delay = float(os.environ.get("STUB_CHUNK_DELAY", "0.01"))
        size = int(sr * float(os.environ.get("STUB_CHUNK_MS", "100")) / 1000)
        pause = np.zeros(int(sr * inputs.get("fragment_interval", 0.3)), dtype=np.int16)
        segments = [s for s in re.split(r"(?<=[.!?\\u3002])\\s*", text) if s.strip()]
        if "HANG" in text:
            while True:
                time.sleep(3600)
        parts = []
        i = 0
        try:
            for _segment in segments:
                for _ in range(count):
                    time.sleep(delay)
                    if i == 1 and "CRASH" in text:
                        os._exit(1)
                    if i == 1 and "FAIL" in text:
                        raise RuntimeError("stub: inference failed")
                    t = (np.arange(size) + i * size) / sr
                    chunk = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
                    i += 1
                    if streaming:
                        yield sr, chunk
                    else:
                        parts.append(chunk)
                    if self.stop_flag:
                        yield sr, np.zeros(sr, dtype=np.int16)
                        return
                if streaming:
                    yield sr, pause
                else:
                    parts.append(pause)
            if not streaming:
                yield sr, np.concatenate(parts)
        except GeneratorExit:
            _log("closed")
            raise
        except Exception:
            yield 16000, np.zeros(16000, dtype=np.int16)
            raise
'''


def make_stub_checkout(root: Path) -> Path:
    """Write the stub checkout under ``root`` and return its path."""
    home = root / "gpt-sovits-stub"
    pack = home / "GPT_SoVITS" / "TTS_infer_pack"
    pack.mkdir(parents=True, exist_ok=True)
    (pack / "__init__.py").write_text("")
    (pack / "TTS.py").write_text(_TTS_PY.lstrip())
    tools = home / "tools"
    tools.mkdir(exist_ok=True)
    (tools / "__init__.py").write_text("")
    (tools / "audio_sr.py").write_text("AP_BWE = None  # stub of upstream's super-sampling model\n")
    return home


def read_log(path: Path) -> list[dict[str, Any]]:
    """The events the stub appended to its ``STUB_LOG`` file, oldest first."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
