"""The realtime benchmark client against a scripted server: V2V on its own clock, underruns,
errors, and the ``load`` scenario's levels and SLO verdict.

The client and the scripted server share one event loop, and the tests that time a turn run on
its virtual clock (``looptime``), which is also the client's: the audio is paced on it and the
server's delays are spent on it, so the measured V2V is the scripted one, exactly, however
loaded the machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.configs import ConfigSpec
from benchmarks.context import BenchContext, BenchOptions
from benchmarks.data import Clip
from benchmarks.realtime_measure import RealtimeSession, TurnMeasurement, playback_underruns
from benchmarks.scenarios import load
from benchmarks.scenarios.realtime import measurement_sample
from client.realtime import realtime_url
from pipeline.errors import EngineUnavailable
from pipeline.settings import Settings
from pipeline.types import AudioChunk
from tests.benchmarks.realtime_fake import FakePlan, fake_realtime_server
from tests.fakes import loop_time

RATE = 24_000
FRAME_S = 0.02  # the client's frame


def _tone_clip(lead_s: float = 0.1, speech_s: float = 0.4, tail_s: float = 0.1) -> Clip:
    t = np.arange(int(speech_s * RATE)) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    samples = np.concatenate(
        [np.zeros(int(lead_s * RATE), np.float32), tone, np.zeros(int(tail_s * RATE), np.float32)]
    )
    return Clip("tone", AudioChunk(samples, RATE), "turn one", lead_s + speech_s)


def test_playback_underruns_counts_gaps_in_real_time_playback() -> None:
    # 0.2 s pieces arriving every 0.2 s play back to back; a piece 0.15 s late is one underrun
    steady = [(0.0, 0.2), (0.2, 0.2), (0.4, 0.2)]
    assert playback_underruns(steady) == (0, 0.0)
    count, starved = playback_underruns([(0.0, 0.2), (0.35, 0.2), (0.5, 0.2)])
    assert count == 1
    assert starved == pytest.approx(0.15)
    # audio that arrives early is buffered: no underrun even if later pieces are spread out
    assert playback_underruns([(0.0, 1.0), (0.5, 0.2), (0.9, 0.2)]) == (0, 0.0)
    assert playback_underruns([]) == (0, 0.0)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:8000", "ws://h:8000/v1/realtime?model=voxline"),
        ("https://h/v1", "wss://h/v1/realtime?model=voxline"),
        ("ws://h:1/v1/realtime?model=x", "ws://h:1/v1/realtime?model=x"),
        ("127.0.0.1:8000", "ws://127.0.0.1:8000/v1/realtime?model=voxline"),
    ],
)
def test_realtime_url_accepts_base_urls(given: str, expected: str) -> None:
    assert realtime_url(given) == expected


@pytest.mark.looptime
async def test_client_measures_v2v_from_the_last_voiced_frame() -> None:
    plan = FakePlan(silence_ms=200, reply_delay_s=0.15, chunks=3, chunk_s=0.2)
    clip = _tone_clip()
    async with (
        fake_realtime_server(plan) as url,
        RealtimeSession(url, clock=loop_time) as session,
    ):
        first = await session.play(clip.audio, clip.speech_end_s)
        second = await session.play(clip.audio, clip.speech_end_s)
    for m in (first, second):
        assert not m.timed_out and not m.errors
        # the last voiced frame is sent at speech_end - 20 ms; the server hears 200 ms of silence
        # in the 10 frames after it, then answers 150 ms later: 350 ms on the client's clock
        # (from the clip's start it would be 850 ms, from its end 250 ms)
        assert m.v2v_ms == pytest.approx(200 + 150, abs=1), m.v2v_ms
        assert m.audio_s == pytest.approx(0.6, abs=0.01)
        assert m.underruns == 0
        assert m.server["tts_ttfb_ms"] == 40.0
        assert m.reply == "w0 w1 w2 "
    assert (first.transcript, second.transcript) == ("turn 1", "turn 2")


@pytest.mark.looptime
async def test_a_response_to_a_pause_mid_speech_is_a_false_turn_end() -> None:
    plan = FakePlan(silence_ms=200, reply_delay_s=0.05, chunks=1, chunk_s=0.1)
    half = _tone_clip(lead_s=0.1, speech_s=0.4, tail_s=0.0).audio.samples
    pause = np.zeros(int(0.8 * RATE), np.float32)  # longer than the server's 200 ms silence
    samples = np.concatenate([half, pause, half, np.zeros(int(0.1 * RATE), np.float32)])
    clip = Clip("paused", AudioChunk(samples, RATE), "turn two", (len(samples) / RATE) - 0.1)
    m = await _play_once(plan, clip)
    assert m.early_responses == 1  # answered the first half, before the speech was over
    assert m.transcript == "turn 2" and m.v2v_ms == pytest.approx(200 + 50, abs=1)
    assert measurement_sample(m, clip)["false_turn_ends"] == 1.0
    whole = await _play_once(plan, _tone_clip())
    assert measurement_sample(whole, _tone_clip())["false_turn_ends"] == 0.0


async def _play_once(plan: FakePlan, clip: Clip) -> TurnMeasurement:
    async with (
        fake_realtime_server(plan) as url,
        RealtimeSession(url, clock=loop_time) as session,
    ):
        return await session.play(clip.audio, clip.speech_end_s)


@pytest.mark.looptime
async def test_client_counts_underruns_when_audio_arrives_slower_than_real_time() -> None:
    plan = FakePlan(silence_ms=100, reply_delay_s=0.0, chunks=3, chunk_s=0.1, gap_s=0.3)
    clip = _tone_clip()
    async with (
        fake_realtime_server(plan) as url,
        RealtimeSession(url, clock=loop_time) as session,
    ):
        m = await session.play(clip.audio, clip.speech_end_s)
    # 0.1 s pieces 0.3 s apart: each later one starts 0.2 s after the one before ran out
    assert m.underruns == 2
    assert m.underrun_ms == pytest.approx(2 * 200, abs=1)


@pytest.mark.looptime
async def test_client_times_out_when_no_reply_comes() -> None:
    plan = FakePlan(silence_ms=100_000)  # the fake never hears enough silence to answer
    clip = _tone_clip()
    async with (
        fake_realtime_server(plan) as url,
        RealtimeSession(url, clock=loop_time) as session,
    ):
        started = loop_time()
        m = await session.play(clip.audio, clip.speech_end_s, timeout_s=30)
    assert m.timed_out and m.v2v_ms is None
    # the default 30 s after the end of speech, in no real time
    assert loop_time() - started == pytest.approx(clip.speech_end_s + 30, abs=2 * FRAME_S)


async def test_a_refused_session_is_an_engine_unavailable() -> None:
    async with fake_realtime_server(FakePlan(refuse=True)) as url:
        with pytest.raises(EngineUnavailable, match="opened no session"):
            async with RealtimeSession(url, connect_timeout_s=2):
                pass


def test_load_levels_are_1_2_then_every_even_number_up_to_the_limit() -> None:
    assert load.levels(1) == [1]
    assert load.levels(4) == [1, 2, 4]
    assert load.levels(6) == [1, 2, 4, 6]
    assert load.levels(8) == [1, 2, 4, 6, 8]
    assert load.levels(3) == [1, 2, 3]


def _ctx(url: str, slo_ms: float, max_sessions: int) -> BenchContext:
    options = BenchOptions(
        runs=1, warmup=0, quick=True, slo_v2v_p95_ms=slo_ms, max_sessions=max_sessions
    )
    return BenchContext(ConfigSpec(), Settings(), options, [_tone_clip()], [], url=url)


async def test_load_counts_refused_sessions_apart_and_judges_the_accepted() -> None:
    # each answer takes 2 s, so the four sessions of a level (started over 1 s) overlap
    plan = FakePlan(silence_ms=100, reply_delay_s=2.0, chunks=1, chunk_s=0.1, max_sessions=2)
    async with fake_realtime_server(plan) as url:
        result = await load.run(_ctx(url, slo_ms=5000, max_sessions=4))
    levels = {lv["sessions"]: lv for lv in result.details["levels"]}
    four = levels[4]
    assert (four["accepted"], four["refused"], four["errors"]) == (2, 2, 0)
    assert four["turns"] == 2 and four["v2v_p50_ms"] is not None
    assert four["refusal_p95_ms"] is not None and four["refusal_p95_ms"] >= 0
    # refused at the handshake, fast: the level still meets its SLO on the sessions it kept
    assert four["meets_slo"] and result.details["max_sessions_within_slo"] == 4
    assert result.details["max_served_within_slo"] == 2  # the other two were refused
    assert levels[1]["refused"] == 0 and levels[1]["refusal_p95_ms"] is None


async def test_load_reports_the_largest_level_within_the_slo() -> None:
    plan = FakePlan(silence_ms=100, reply_delay_s=0.05, chunks=1, chunk_s=0.1)
    async with fake_realtime_server(plan) as url:
        met = await load.run(_ctx(url, slo_ms=2000, max_sessions=2))
        missed = await load.run(_ctx(url, slo_ms=10, max_sessions=2))
    levels = met.details["levels"]
    assert [lv["sessions"] for lv in levels] == [1, 2]
    assert all(lv["meets_slo"] and lv["errors"] == 0 for lv in levels)
    assert met.details["max_sessions_within_slo"] == 2
    assert len(met.samples["v2v_n2_ms"]) == 2
    # an SLO nobody can meet: every level fails (and every level still runs: the curve)
    assert missed.details["max_sessions_within_slo"] is None
    assert [lv["sessions"] for lv in missed.details["levels"]] == [1, 2]
    assert not any(lv["meets_slo"] for lv in missed.details["levels"])
