"""Splicing a new backend's stream onto what the listener already got: text and audio."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.splice import AudioSplice, Continuation
from pipeline.types import AudioChunk
from tests.fakes import tone

SENT = "The moon is a celestial body that orbits Earth. Its beauty"


def _feed(splice: Continuation, pieces: list[str]) -> str:
    return "".join(splice.feed(p) for p in pieces)


def _tokens(text: str) -> list[str]:
    """Word-sized pieces with their leading space, as LLM tokens stream."""
    words = text.split(" ")
    return [words[0], *(" " + w for w in words[1:])]


@pytest.mark.parametrize(
    ("sent", "new", "expected"),
    [
        # SmolLM2 asked to continue: says it all again, then goes on
        (SENT, SENT + " is reflected in old stories.", " is reflected in old stories."),
        ("The capital of ", "The capital of France is Paris.", "France is Paris."),
        ("The capi", "The capital of France.", "tal of France."),  # cut mid-word
        # a direct continuation, with or without its leading space
        (SENT, " is reflected in old stories.", " is reflected in old stories."),
        (SENT, "is reflected.", " is reflected."),
        # repeats the last words, then goes on
        (SENT, "Its beauty is reflected.", " is reflected."),
        (SENT, "beauty is reflected.", " is reflected."),
        # restarts in other words: the rephrased sentence is dropped, the next one passes
        (SENT, "The moon is our only satellite. It shines at night.", " It shines at night."),
    ],
)
def test_continuation_splices_without_repeating(sent: str, new: str, expected: str) -> None:
    assert _feed(Continuation(sent), _tokens(new)) == expected


def test_continuation_holds_back_a_pure_repetition() -> None:
    splice = Continuation(SENT)
    assert _feed(splice, _tokens("The moon is a celestial body")) == ""
    assert splice.feed("") == ""  # the stream may end here: nothing new was said


def test_continuation_passes_everything_after_the_splice() -> None:
    splice = Continuation("Hello,")
    assert splice.feed("Hello, world") == " world"
    assert splice.feed(" Hello,") == " Hello,"  # decided: a later repetition is the model's own


def test_continuation_holds_only_while_a_repetition_is_possible() -> None:
    splice = Continuation("It was a dark and stormy night")
    assert splice.feed(" and") == ""  # occurs in what was sent: could be an overlap
    assert splice.feed(" then") == " and then"


def _run(splice: AudioSplice, chunks: list[AudioChunk]) -> np.ndarray:
    out = [splice.push(c) for c in chunks] + [splice.flush()]
    parts = [c.samples for c in out if c is not None]
    assert all(c.sample_rate == splice.sample_rate for c in out if c is not None)
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _chunks(samples: np.ndarray, rate: int, size: int) -> list[AudioChunk]:
    return [AudioChunk(samples[i : i + size], rate) for i in range(0, len(samples), size)]


def test_audio_splice_skips_what_was_sent() -> None:
    audio = tone(0.5, 16_000)
    splice = AudioSplice(16_000)
    first = _run(splice, _chunks(audio[:3000], 16_000, 800))
    splice.restart()  # the next backend speaks the whole phrase again
    second = _run(splice, _chunks(audio, 16_000, 700))
    assert np.array_equal(np.concatenate([first, second]), audio)
    assert splice.sent == len(audio)


def test_audio_splice_resamples_the_next_backend_to_its_rate() -> None:
    splice = AudioSplice(16_000)
    first = _run(splice, _chunks(tone(0.5, 16_000)[:3000], 16_000, 800))
    splice.restart()
    second = _run(splice, _chunks(tone(0.5, 22_050), 22_050, 1000))
    joined = np.concatenate([first, second])
    reference = tone(0.5, 16_000)
    assert abs(len(joined) - len(reference)) <= 1
    n = min(len(joined), len(reference))
    # resampling edges aside, the tone goes on in phase where the first backend stopped
    assert np.abs(joined[100 : n - 100] - reference[100 : n - 100]).max() < 0.01


def test_audio_splice_holds_leading_silence_until_sound() -> None:
    splice = AudioSplice(16_000)
    silence, sound = np.zeros(400, np.float32), tone(0.05, 16_000)
    assert splice.push(AudioChunk(silence, 16_000)) is None and not splice.heard
    held = splice.held()
    assert held is not None and len(held.samples) == 400
    out = splice.push(AudioChunk(sound, 16_000))
    assert out is not None and np.array_equal(out.samples, np.concatenate([silence, sound]))
    assert splice.heard and splice.held() is None


def test_audio_splice_drops_unsent_silence_on_restart() -> None:
    splice = AudioSplice(16_000)
    splice.push(AudioChunk(np.zeros(400, np.float32), 16_000))
    splice.restart()
    sound = tone(0.05, 16_000)
    out = splice.push(AudioChunk(sound, 16_000))
    assert out is not None and np.array_equal(out.samples, sound)  # nothing was sent to skip
