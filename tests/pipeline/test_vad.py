"""Endpointing policy on scripted probabilities, and the frame slicer's resampling and timing."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from pipeline.types import AudioChunk
from pipeline.vad import EndpointDecision, Endpointer, EndpointPolicy, FrameSlicer

FRAME_MS = 32.0
FRAME = 512


def frame(value: float = 0.0) -> np.ndarray:
    return np.full(FRAME, value, np.float32)


def run(
    endpointer: Endpointer, probabilities: list[float], start: int = 0
) -> list[tuple[int, EndpointDecision]]:
    """Feed one frame per probability (arrival time = frame index); return (index, decision)."""
    out = []
    for offset, p in enumerate(probabilities):
        index = start + offset
        for decision in endpointer.process(frame(p), p, arrival=float(index)):
            out.append((index, decision))
    return out


def test_speech_starts_after_min_speech_with_prefix_padding() -> None:
    ep = Endpointer(EndpointPolicy(min_speech_ms=100, prefix_padding_ms=300), frame_ms=FRAME_MS)
    decisions = run(ep, [0.0] * 20 + [0.9] * 6)
    assert [(i, d.kind) for i, d in decisions] == [(23, "speech_started")]  # 4 frames = 128 ms
    # 300 ms of padding = 10 frames before the first voiced frame (index 20)
    assert decisions[0][1].audio_ms == pytest.approx(10 * FRAME_MS)
    assert ep.speaking and ep.utterance_frames == 16


def test_a_blip_shorter_than_min_speech_starts_nothing() -> None:
    ep = Endpointer(EndpointPolicy(min_speech_ms=100), frame_ms=FRAME_MS)
    assert run(ep, [0.0] * 5 + [0.9, 0.9, 0.1] + [0.0] * 5) == []
    assert not ep.speaking
    assert ep.utterance_frames == 0


def test_pause_then_stop_after_the_silence_duration() -> None:
    policy = EndpointPolicy(silence_duration_ms=300, prefix_padding_ms=64, min_speech_ms=64)
    ep = Endpointer(policy, frame_ms=FRAME_MS)
    decisions = run(ep, [0.0] * 4 + [0.9] * 10 + [0.0] * 12)
    kinds = [(i, d.kind) for i, d in decisions]
    # voiced frames 4..13; first silent frame 14 pauses; 10 frames (320 ms >= 300) after the
    # last voiced one, frame 23 stops
    assert kinds == [(5, "speech_started"), (14, "paused"), (23, "speech_stopped")]
    stop = decisions[-1][1]
    assert stop.speech_end_ms == pytest.approx(14 * FRAME_MS)
    assert stop.speech_end_at == 13.0  # arrival of the last voiced frame
    assert stop.audio_ms == pytest.approx(24 * FRAME_MS)  # OpenAI's audio_end_ms: with silence
    assert stop.audio is not None
    assert len(stop.audio) == (2 + 10 + 10) * FRAME  # padding + speech + silence
    assert stop.voiced_frames == 12  # padding + speech
    assert not ep.speaking and ep.utterance_frames == 0


def test_hysteresis_frames_between_thresholds_neither_pause_nor_extend_speech() -> None:
    policy = EndpointPolicy(threshold=0.5, silence_duration_ms=200, min_speech_ms=0)
    ep = Endpointer(policy, frame_ms=FRAME_MS)
    assert policy.neg_threshold == pytest.approx(0.35)
    decisions = run(ep, [0.9] * 3 + [0.4] * 3 + [0.1] * 4)
    kinds = [(i, d.kind) for i, d in decisions]
    # 0.4 frames keep the turn open without a pause; silence is counted from the last voiced
    # frame (2), so the stop comes 7 frames (224 ms) later, at the 4th silent frame
    assert kinds == [(0, "speech_started"), (6, "paused"), (9, "speech_stopped")]


def test_speech_resuming_after_a_pause_keeps_the_turn_open() -> None:
    policy = EndpointPolicy(silence_duration_ms=300, min_speech_ms=0, prefix_padding_ms=0)
    ep = Endpointer(policy, frame_ms=FRAME_MS)
    decisions = run(ep, [0.9] * 3 + [0.0] * 5 + [0.9] * 2 + [0.0] * 3)
    assert [(i, d.kind) for i, d in decisions] == [
        (0, "speech_started"),
        (3, "paused"),
        (10, "paused"),
    ]
    assert ep.speaking and ep.paused
    assert ep.voiced_frames == 10
    assert len(ep.utterance(4)) == 4 * FRAME


def test_force_stop_and_reset() -> None:
    ep = Endpointer(EndpointPolicy(min_speech_ms=0, prefix_padding_ms=0), frame_ms=FRAME_MS)
    assert ep.force_stop() is None
    run(ep, [0.9] * 5)
    stop = ep.force_stop()
    assert stop is not None and stop.kind == "speech_stopped"
    assert stop.audio is not None and len(stop.audio) == 5 * FRAME
    run(ep, [0.9] * 2, start=5)
    ep.reset()
    assert not ep.speaking and ep.utterance_frames == 0
    assert ep.position_ms == pytest.approx(7 * FRAME_MS)  # the stream position keeps counting


def test_a_new_policy_keeps_the_open_utterance() -> None:
    ep = Endpointer(EndpointPolicy(min_speech_ms=0, silence_duration_ms=1000), frame_ms=FRAME_MS)
    run(ep, [0.9] * 3 + [0.0] * 4)
    ep.policy = EndpointPolicy(min_speech_ms=0, silence_duration_ms=100)
    decisions = run(ep, [0.0], start=7)
    assert [d.kind for _, d in decisions] == ["speech_stopped"]


def test_slicer_streams_without_chunk_artefacts() -> None:
    rate = 24_000
    t = np.arange(rate * 2) / rate
    signal = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    slicer = FrameSlicer()
    frames = []
    position = 0
    for size in [480, 7, 1000, 333, 4800, 2] * 20:  # odd sizes on purpose
        piece = signal[position : position + size]
        position += size
        frames += [f for f, _ in slicer.push(AudioChunk(piece, rate), 0.0)]
    streamed = np.concatenate(frames)
    whole = soxr.resample(signal[:position], rate, 16_000, quality="LQ")
    middle = slice(1000, len(streamed) - 1000)
    assert np.abs(streamed[middle] - whole[middle]).max() < 1e-3
    assert all(len(f) == FRAME for f in frames)


def test_slicer_passes_16k_through_unchanged() -> None:
    audio = np.random.default_rng(0).normal(0, 0.1, 16_000 * 2 + 100).astype(np.float32)
    slicer = FrameSlicer()
    frames = [f for f, _ in slicer.push(AudioChunk(audio, 16_000), 0.0)]
    assert np.array_equal(np.concatenate(frames), audio[: len(frames) * FRAME])
    assert np.array_equal(slicer.drain(), audio[len(frames) * FRAME :])


def test_slicer_frame_arrival_is_when_its_last_sample_arrived() -> None:
    rate = 24_000
    chunk = 480  # 20 ms
    slicer = FrameSlicer()
    seen: list[tuple[int, float, int]] = []
    for k in range(100):
        for _, arrival in slicer.push(AudioChunk(np.zeros(chunk, np.float32), rate), float(k)):
            seen.append((len(seen), arrival, k))
    for index, arrival, returned_by in seen:
        end_ms = (index + 1) * FRAME_MS
        # the chunk named holds the frame's last sample: it ends at or after the frame, and
        # the chunk before it ends before the frame does
        assert (arrival + 1) * 20 >= end_ms - 1e-6
        assert arrival * 20 < end_ms
        assert arrival <= returned_by  # the resampler's delay hands frames out later
    assert any(arrival < returned for _, arrival, returned in seen)


SMART = EndpointPolicy(
    silence_duration_ms=320,
    prefix_padding_ms=0,
    min_speech_ms=0,
    turn_end="smart",
    complete_silence_ms=160,
    incomplete_silence_ms=960,
)


def stop_index(ep: Endpointer, probabilities: list[float], start: int) -> int | None:
    stops = [i for i, d in run(ep, probabilities, start) if d.kind == "speech_stopped"]
    return stops[0] if stops else None


def test_smart_a_complete_transcript_ends_the_turn_after_the_short_silence() -> None:
    ep = Endpointer(SMART, frame_ms=FRAME_MS)
    run(ep, [0.9] * 10 + [0.0])  # voiced 0..9, paused at 10
    assert ep.verdict is None
    ep.judge("complete", covered_frames=10)
    assert ep.verdict == "complete"
    # 160 ms = 5 frames after the last voiced one (9): frame 14
    assert stop_index(ep, [0.0] * 10, start=11) == 14


def test_smart_a_verdict_arriving_late_ends_the_turn_at_the_next_frame() -> None:
    ep = Endpointer(SMART, frame_ms=FRAME_MS)
    run(ep, [0.9] * 10 + [0.0] * 8)  # 8 silent frames: past 160 ms, short of 960 ms
    assert ep.speaking
    ep.judge("complete", covered_frames=10)
    assert stop_index(ep, [0.0], start=18) == 18


def test_smart_an_incomplete_transcript_waits_the_long_silence() -> None:
    ep = Endpointer(SMART, frame_ms=FRAME_MS)
    run(ep, [0.9] * 10 + [0.0])
    ep.judge("incomplete", covered_frames=10)
    # 960 ms = 30 frames after frame 9
    assert stop_index(ep, [0.0] * 40, start=11) == 39


def test_smart_an_unclear_transcript_waits_the_fixed_silence() -> None:
    ep = Endpointer(SMART, frame_ms=FRAME_MS)
    run(ep, [0.9] * 10 + [0.0])
    ep.judge("unclear", covered_frames=10)
    assert stop_index(ep, [0.0] * 40, start=11) == 19  # 320 ms = 10 frames


def test_smart_without_a_transcript_waits_for_one_up_to_the_long_silence() -> None:
    ep = Endpointer(SMART, frame_ms=FRAME_MS)
    run(ep, [0.9] * 10)
    assert stop_index(ep, [0.0] * 40, start=10) == 39


def test_smart_a_transcript_of_part_of_the_speech_is_ignored() -> None:
    ep = Endpointer(SMART, frame_ms=FRAME_MS)
    run(ep, [0.9] * 10 + [0.0])
    ep.judge("complete", covered_frames=8)  # a snapshot taken before the last two frames
    assert ep.verdict is None
    assert stop_index(ep, [0.0] * 40, start=11) == 39


def test_smart_speech_resuming_forgets_the_verdict() -> None:
    ep = Endpointer(SMART, frame_ms=FRAME_MS)
    run(ep, [0.9] * 10 + [0.0] * 2)
    ep.judge("complete", covered_frames=10)
    run(ep, [0.9] * 3 + [0.0], start=12)  # the user goes on: a new pause
    assert ep.paused and ep.verdict is None
    ep.judge("complete", covered_frames=10)  # the old transcript no longer covers the speech
    assert ep.verdict is None
    assert stop_index(ep, [0.0] * 40, start=16) == 14 + 30


def test_a_verdict_outside_a_pause_is_not_kept() -> None:
    ep = Endpointer(SMART, frame_ms=FRAME_MS)
    run(ep, [0.9] * 10)
    ep.judge("complete", covered_frames=10)  # still speaking: nothing to judge
    run(ep, [0.0], start=10)
    assert ep.verdict is None
