"""The support score on the real packaged embedding model: a faithful answer scores above the
default threshold, an invented one (a wrong number, another topic) below it."""

from __future__ import annotations

import pytest

from models.embed_minilm import MiniLMEmbedder
from pipeline.settings import KBSettings
from pipeline.support import EmbeddingSupport

SOURCES = [
    "Tarvo Aero 5 > Care and maintenance\nReplace the 3-in-1 filter every 6 months, or sooner "
    "when the filter indicator turns red. Clean the pre-filter every two weeks.",
    "The warranty lasts 2 years from the date of purchase.",
]
QUESTION = "How often should I replace the filter?"
THRESHOLD = KBSettings().support_threshold


@pytest.fixture(scope="module")
def scorer() -> EmbeddingSupport:
    model = MiniLMEmbedder(runtime="onnx", threads=1)
    model.load()
    return EmbeddingSupport(model)


@pytest.mark.parametrize(
    "answer",
    [
        "Replace the filter every 6 months.",
        "Every six months, or sooner when the indicator turns red.",
        "You should replace it every 6 months. Clean the pre-filter every two weeks.",
    ],
)
async def test_faithful_answers_are_supported(scorer: EmbeddingSupport, answer: str) -> None:
    assert await scorer.support(answer, SOURCES, QUESTION) >= THRESHOLD


@pytest.mark.parametrize(
    "answer",
    [
        "Replace the filter every 18 months.",
        "The Aero 5 connects to Alexa and Google Home over Bluetooth.",
        "Every 6 months. It also comes with a free lifetime subscription to Tarvo Plus.",
    ],
)
async def test_invented_answers_are_flagged(scorer: EmbeddingSupport, answer: str) -> None:
    assert await scorer.support(answer, SOURCES, QUESTION) < THRESHOLD


async def test_declining_is_supported_and_no_sources_is_not(scorer: EmbeddingSupport) -> None:
    assert await scorer.support("I don't know.", SOURCES, QUESTION) == 1.0
    assert await scorer.support("Every 6 months.", [], QUESTION) == 0.0
