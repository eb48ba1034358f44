"""The knowledge base: files, vector stores, retrieval in the voice turn, groundedness."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class KBSettings(BaseModel):
    """The knowledge base: files, vector stores, retrieval in the voice turn, groundedness.

    A turn retrieves when its request (``/v1/turns``' ``tools``) or its realtime session
    (``session.tools``) names vector stores with OpenAI's ``file_search`` tool. See
    docs/knowledge.md for how each number here was chosen.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    embedding_model: str = "packaged:all-minilm-l6-v2"
    """Embedding model reference (``packaged:<name>``, a local sentence-transformers directory
    or a hub id). Changing it makes stores embedded with another model unsearchable (their
    dimension or space differs): re-add their files."""
    embedding_runtime: Literal["onnx", "torch"] = "onnx"
    """``onnx``: the model exported once to ONNX (cached under ``<cache_dir>/onnx``) and run by
    onnxruntime, about half the query latency of ``torch`` on a 2-core CPU."""
    embedding_threads: int = Field(default=1, ge=0)
    """Threads of one embedding call (0: the runtime's default, all cores). One keeps a query
    from stalling behind the engines that share the cores."""
    chunk_tokens: int = Field(default=200, ge=32, le=4096)
    """Target chunk size in (estimated) tokens. The embedding model reads at most 256 word
    pieces of a chunk."""
    chunk_overlap_tokens: int = Field(default=40, ge=0, le=2048)
    """Tokens a chunk repeats from the end of the one before it (at most half a chunk)."""
    top_k: int = Field(default=3, ge=1, le=50)
    """Passages retrieved per turn (a request's ``file_search.max_num_results`` overrides it);
    each one costs LLM prefill."""
    relevance_threshold: float = Field(default=0.45, ge=-1.0, le=2.0)
    """Relevance (cosine similarity + ``keyword_weight`` x the share of the question's words
    in the passage) below which a passage is not relevant. A turn with no relevant passage is
    answered "I don't know" (``dont_know``)."""
    keyword_weight: float = Field(default=0.3, ge=0.0, le=1.0)
    """Weight of keyword coverage in a passage's relevance (0: cosine similarity alone)."""
    dont_know: Literal["fixed", "llm"] = "fixed"
    """When nothing relevant is retrieved: ``fixed`` speaks ``dont_know_reply`` without calling
    the LLM; ``llm`` tells the LLM explicitly that the documents hold no answer."""
    dont_know_reply: str = "I don't know. The documents I can search don't say."
    """The fixed spoken reply when nothing relevant is retrieved."""
    support_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """Support score (of the answer against its sources) below which an answer is flagged as
    not grounded."""
    replace_unsupported: bool = False
    """Hold each grounded reply until its support is scored and speak ``safe_reply`` instead of
    a flagged one. Costs voice-to-voice latency: the first audio waits for the whole LLM reply."""
    safe_reply: str = "I'm not sure. I couldn't find a clear answer in the documents."
    """What is said instead of an unsupported answer (``replace_unsupported``)."""
    max_context_chars: int = Field(default=2400, ge=200)
    """Most characters of retrieved passages put in the prompt (the best ones first)."""
    max_file_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    """Largest file accepted by ``/v1/files`` (a larger upload is refused with 413)."""
    max_file_chars: int = Field(default=5_000_000, ge=1)
    """Most characters of text one file may hold once extracted (a PDF can expand a lot)."""
