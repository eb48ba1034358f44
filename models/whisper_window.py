"""Whisper decoding over windows as long as the speech, with a bounded budget.

Whisper was trained on 30-second windows, and faster-whisper pads every clip to one (3000 mel
frames): a 2-second question pays the encoder for 30 s of audio (about 220 ms of tiny.en on two
cores, against about 20 ms for the question alone). CTranslate2 encodes shorter feature arrays
(OpenNMT/CTranslate2 PR #1446), and the decoder then attends to what was said only. Too short a
window fails, though: with no room after the speech the decoder repeats the sentence or stops
early. So a window is the audio plus a margin, never shorter than a floor (``WindowPolicy``;
the defaults were measured, see ``STTSettings``). Audio longer than 30 s is still cut into
30-second windows; only the last one is shortened.

We run the window loop here rather than faster-whisper's ``generate_segments`` because that loop
pads every window to 3000 frames inside itself. We reuse faster-whisper's feature extractor,
tokenizer, prompt builder and suppressed tokens, and follow its loop (segments split at timestamp
tokens, seeking to the end of the last complete segment, the text so far as the next window's
prompt, skipping windows the model calls silent), so transcripts and timestamps read the same.

Two more bounds that faster-whisper leaves open:

- **Tokens**: a window decodes at most ``tokens_per_second`` per second of its audio (plus a small
  allowance), so a decoder stuck in a loop stops there instead of at 448 tokens.
- **Silence**: a window with no 30 ms frame louder than ``silence_dbfs`` is not decoded at all.
  Whisper hallucinates on silence ("you", "Thank you."), and ten minutes of it cost seconds.

Temperature fallback (re-decoding a window that looks like a loop at higher temperatures) is
whatever ``DecodeOptions.temperatures`` says: several for files, none for realtime work, where
it made the tail slow and the transcript random from one run to the next.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.types import Float32Array, Segment

log = logging.getLogger("voxline.stt.whisper")

FULL_WINDOW = 3000
"""Mel frames in Whisper's training window (30 s at 10 ms a frame)."""

