"""The realtime conversation: endpointing, speculation and history of a session, and how a
reply's text is cut into phrases for TTS."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ReplySettings(BaseModel):
    """How a reply's text is cut into phrases for TTS (``pipeline/phrases.py``).

    The first phrase decides the time to first audio: TTS starts when it is complete, so its
    length is a trade between latency (a small LLM on a CPU takes tens of ms a word) and
    prosody (each phrase is spoken on its own, with a phrase-final intonation).
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    first_phrase_min_words: int = Field(default=3, ge=1)
    """The first phrase may end at a clause boundary (a comma...) once it has this many words."""
    first_phrase_max_words: int = Field(default=4, ge=0)
    """The first phrase is cut at a word boundary once it has this many words, even with no
    punctuation yet (0: never); not right after a word it should not end on ("the", "of", "is",
    "any", a number...): up to three words later."""
    phrase_min_words: int = Field(default=8, ge=1)
    """Later phrases end at a clause boundary only once they have this many words (whole
    sentences sound better)."""
    phrase_max_chars: int = Field(default=160, ge=20)
    """A phrase longer than this is cut at its last clause boundary or space."""


class SessionSettings(BaseModel):
    """The realtime conversation session: endpointing, speculation and history.

    ``silence_duration_ms`` is the latency knob, and it is cheaper than it looks. The session
    starts the final transcription at the first silent frame and (``speculative_response``) the
    reply as soon as that transcript is ready, holding its audio until the silence is long
    enough. So voice-to-voice is about max(silence, STT + LLM first phrase + TTS first audio),
    not their sum: on a 2-core CPU that chain takes 0.7 s or more, and any silence below it is
    free, while a shorter one only ends more turns at a mid-sentence pause (each false end
    costs CPU the real turn then waits for). 400 ms stays hidden behind the CPU chain and keeps
    voice-to-voice under 500 ms where the chain is faster (a GPU).

    ``turn_end=smart`` (the default) goes further: the transcript started at the pause says
    whether the user is done, so a finished question ends after ``complete_silence_ms`` and a
    sentence left hanging ("a table for ...") waits ``incomplete_silence_ms``. Silence is counted
    in audio received, as with the fixed silence: a client must keep streaming (silence) until the
    turn ends, up to ``incomplete_silence_ms`` of it.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    vad_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    """Speech probability at or above which a VAD frame counts as voiced."""
    silence_duration_ms: int = Field(default=400, ge=0, le=10_000)
    """Silence after the last voiced frame that ends a turn (OpenAI's default is 500); with
    ``turn_end=smart``, only when the transcript before the pause is unclear."""
    turn_end: Literal["fixed", "smart"] = "smart"
    """``fixed``: every turn ends after ``silence_duration_ms`` of silence. ``smart``: the
    transcript of the speech before a pause decides (``pipeline/turn_end.py``): one that reads
    complete ends the turn after ``complete_silence_ms``, one that stops mid-sentence ("a table
    for ...") waits ``incomplete_silence_ms``."""
    complete_silence_ms: int = Field(default=250, ge=0, le=10_000)
    """``smart`` turn end: the silence that ends a turn whose transcript reads complete."""
    incomplete_silence_ms: int = Field(default=1200, ge=0, le=10_000)
    """``smart`` turn end: the silence that ends a turn whose transcript stops mid-sentence,
    and the longest wait for the transcript of a pause."""
    prefix_padding_ms: int = Field(default=300, ge=0, le=5_000)
    """Audio kept before the first voiced frame (quiet word onsets)."""
    min_speech_ms: int = Field(default=100, ge=0, le=5_000)
    """Voiced audio needed before speech counts as started (and interrupts the assistant):
    filters clicks and coughs."""
    partial_interval_ms: int = Field(default=1000, ge=0)
    """Transcribe the utterance so far after this much new audio (0: only at pauses, where the
    speculative transcription runs anyway). On a CPU a partial still running when the user
    stops delays the final transcript by up to one transcription: keep them sparse, or use 0
    for the lowest voice-to-voice latency."""
    speculative_response: bool = True
    """Start the reply on the speculative transcript before the end of turn is confirmed; its
    audio is held back until then, and it is dropped silently if the user goes on speaking."""
    prefill: bool = True
    """After each response, read the conversation so far into the LLM's prompt cache while the
    user listens (llama.cpp; spare engine capacity only), so the next turn's first token waits
    only for its own words, not for the previous reply read back or a trimmed history."""
    history_max_tokens: int = Field(default=512, ge=16)
    """Conversation history sent to the LLM, in (approximate) tokens; the system prompt is
    always kept. Small on CPU: every token of history is prefilled again on every turn."""
    chars_per_token: float = Field(default=4.0, gt=0.0)
    """Characters per token used to estimate history length without a tokenizer."""
    input_sample_rate: int = Field(default=24_000, ge=8_000, le=192_000)
    """Sample rate of the client's audio (OpenAI Realtime's pcm16 is 24 kHz)."""
    output_sample_rate: int = Field(default=24_000, ge=8_000, le=192_000)
    """Sample rate of the audio the session sends (resampled from the TTS engine's rate)."""
    max_utterance_seconds: float = Field(default=60.0, gt=0.0)
    """Longest user turn; a longer one is ended (server VAD) or refused (manual commit)."""
