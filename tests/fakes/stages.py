"""Scripted STT, LLM and TTS stages: the one family of stage doubles.

Each is a real subclass of its stage contract (``pipeline.stages``), so validation, resampling,
call records and error translation run exactly as in production; only the engine half
(``_transcribe`` / ``_stream`` / ``_synthesize``) is scripted. An engine's calls follow
:class:`Plan` s, one per call, in order (``fail_times`` prepends failing ones): raise an engine
exception or a voxline error after some items, hang, delay, or say something unusable.

Time is the event loop's (``loop.time()``): every delay is an ``asyncio.sleep`` and every record
(:class:`Call`, and the stage's own ``CallRecord`` via ``clock``) reads the loop's clock. Under the
``looptime`` plugin that clock is virtual, so a test of a 10 s deadline runs in microseconds and
gives the same answer on a loaded machine. The default pace is instant; the ``*_PACE`` presets give
each engine the relative speed measured for the CPU defaults (README, "Measured on this machine"),
for tests whose outcome depends on overlap (speculation, barge-in): a double 15 times faster than
Whisper validates a regime the product never runs in.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from pipeline.scheduler import EngineScheduler
from pipeline.stages import LLM, STT, TTS
from pipeline.types import (
    AudioChunk,
    GenerationParams,
    LLMCapabilities,
    Message,
    TextDelta,
    ToolCallDelta,
    Transcript,
    TTSCapabilities,
    Usage,
)

# Virtual-time cost of the CPU default engines (README, "Measured on this machine", 2 cores):
# whisper tiny.en pads every clip to a 30 s window (~350 ms of encoder), p50 545 ms on 2-4 s clips;
# SmolLM2-135M on llama.cpp: first token 109 ms, 56 tokens/s; Piper: first audio 124 ms, RTF 0.05.
WHISPER_TINY_PACE: dict[str, float] = {"latency_s": 0.35, "per_audio_s": 0.06}
SMOLLM2_PACE: dict[str, float] = {"ttft_s": 0.11, "token_s": 0.018}
PIPER_PACE: dict[str, float] = {"ttfb_s": 0.12, "rtf": 0.05}


def loop_time() -> float:
    """The running event loop's clock (virtual under ``looptime``)."""
    return asyncio.get_running_loop().time()


S = TypeVar("S", STT, LLM, TTS)


def scheduled(stage: S, capacity: int = 1, max_queue: int = 8, max_wait_s: float = 5.0) -> S:
    """``stage`` with an engine scheduler on the loop's clock, as the registry gives every
    engine (``pipeline.scheduler``); a fallback chain takes its slots."""
    stage.scheduler = EngineScheduler(
        stage.name,
        stage=stage.stage,
        capacity=capacity,
        max_queue=max_queue,
        max_wait_s=max_wait_s,
        clock=loop_time,
    )
    return stage


class OutOfMemoryError(RuntimeError):
    """Named like ``torch.cuda.OutOfMemoryError``: the stages recognise out-of-memory by name."""


@dataclass
class Plan:
    """How a scripted engine behaves in one call.

    Attributes:
        error: Raised after ``after`` items: an engine exception (the stage translates it) or a
            voxline error (passed through). A class is instantiated at each raise.
        after: Items yielded before the error or the hang.
        hang: Wait forever (until cancelled) after ``after`` items.
        first_delay_s: Seconds before the first item (``None``: the engine's pace).
        gap_s: Seconds between two items (``None``: the engine's pace).
        garbage: Unusable output: STT ends without a final, LLM replies with no text, TTS sends
            NaN from item ``after`` on.
        silent: TTS only: exact zeros instead of the audio.
        output: The items this call yields instead of the engine's own (what no healthy
            double says, e.g. the empty audio chunks some engines yield between sentences).
    """

    error: BaseException | type[BaseException] | None = None
    after: int = 0
    hang: bool = False
    first_delay_s: float | None = None
    gap_s: float | None = None
    garbage: bool = False
    silent: bool = False
    output: Sequence[Any] | None = None


