"""Test doubles, used only where the real thing cannot run in a test (see the project's rule:
engines are tested for real on the tiny packaged models).

One family per layer, each following the real interface exactly:

- ``stages``: ``ScriptedSTT`` / ``ScriptedLLM`` / ``ScriptedTTS`` with per-call ``Plan`` s, the
  stage doubles for what the real engines cannot do on demand (fail halfway, hang, run on a
  virtual clock at a chosen pace), for fallback chains, the session and the server's health.
- ``knowledge``: ``ScriptedRetriever`` / ``ScriptedSupport``, the knowledge base's protocols
  (``pipeline.knowledge``) for tests of grounding in the reply path and the session.
- ``openai_peer``: ``OpenAIPeer``, a real HTTP server speaking OpenAI's wire format, in place of a
  paid hosted API behind the hosted adapters.
- ``gpt_sovits_checkout``: a stand-in upstream GPT-SoVITS *checkout* (its ``TTS_infer_pack.TTS``
  API and quirks), run by the real worker script in real worker processes, since upstream needs
  its own venv and gigabytes of weights; the opt-in ``gpt_sovits`` tests run the real upstream.
- ``tests/benchmarks/realtime_fake.py`` (kept beside the client it serves) is a scripted realtime
  WebSocket server for the benchmark client's own tests.
"""

from tests.fakes.knowledge import ScriptedRetriever, ScriptedSupport, passage
from tests.fakes.openai_peer import OpenAIPeer, PeerPlan, PeerRequest
from tests.fakes.stages import (
    PIPER_PACE,
    SMOLLM2_PACE,
    WHISPER_TINY_PACE,
    Call,
    OutOfMemoryError,
    Plan,
    ScriptedLLM,
    ScriptedSTT,
    ScriptedTTS,
    loop_time,
    tone,
)

__all__ = [
    "PIPER_PACE",
    "SMOLLM2_PACE",
    "WHISPER_TINY_PACE",
    "Call",
    "OpenAIPeer",
    "OutOfMemoryError",
    "PeerPlan",
    "PeerRequest",
    "Plan",
    "ScriptedLLM",
    "ScriptedRetriever",
    "ScriptedSTT",
    "ScriptedSupport",
    "ScriptedTTS",
    "loop_time",
    "passage",
    "tone",
]
