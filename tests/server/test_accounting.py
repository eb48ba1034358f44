"""The one accounting path: what the ledger bills is what the engines did, counted by the engines.

A realtime session whose user pauses mid-question (so a speculative reply starts and is dropped
when they go on) is run on scripted engines that count their own work, with the real Silero VAD on
real speech; its ``UsageReported`` events go through ``SessionUsage`` into a real ``Ledger``.
Every transcription job (partial, speculative, final), the dropped speculation (billed, shown
apart) and the answered response are in the ledger, each once; a failed response is not.
"""

from __future__ import annotations

import pytest

from models.vad_silero import SileroVAD
from pipeline.errors import EngineUnavailable
from pipeline.events import ResponseDone, UsageReported
from pipeline.ledger import Ledger, PriceTable
from server.accounting import Accounting, SessionUsage
from server.metrics import Metrics
from tests.pipeline.test_session import clip, feed, make, piper_tts, smollm_llm, whisper_stt

pytestmark = pytest.mark.looptime  # the session's clock and the engines' pace are virtual


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    model = SileroVAD()
    model.load()
    return model


def _accounting() -> tuple[Accounting, Ledger, Metrics]:
    ledger, metrics = Ledger(PriceTable()), Metrics()
    return Accounting(ledger, metrics), ledger, metrics


async def test_a_session_with_a_dropped_speculation_is_billed_for_all_its_work(
    vad: SileroVAD,
) -> None:
    stt = whisper_stt(text="what is the capital of france please", words_per_second=2.5)
    llm = smollm_llm([f" word{i}" for i in range(60)])  # still generating when the user goes on
    tts = piper_tts()
    session, rec = make(
        vad, stt=stt, llm=llm, tts=tts, silence_duration_ms=1000, partial_interval_ms=300
    )
    accounting, ledger, metrics = _accounting()
    usage = SessionUsage(accounting, "sess_1")
    await feed(session, clip(0.3, "What is the capital", 0.75, "of France, please?", 1.2))
    await rec.wait_for(ResponseDone)
    await session.aclose()
    for event in rec.of(UsageReported):
        usage.charge(event)
    billed = usage.report()

    *dropped, answered = llm.calls
    assert dropped and all(call.closed_early for call in dropped)
    # the engines' own counts: every STT job's audio, every LLM call's prompt and deltas
    assert ledger.total().charges == len(stt.calls) + len(llm.calls) + len(tts.calls)
    stt_totals = ledger.by_backend()[stt.name]
    assert stt_totals.charges == len(stt.calls) > 1  # partial/speculative jobs included
    assert stt_totals.audio_seconds == pytest.approx(sum(c.input.duration for c in stt.calls))
    llm_totals = ledger.by_backend()[llm.name]
    assert llm_totals.tokens_in == sum(llm.count_tokens(c.input) for c in llm.calls)  # type: ignore[arg-type]
    assert llm_totals.tokens_out == sum(min(c.outputs, len(llm.reply)) for c in llm.calls)
    assert answered.outputs == len(llm.reply) + 1  # and the usage delta
    # the dropped speculation is billed, and shown apart
    speculative = ledger.speculative()
    # (its prompt always; the tokens it got out before the user went on, however few)
    assert speculative.tokens_in == sum(llm.count_tokens(c.input) for c in dropped) > 0  # type: ignore[arg-type]
    assert speculative.tokens_out == sum(c.outputs for c in dropped)
    assert billed["speculative"]["output_tokens"] == speculative.tokens_out
    # response.done reports everything billed since the session began, once
    assert billed["cost_usd"] == pytest.approx(ledger.total().cost_usd, abs=1e-8)
    assert usage.report() == {"cost_usd": 0.0}
    samples = metrics.llm_tokens.collect()[0].samples
    tokens = {s.labels["type"]: s.value for s in samples if s.name.endswith("_total")}
    assert tokens == {"prompt": llm_totals.tokens_in, "completion": llm_totals.tokens_out}


async def test_a_failed_response_is_not_billed(vad: SileroVAD) -> None:
    down = EngineUnavailable("scripted: down", stage="tts", backend="fake-tts")
    tts = piper_tts(fail_times=1, error=down)
    words = [f" word{i}" for i in range(30)]
    llm = smollm_llm(["Paris", ".", " It", " is", " lovely", ",", *words, "."])
    session, rec = make(vad, llm=llm, tts=tts)
    accounting, ledger, _ = _accounting()
    usage = SessionUsage(accounting, "sess_2")
    await feed(session, clip(0.3, "What is the capital of France?", 0.8), speed=4.0)
    await rec.wait_for(ResponseDone)
    await session.aclose()
    for event in rec.of(UsageReported):
        usage.charge(event)

    assert rec.of(ResponseDone)[0].status == "failed"
    [response] = [e for e in rec.of(UsageReported) if e.kind == "response"]
    assert response.failed and response.calls  # the work was reported...
    assert llm.name not in ledger.by_backend()  # ...and not billed
    assert ledger.by_backend()["fake-stt"].charges >= 1  # the transcription was
    # a TTS failure stopped the LLM at once: it did not generate the whole reply
    assert llm.calls[-1].closed_early and llm.calls[-1].outputs < 20