_FRAME_SECONDS = 0.01  # one mel frame (hop of 160 samples at 16 kHz)
_TIMESTAMP_SECONDS = 0.02  # one timestamp token
_INPUT_STRIDE = 2  # mel frames per encoder position (the encoder's second conv has stride 2)
_TOKEN_ALLOWANCE = 16  # on top of the per-second budget: timestamps, punctuation, a short word
_MAX_INITIAL_TIMESTAMP_INDEX = 50  # the first segment starts within 1 s (whisper's default)
# Whisper's (and faster-whisper's) thresholds for "this decode failed" and "this is silence".
_COMPRESSION_RATIO_THRESHOLD = 2.4
_LOG_PROB_THRESHOLD = -1.0
_NO_SPEECH_THRESHOLD = 0.6
_PROMPT_RESET_TEMPERATURE = 0.5
_GATE_FRAME_SECONDS = 0.03


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """How many mel frames the encoder sees for a window holding ``content`` frames of audio.

    Attributes:
        margin_frames: Frames of padding after the audio.
        floor_frames: The shortest window; ``FULL_WINDOW`` restores the fixed 30 s window.
    """

    margin_frames: int
    floor_frames: int

    def frames(self, content: int) -> int:
        """The window length for ``content`` frames of audio (even, at most ``FULL_WINDOW``)."""
        frames = min(FULL_WINDOW, max(content + self.margin_frames, self.floor_frames))
        return frames + frames % 2  # the encoder halves it: an odd length would lose a frame


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """How one transcription decodes.

    Attributes:
        window: Encoder window lengths.
        beam_size: Beam width at temperature 0.
        temperatures: Temperatures tried in turn while a window's decode looks failed
            (repetitive or improbable); ``(0.0,)`` is greedy/beam only, deterministic.
        tokens_per_second: Cap on decoded tokens per second of a window's audio.
        silence_dbfs: A window whose loudest 30 ms frame is quieter than this is skipped.
        deadline: ``time.perf_counter()`` value after which no window is decoded a second
            time (no retry, no fallback); every window is still decoded once, within its token
            budget, so the words are all there and the work stays proportional to the audio
            (``None``: no deadline).
        vad_filter: Drop non-speech with Silero VAD before decoding (faster-whisper's own).
    """

    window: WindowPolicy
    beam_size: int = 1
    temperatures: tuple[float, ...] = (0.0,)
    tokens_per_second: float = 12.0
    silence_dbfs: float = -50.0
    deadline: float | None = None
    vad_filter: bool = False

    def overdue(self) -> bool:
        """Whether the deadline has passed."""
        return self.deadline is not None and time.perf_counter() > self.deadline


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One decode of one window."""

    tokens: list[int]
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    temperature: float
    truncated: bool  # it used the whole token budget: a loop, cut

    @property
    def looped(self) -> bool:
        """Whether it repeats itself: text that compresses too well (whisper's test, which
        misses short loops such as "Ten of clubs. Ten of clubs. Ten of"), or a cut decode."""
        return self.truncated or self.compression_ratio > _COMPRESSION_RATIO_THRESHOLD


def is_silent(samples: Float32Array, dbfs: float, sample_rate: int = 16_000) -> bool:
    """Whether no 30 ms frame of ``samples`` is louder (RMS) than ``dbfs``."""
    if len(samples) == 0:
        return True
    frame = max(1, int(_GATE_FRAME_SECONDS * sample_rate))
    padded = np.pad(samples, (0, -len(samples) % frame)).reshape(-1, frame)
    loudest = float(np.max(np.mean(np.square(padded, dtype=np.float64), axis=1)))
    return loudest < 10 ** (dbfs / 10)  # RMS in dBFS: 20 log10(rms) = 10 log10(mean square)


def transcribe_windows(
    model: Any,
    samples: Float32Array,
    *,
    language: str | None,
    prompt: str | None,
    options: DecodeOptions,
    stop: threading.Event,
) -> Iterator[str | Segment]:
    """Decode ``samples`` (16 kHz mono) window by window with a faster-whisper ``WhisperModel``.

    Yields the language once (when the first window is decoded; nothing for silent audio), then
    each non-empty segment in order. Returns early, without an error, when ``stop`` is set.
    """
    from faster_whisper.vad import SpeechTimestampsMap, VadOptions, get_speech_timestamps

    extractor = model.feature_extractor
    speech_map = None
    if options.vad_filter:
        chunks = get_speech_timestamps(samples, VadOptions())
        if not chunks:
            return
        samples = np.concatenate([samples[c["start"] : c["end"]] for c in chunks])
        speech_map = SpeechTimestampsMap(chunks, extractor.sampling_rate)
    if is_silent(samples, options.silence_dbfs, extractor.sampling_rate):
        return  # before the features: ten minutes of them take a second to compute
    features = extractor(samples)
    content = features.shape[-1] - 1  # the extractor appends one frame of its own padding
    # The prompt's tokens do not depend on the language: encode them before detecting it.
    history: list[int] = (
        model.hf_tokenizer.encode(" " + prompt.strip(), add_special_tokens=False).ids
        if prompt and prompt.strip()
        else []
    )
    reset_at = 0
    tokenizer: Any = None
    suppress: list[int] = []
    seek = 0
    while seek < content:
        if stop.is_set():
            return
        size = min(FULL_WINDOW, content - seek)
        first = seek * extractor.hop_length
        if is_silent(samples[first : first + size * extractor.hop_length], options.silence_dbfs):
            seek += size
            continue
        piece = features[:, seek : seek + size]
        encoder = _Encoder(model, piece, options.window.frames(size))
        if tokenizer is None:
            tokenizer, suppress = _tokenizer(model, language or _detect(model, encoder(False)))
            yield str(tokenizer.language_code)
        budget = math.ceil(options.tokens_per_second * size * _FRAME_SECONDS) + _TOKEN_ALLOWANCE
        prompt_tokens = model.get_prompt(tokenizer, history[reset_at:])
        attempt = _decode(model, encoder, prompt_tokens, tokenizer, suppress, options, budget, stop)
        if attempt is None or stop.is_set():  # nothing more may reach a consumer that left
            return
        if (
            attempt.no_speech_prob > _NO_SPEECH_THRESHOLD
            and attempt.avg_logprob < _LOG_PROB_THRESHOLD
        ):
            seek += size  # the model hears no speech here (whisper's rule)
            continue
        offset = seek * _FRAME_SECONDS
        pieces, advance = _split(attempt.tokens, tokenizer.timestamp_begin, size)
        end_of_audio = content * _FRAME_SECONDS
        for start, end, tokens in pieces:
            text = tokenizer.decode(tokens).strip()
            start, end = offset + start, min(offset + end, end_of_audio)
            if not text or start >= end:
                continue
            history.extend(tokens)
            if speech_map is not None:
                start = speech_map.get_original_time(start)
                end = speech_map.get_original_time(end, is_end=True)
            yield Segment(text=text, start=round(start, 3), end=round(end, 3))
            if stop.is_set():
                return
        if attempt.temperature > _PROMPT_RESET_TEMPERATURE:
            reset_at = len(history)  # a hot decode's text is a poor prompt for the next window
        seek += advance


def _tokenizer(model: Any, language: str) -> tuple[Any, list[int]]:
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens

    multilingual = bool(model.model.is_multilingual)
    tokenizer = Tokenizer(
        model.hf_tokenizer,
        multilingual,
        task="transcribe",
        language=language if multilingual else None,
    )
    return tokenizer, list(get_suppressed_tokens(tokenizer, [-1]) or [])


def _detect(model: Any, encoded: Any) -> str:
    """The most probable language of an encoded window (English for English-only models)."""
    if not model.model.is_multilingual:
        return "en"
    token, _ = model.model.detect_language(encoded)[0][0]  # e.g. ("<|en|>", 0.97)
    return str(token[2:-2])


class _Encoder:
    """A window's encoder output, short (the policy's length) or full (30 s), each made once."""

    def __init__(self, model: Any, piece: Float32Array, frames: int) -> None:
        self.model, self.piece, self.frames = model, piece, frames
        self._done: dict[bool, Any] = {}

    @property
    def short(self) -> bool:
        """Whether the policy's window is shorter than the full one."""
        return self.frames < FULL_WINDOW

    def __call__(self, full: bool) -> Any:
        full = full or not self.short  # a policy window of 30 s is the full one: encode it once
        if full not in self._done:
            frames = FULL_WINDOW if full else self.frames
            padding = ((0, 0), (0, frames - self.piece.shape[-1]))
            self._done[full] = self.model.encode(np.pad(self.piece, padding))
        return self._done[full]