@dataclass
class Call:
    """One call of a scripted engine.

    Attributes:
        input: The audio (STT), the messages (LLM) or the text (TTS).
        params: LLM only: the generation parameters.
        voice: TTS only: the voice asked for.
        speed: TTS only: the speed asked for.
        started: Loop time of the call.
        finished: Loop time its last item was handed over (``None``: it never got there).
        closed: Its iterator ended: ran out, failed, or was closed or cancelled.
        outputs: Items handed over (the engine's own count of what it produced).
    """

    input: Any
    params: GenerationParams | None = None
    voice: str | None = None
    speed: float = 1.0
    started: float = 0.0
    finished: float | None = None
    closed: bool = False
    outputs: int = 0

    @property
    def closed_early(self) -> bool:
        """Closed (a consumer stopped, a task was cancelled, an error) before its last item."""
        return self.closed and self.finished is None


class _Scripted:
    """What the scripted engines share: plans, a health switch, and records of calls.

    Attributes:
        plans: Behaviour of the next calls, one each (an empty queue: healthy calls).
        down: While true, every call and warm-up fails at once (a dead server, a lost GPU).
        calls: Every call, in order (recorded when the stage calls the engine).
        opened: Calls whose iterator started; ``closed``: those that ended, however.
        warm_calls: ``warm()`` calls (the chain's probe of a backend without ``probe()``).
    """

    clock: Callable[[], float]

    def _init_script(
        self,
        fail_times: int,
        error: BaseException | type[BaseException],
        plans: Sequence[Plan],
    ) -> None:
        self.clock = loop_time  # the stage's CallRecords on the same clock as the delays
        self.plans: deque[Plan] = deque(Plan(error=error) for _ in range(fail_times))
        self.plans.extend(plans)
        self.down = False
        self.calls: list[Call] = []
        self.opened = 0
        self.closed = 0
        self.warm_calls = 0

    def _next_plan(self) -> Plan:
        if self.down:
            return Plan(error=ConnectionRefusedError("scripted: the engine is down"))
        return self.plans.popleft() if self.plans else Plan()

    def _call(self, call: Call) -> Call:
        call.started = loop_time()
        self.calls.append(call)
        return call

    async def _play(
        self, call: Call, items: list[Any], plan: Plan, first_delay_s: float, gap_s: float
    ) -> AsyncIterator[Any]:
        self.opened += 1
        items = list(plan.output) if plan.output is not None else items
        first = plan.first_delay_s if plan.first_delay_s is not None else first_delay_s
        gap = plan.gap_s if plan.gap_s is not None else gap_s
        try:
            if first:
                await asyncio.sleep(first)
            for i in range(len(items) + 1):
                if i == plan.after:
                    if plan.hang:
                        await asyncio.Event().wait()
                    if plan.error is not None:
                        raise plan.error
                if i == len(items):
                    break
                if i and gap:
                    await asyncio.sleep(gap)
                if i == len(items) - 1:
                    call.finished = loop_time()
                call.outputs += 1
                yield items[i]
        finally:
            call.closed = True
            self.closed += 1

    async def warm(self) -> None:
        self.warm_calls += 1
        if self.down:
            raise ConnectionRefusedError("scripted: the engine is down")


