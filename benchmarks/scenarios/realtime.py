"""``realtime``: one WebSocket session, clips spoken at real-time pace, timed on the client.

``v2v_ms`` is the real voice-to-voice: the first reply audio received - the last voiced frame
sent, endpointing and network included. The server's own ``response.done`` timings come along
(``server_*``) so the report can split V2V into endpoint, STT, first phrase and TTS, and
``overhead_ms`` is what none of them explain (the client-measured V2V minus their sum).
"""

from __future__ import annotations

from benchmarks.context import BenchContext, Sample, ScenarioResult, repeat
from benchmarks.data import Clip
from benchmarks.realtime_measure import RealtimeSession, TurnMeasurement
from benchmarks.stats import wer
from pipeline.errors import InvalidInput

STAGES: tuple[str, ...] = ()
_PARTS = ("endpoint_ms", "stt_ms", "first_phrase_ms", "tts_ttfb_ms")


def require_url(ctx: BenchContext) -> str:
    """The server to talk to.

    Raises:
        InvalidInput: none was given or started.
    """
    if ctx.url is None:
        raise InvalidInput("the realtime scenarios need a server: pass --url", param="url")
    return ctx.url


def measurement_sample(m: TurnMeasurement, clip: Clip) -> Sample:
    """The metrics of one client-measured turn."""
    server = m.server
    parts = [server.get(p) for p in _PARTS]
    overhead = None
    if m.v2v_ms is not None and all(p is not None for p in parts):
        overhead = round(m.v2v_ms - sum(p for p in parts if p is not None), 1)
    return {
        "v2v_ms": m.v2v_ms,
        "underruns": float(m.underruns),
        "underrun_ms": m.underrun_ms,
        "reply_audio_s": m.audio_s,
        "endpoint_ms": server.get("endpoint_ms"),
        "stt_ms": server.get("stt_ms"),
        "llm_ttft_ms": server.get("llm_ttft_ms"),
        "first_phrase_ms": server.get("first_phrase_ms"),
        "tts_ttfb_ms": server.get("tts_ttfb_ms"),
        "server_v2v_ms": server.get("v2v_ms"),
        "overhead_ms": overhead,
        "wer": wer(clip.reference, m.transcript) if m.transcript or not m.timed_out else None,
        "errors": float(len(m.errors) + m.timed_out),
        # responses that ended before the speech did: the turn was ended at a pause
        "false_turn_ends": float(m.early_responses),
    }


async def run(ctx: BenchContext, name: str = "realtime") -> ScenarioResult:
    """Speak every clip ``runs`` times in one session."""
    url = require_url(ctx)
    heard: dict[str, dict[str, object]] = {}
    async with RealtimeSession(url, api_key=ctx.options.api_key) as session:

        async def once(clip: Clip, _: int) -> Sample:
            m = await session.play(clip.audio, clip.speech_end_s)
            heard[clip.name] = {
                "transcript": m.transcript,
                "reply": m.reply,
                "errors": list(m.errors),
                "timed_out": m.timed_out,
                "early_responses": m.early_responses,
            }
            return measurement_sample(m, clip)

        result = await repeat(ctx, ScenarioResult(name), ctx.clips, once)
        session_errors = list(session.session_errors)
    result.details = {
        "url": url,
        "v2v_definition": "client clock: first output_audio.delta - last voiced frame sent",
        "session_errors": session_errors,
        "turns": heard,
    }
    return result
