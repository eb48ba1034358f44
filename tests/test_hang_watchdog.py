"""A test stuck where pytest-timeout cannot interrupt it ends the run, with every thread's stack,
instead of hanging it (tests/conftest.py: ``pytest_runtest_protocol``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOOKS = (
    "from tests.conftest import (\n"
    "    pytest_addoption, pytest_configure, pytest_exception_interact,\n"
    "    pytest_runtest_protocol, pytest_unconfigure,\n"
    ")\n"
)

STUCK = """\
import signal
import time

import pytest


@pytest.mark.timeout(1)
def test_stuck():
    # SIGALRM blocked: pytest-timeout's handler never runs, as when the main thread is stuck
    # in a native call
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(120)


def test_after_it():
    pass
"""

IN_TIME = """\
import time

import pytest


@pytest.mark.timeout(1)
def test_quick():
    pass


@pytest.mark.timeout(0)
def test_slow_without_a_timeout():
    time.sleep(4)  # past the first test's timeout and grace: its watchdog must be disarmed
"""

FAILED_THEN_STUCK = """\
import signal
import time

import pytest


@pytest.fixture
def resource():
    yield
    # a teardown stuck after the test failed
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(120)


@pytest.mark.timeout(2)
def test_fails(resource):
    assert False
"""


def _pytest(tmp_path: Path, tests: str, *options: str) -> subprocess.CompletedProcess[str]:
    """A pytest run of ``tests`` with this suite's hooks and a 1 s grace."""
    (tmp_path / "conftest.py").write_text(HOOKS)
    (tmp_path / "test_it.py").write_text(tests)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "hang_grace=1",
            *options,
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=100,
    )


def test_a_test_stuck_past_its_timeout_ends_the_run_with_every_stack(tmp_path: Path) -> None:
    run = _pytest(tmp_path, STUCK)

    assert run.returncode == 1, run.stdout + run.stderr
    assert "most recent call first" in run.stderr  # faulthandler's dump, on the real stderr
    assert 'test_it.py", line 12 in test_stuck' in run.stderr, run.stderr
    assert "passed" not in run.stdout  # the run ended there: the next test never ran


def test_a_test_that_ends_in_time_disarms_the_watchdog(tmp_path: Path) -> None:
    run = _pytest(tmp_path, IN_TIME)

    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout


def test_a_teardown_stuck_after_a_failure_ends_the_run_too(tmp_path: Path) -> None:
    # pytest's faulthandler plugin cancels the watchdog when the call fails: armed again
    run = _pytest(tmp_path, FAILED_THEN_STUCK)

    assert run.returncode == 1, run.stdout + run.stderr
    assert 'test_it.py", line 12 in resource' in run.stderr, run.stderr


def test_a_timeout_raised_on_the_command_line_holds_the_watchdog_back(tmp_path: Path) -> None:
    # --timeout 30 beats the marker-less ini default, so the watchdog waits 31 s, not 1 + 1
    slow = "import time\n\n\ndef test_slow():\n    time.sleep(4)\n"
    run = _pytest(tmp_path, slow, "-o", "timeout=1", "--timeout", "30")

    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