class ScriptedSTT(_Scripted, STT):
    """Transcribes any audio as ``text``: a partial per word (as Whisper's segments stream),
    then the final.

    Args:
        name: Backend name.
        text: What the whole utterance says.
        words_per_second: When set, a clip says only the words "spoken" by its end, counted from
            its start (so a longer snapshot of an utterance says more).
        script: When set, what a clip of that many seconds says (instead of the above).
        partials: Yield a partial transcript per word before the final.
        sample_rate: The engine's rate.
        latency_s: Seconds before the first output, whatever the clip.
        per_audio_s: Seconds before the first output per second of audio.
        fail_times: The first calls raise ``error`` before any output.
        error: See ``fail_times``.
        plans: The calls after those.
    """

    def __init__(
        self,
        name: str = "fake-stt",
        *,
        text: str = "hello there world",
        words_per_second: float | None = None,
        script: Callable[[float], str] | None = None,
        partials: bool = True,
        sample_rate: int = 16_000,
        latency_s: float = 0.0,
        per_audio_s: float = 0.0,
        fail_times: int = 0,
        error: BaseException | type[BaseException] = ConnectionError,
        plans: Sequence[Plan] = (),
    ) -> None:
        STT.__init__(self, name=name)
        self._init_script(fail_times, error, plans)
        self.text, self.words_per_second, self.partials = text, words_per_second, partials
        self.script = script
        self.sample_rate = sample_rate
        self.latency_s, self.per_audio_s = latency_s, per_audio_s

    def said(self, seconds: float) -> str:
        """The text of a clip of ``seconds``."""
        if self.script is not None:
            return self.script(seconds)
        if self.words_per_second is None:
            return self.text
        words = self.text.split()
        return " ".join(words[: min(len(words), int(seconds * self.words_per_second))])

    def _transcribe(
        self, audio: AudioChunk, *, language: str | None, prompt: str | None
    ) -> AsyncIterator[Transcript]:
        call = self._call(Call(audio))
        plan = self._next_plan()
        text = self.said(audio.duration)
        words = text.split()
        items = [Transcript(" ".join(words[:i]), final=False) for i in range(1, len(words))]
        items = items if self.partials else []
        if not plan.garbage:
            items.append(Transcript(text, final=True, audio_seconds=audio.duration))
        delay = self.latency_s + self.per_audio_s * audio.duration
        return self._play(call, items, plan, delay, 0.0)