def _plan(options: DecodeOptions, short: bool) -> list[tuple[bool, float]]:
    """The attempts at one window, in order: ``(full window?, temperature)``.

    A short window that fails is first decoded again on the full window at temperature 0:
    deterministic, and the cure for the short window's own failure (the decoder repeating the
    sentence when the window leaves it too little room after the speech). Then, for files, the
    sampled temperatures.
    """
    plan = [(False, 0.0)]
    if short:
        plan.append((True, 0.0))
    plan += [(True, t) for t in options.temperatures if t > 0]
    return plan


def _decode(
    model: Any,
    encoder: _Encoder,
    prompt: list[int],
    tokenizer: Any,
    suppress: list[int],
    options: DecodeOptions,
    budget: int,
    stop: threading.Event,
) -> _Attempt | None:
    """Decode one window, trying again (``_plan``) while the result looks failed.

    Realtime options (temperatures ``(0.0,)``) retry only a loop, on the full window: at most
    two decodes, the same result every time. With sampled temperatures, whisper's rule: a
    repetitive or improbable decode is retried, unless the model hears no speech.
    """
    from faster_whisper.transcribe import get_compression_ratio

    # CTranslate2 stops Whisper at max_length // 2 new tokens (whisper's sample_len) and at
    # max_length tokens in all (prompt included, give or take one): ask for enough of both.
    max_length = min(max(2 * budget, len(prompt) + budget), model.max_length)
    cap = min(max_length // 2, max_length - len(prompt) + 1)
    sampling = len(options.temperatures) > 1
    attempts: list[_Attempt] = []
    for full, temperature in _plan(options, encoder.short):
        if attempts and stop.is_set():
            return None  # nobody wants the result: a decode here would only delay the stop
        if attempts and options.overdue():
            log.info("STT past its deadline: a failed decode is kept, not retried")
            break
        if temperature > 0:
            search: dict[str, Any] = {
                "beam_size": 1,
                "num_hypotheses": 5,  # whisper's best_of
                "sampling_topk": 0,
                "sampling_temperature": temperature,
            }
        else:
            search = {"beam_size": options.beam_size}
        result = model.model.generate(
            encoder(full),
            [prompt],
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=suppress,
            max_initial_timestamp_index=_MAX_INITIAL_TIMESTAMP_INDEX,
            **search,
        )[0]
        tokens = list(result.sequences_ids[0])
        # CTranslate2 scores are length-normalized sums; whisper averages over tokens + EOT.
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        attempt = _Attempt(
            tokens,
            avg_logprob,
            get_compression_ratio(tokenizer.decode(tokens).strip()),
            result.no_speech_prob,
            temperature,
            truncated=len(tokens) >= cap,
        )
        attempts.append(attempt)
        repetitive = attempt.looped
        improbable = sampling and avg_logprob < _LOG_PROB_THRESHOLD
        silent = avg_logprob < _LOG_PROB_THRESHOLD and attempt.no_speech_prob > _NO_SPEECH_THRESHOLD
        if silent or not (repetitive or improbable):
            return attempt
    # Every attempt failed: the most probable one that is not a loop (whisper's choice).
    fluent = [a for a in attempts if not a.looped]
    best = max(fluent or attempts, key=lambda a: a.avg_logprob)
    return replace(best, temperature=attempts[-1].temperature)


def _split(
    tokens: list[int], timestamp_begin: int, size: int
) -> tuple[list[tuple[float, float, list[int]]], int]:
    """Cut a window's tokens at timestamp pairs (whisper's rule).

    Returns ``(start, end, tokens)`` of each segment (seconds from the window's start) and how
    many frames to advance: to the end of the last complete segment when the window ended
    mid-segment (its rest is decoded again in the next window), else the whole window.
    """
    ending = len(tokens) >= 2 and tokens[-2] < timestamp_begin <= tokens[-1]
    cuts = [
        i
        for i in range(1, len(tokens))
        if tokens[i] >= timestamp_begin and tokens[i - 1] >= timestamp_begin
    ]
    if not cuts:
        stamps = [t for t in tokens if t >= timestamp_begin]
        duration = size * _FRAME_SECONDS
        if stamps and stamps[-1] != timestamp_begin:
            duration = (stamps[-1] - timestamp_begin) * _TIMESTAMP_SECONDS
        return [(0.0, duration, tokens)], size
    if ending:
        cuts.append(len(tokens))
    pieces = []
    last = 0
    for cut in cuts:
        piece = tokens[last:cut]
        start = (piece[0] - timestamp_begin) * _TIMESTAMP_SECONDS
        pieces.append((start, (piece[-1] - timestamp_begin) * _TIMESTAMP_SECONDS, piece))
        last = cut
    advance = size if ending else (tokens[last - 1] - timestamp_begin) * _INPUT_STRIDE
    return pieces, advance if 0 < advance <= size else size
