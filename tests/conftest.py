"""Shared fixtures: real speech synthesized by the packaged Piper voice (no system packages)."""

from __future__ import annotations

import faulthandler
import functools
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from models.weights import packaged_path
from pipeline.audio import resample
from pipeline.types import AudioChunk

# `postgres` / `postgres_url`: a real Postgres on loopback, for any test that needs one
pytest_plugins = ("tests.postgres",)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "hang_grace",
        "seconds past a test's timeout before a stuck run is ended with every thread's stack",
        default="120",
    )


def pytest_configure(config: pytest.Config) -> None:
    # The CPU LLM engine defaults to llama.cpp when its extra is installed; the suite runs on the
    # always-installed transformers engine (thread names and backends are asserted), and the
    # llama.cpp engine has its own tests.
    os.environ.setdefault("VOXLINE_LLM__ENGINE", "transformers")
    # the terminal's stderr, kept now: while a test runs, fd 2 is pytest's capture file
    config.stash[_STDERR] = os.dup(sys.__stderr__.fileno() if sys.__stderr__ else 2)


def pytest_unconfigure(config: pytest.Config) -> None:
    os.close(config.stash[_STDERR])


_STDERR = pytest.StashKey[int]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """End the whole run, with every thread's stack, when a test outlives its timeout.

    pytest-timeout fails a test that runs past its ``timeout`` from SIGALRM, whose Python
    handler only runs when the main thread gets back to the interpreter: a main thread stuck in
    C (a native library's call, or waiting for a GIL that a thread stuck in C holds) is never
    interrupted, and the run would hang until whatever runs it gives up. faulthandler's
    watchdog is a C thread that needs no GIL: ``hang_grace`` seconds (ini) after the test's
    timeout it writes every thread's Python stack to stderr and exits with status 1. Off under
    ``--pdb`` (a debugging session may stay as long as it likes).
    """
    timeout = 0.0 if item.config.getoption("usepdb") else _timeout_s(item)
    if timeout > 0:
        item.stash[_DEADLINE] = time.monotonic() + timeout + float(item.config.getini("hang_grace"))
        _arm(item)
    try:
        yield
    finally:
        if timeout > 0:
            faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(trylast=True)
def pytest_exception_interact(node: pytest.Item | pytest.Collector) -> None:
    # pytest's faulthandler plugin cancels the watchdog when a phase fails (for the debugger):
    # armed again for what is left of the test (a teardown after a timed-out call may hang too)
    if _DEADLINE in node.stash:
        _arm(node)


_DEADLINE = pytest.StashKey[float]()


def _arm(node: pytest.Item | pytest.Collector) -> None:
    left = max(node.stash[_DEADLINE] - time.monotonic(), 1.0)
    faulthandler.dump_traceback_later(left, exit=True, file=node.config.stash[_STDERR])


def _timeout_s(item: pytest.Item) -> float:
    """The test's pytest-timeout limit, found as pytest-timeout finds it: its ``timeout``
    marker, else ``--timeout``, else ``PYTEST_TIMEOUT``, else the ini's; 0 is none."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0] or 0)
    if marker is not None and "timeout" in marker.kwargs:
        return float(marker.kwargs["timeout"] or 0)
    for value in (
        item.config.getoption("timeout", None),
        os.environ.get("PYTEST_TIMEOUT"),
        item.config.getini("timeout"),
    ):
        if value not in (None, ""):
            return float(value)
    return 0.0


@functools.cache
def _piper_voice():  # type: ignore[no-untyped-def]
    from piper import PiperVoice

    return PiperVoice.load(str(packaged_path("piper-joe-medium", stage="tts")))


@functools.cache
def speak(text: str, sample_rate: int = 16_000, pad_seconds: float = 0.3) -> AudioChunk:
    """Speech for ``text`` from the packaged Piper voice, with a little silence around it."""
    from piper import SynthesisConfig

    # no sampled noise: the same text is the same speech in every test, whatever the order
    quiet = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(_piper_voice().synthesize(text, syn_config=quiet))
    samples = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    audio = resample(AudioChunk(samples, chunks[0].sample_rate), sample_rate)
    pad = np.zeros(int(pad_seconds * sample_rate), dtype=np.float32)
    return AudioChunk(np.concatenate([pad, audio.samples, pad]), sample_rate)


@pytest.fixture(scope="session")
def spoken_question() -> AudioChunk:
    """A short spoken question at 16 kHz."""
    return speak("What is the capital of France?")


@pytest.fixture
def wav_file(tmp_path: Path, spoken_question: AudioChunk) -> Path:
    """The spoken question written as a 16-bit wav file."""
    from pipeline.audio import encode_wav

    path = tmp_path / "question.wav"
    path.write_bytes(encode_wav(spoken_question))
    return path