class ScriptedLLM(_Scripted, LLM):
    """Streams ``reply`` piece by piece, then a last delta with usage.

    Asked to continue (the messages end with an assistant message and one more), it either says
    the whole reply again (``continuation="restart"``, as SmolLM2-135M does) or only the rest of
    it after the assistant message's text (``"resume"``).

    Args:
        name: Backend name.
        reply: The pieces of the reply (reassign it between calls to change the next reply).
        continuation: See above.
        context_tokens: Declared context window.
        ttft_s: Seconds before the first piece.
        token_s: Seconds between two pieces.
        fail_times: The first calls raise ``error`` before any output.
        error: See ``fail_times``.
        plans: The calls after those.
        tool_calls: Function calls to make, ``(name, arguments)``, one per call that offers
            functions, in order (streamed as a real engine does: the id and name, then the
            arguments in pieces; ``finish_reason="tool_calls"``); when they run out, such
            calls answer with ``reply``. Declares ``capabilities.tools``.
    """

    def __init__(
        self,
        name: str = "fake-llm",
        *,
        tool_calls: Sequence[tuple[str, str]] | None = None,
        reply: Sequence[str] = ("Hello", ",", " world", ".", " How", " are", " you", "?"),
        continuation: Literal["restart", "resume"] = "restart",
        context_tokens: int = 2048,
        ttft_s: float = 0.0,
        token_s: float = 0.0,
        fail_times: int = 0,
        error: BaseException | type[BaseException] = ConnectionError,
        plans: Sequence[Plan] = (),
    ) -> None:
        LLM.__init__(self, name=name)
        self._init_script(fail_times, error, plans)
        self.reply, self.continuation = list(reply), continuation
        self.capabilities = LLMCapabilities(
            context_tokens=context_tokens, tools=tool_calls is not None
        )
        self.ttft_s, self.token_s = ttft_s, token_s
        self.tool_calls = deque(tool_calls or ())
        self.prefills: list[list[Message]] = []

    async def prefill(
        self, messages: Sequence[Message], params: GenerationParams | None = None
    ) -> bool:
        """Records the messages (``prefills``), as an engine with a prompt cache reads them."""
        self.prefills.append(list(messages))
        return True

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """This double's tokenizer: a token per 4 characters of the messages (at least one)."""
        return max(1, sum(len(m.content) for m in messages) // 4)

    def _stream(
        self, messages: list[Message], params: GenerationParams
    ) -> AsyncIterator[TextDelta]:
        call = self._call(Call(messages, params=params))
        plan = self._next_plan()
        pieces = list(self.reply)
        if self.continuation == "resume" and len(messages) > 1 and messages[-2].role == "assistant":
            done, pos, rest = messages[-2].content, 0, []
            for piece in pieces:
                if pos + len(piece) > len(done):
                    rest.append(piece[max(0, len(done) - pos) :])
                pos += len(piece)
            pieces = rest
        prompt = self.count_tokens(messages)
        deltas = [TextDelta(p) for p in pieces]
        deltas.append(TextDelta("", Usage(prompt, len(pieces)), "stop"))
        if params.tools and params.tool_choice != "none" and self.tool_calls:
            name, arguments = self.tool_calls.popleft()
            call_id = f"call_{len(self.calls)}"
            third = max(1, len(arguments) // 3)
            pieces = [arguments[i : i + third] for i in range(0, len(arguments), third)]
            deltas = [TextDelta("", tool_call=ToolCallDelta(0, call_id, name, ""))]
            deltas += [TextDelta("", tool_call=ToolCallDelta(0, call_id, name, p)) for p in pieces]
            deltas.append(TextDelta("", Usage(prompt, len(pieces)), "tool_calls"))
        if plan.garbage:
            deltas = [TextDelta("", Usage(prompt, 0), "stop")]
        return self._play(call, deltas, plan, self.ttft_s, self.token_s)


def tone(seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A 220 Hz tone: what :class:`ScriptedTTS` says, whatever the rate."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


class ScriptedTTS(_Scripted, TTS):
    """Speaks any text as a tone of ``seconds_per_char`` a character (divided by the speed, as
    Piper's length scale does), in ``chunk_s`` chunks.

    Args:
        name: Backend name.
        sample_rate: Output rate.
        voices: Declared voices (empty: any name).
        seconds_per_char: Audio per input character (~0.06 s is natural speech).
        chunk_s: Audio per chunk.
        max_input_chars: Declared input limit.
        amplitude: Of the tone.
        ttfb_s: Seconds before the first chunk.
        rtf: Real-time factor: seconds to make a chunk per second of its audio (before every
            chunk after the first).
        fail_times: The first calls raise ``error`` before any output.
        error: See ``fail_times``.
        plans: The calls after those.
    """

    def __init__(
        self,
        name: str = "fake-tts",
        *,
        sample_rate: int = 16_000,
        voices: Sequence[str] = (),
        seconds_per_char: float = 0.01,
        chunk_s: float = 0.05,
        max_input_chars: int = 4096,
        amplitude: float = 0.5,
        ttfb_s: float = 0.0,
        rtf: float = 0.0,
        fail_times: int = 0,
        error: BaseException | type[BaseException] = ConnectionError,
        plans: Sequence[Plan] = (),
    ) -> None:
        TTS.__init__(self, name=name)
        self._init_script(fail_times, error, plans)
        self.capabilities = TTSCapabilities(
            sample_rate=sample_rate, voices=tuple(voices), max_input_chars=max_input_chars
        )
        self.seconds_per_char, self.chunk_s, self.amplitude = seconds_per_char, chunk_s, amplitude
        self.ttfb_s, self.rtf = ttfb_s, rtf

    def render(self, text: str, speed: float = 1.0) -> np.ndarray:
        """The whole audio a healthy call speaks for ``text``."""
        seconds = len(text) * self.seconds_per_char / speed
        return tone(seconds, self.capabilities.sample_rate, self.amplitude)

    def _synthesize(self, text: str, voice: str | None, speed: float) -> AsyncIterator[AudioChunk]:
        call = self._call(Call(text, voice=voice, speed=speed))
        plan = self._next_plan()
        rate = self.capabilities.sample_rate
        audio, step = self.render(text, speed), round(self.chunk_s * rate)
        if plan.silent:
            audio = np.zeros_like(audio)
        if plan.garbage:
            audio[plan.after * step :] = np.nan
        chunks = [AudioChunk(audio[i : i + step], rate) for i in range(0, len(audio), step)]
        return self._play(call, chunks, plan, self.ttfb_s, self.rtf * self.chunk_s)
