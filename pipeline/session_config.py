"""What a realtime client may change: instructions, voice, sampling, turn detection.

These mirror the fields of OpenAI's ``session.update`` that the pipeline acts on. Server-wide
policy the client must not change (history budget, speculation, limits) lives in
``SessionSettings`` instead; ``SessionConfig.from_settings`` derives a new session's defaults
from the settings tree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pipeline.errors import InvalidInput
from pipeline.file_search import FileSearch
from pipeline.settings import SessionSettings, Settings
from pipeline.stages import validate_chat
from pipeline.turn_end import TurnEndMode
from pipeline.types import ForcedTool, FunctionTool, GenerationParams, Message, ToolChoice
from pipeline.vad import EndpointPolicy


@dataclass(frozen=True, slots=True)
class TurnDetection:
    """Server VAD (OpenAI's ``turn_detection: {"type": "server_vad"}``); see ``EndpointPolicy``
    (``turn_end`` and its silences are the server's settings, ``smart`` by default there; a
    client does not change them. Built by hand, it is OpenAI's fixed silence).

    Attributes:
        create_response: Answer automatically when a turn ends.
        interrupt_response: Speech starting cancels the response in progress (barge-in).
    """

    threshold: float = 0.5
    silence_duration_ms: int = 400
    prefix_padding_ms: int = 300
    min_speech_ms: int = 100
    create_response: bool = True
    interrupt_response: bool = True
    turn_end: TurnEndMode = "fixed"
    complete_silence_ms: int = 250
    incomplete_silence_ms: int = 1200

    @classmethod
    def from_settings(cls, settings: SessionSettings) -> TurnDetection:
        """Server VAD as the settings tree configures it."""
        return cls(
            threshold=settings.vad_threshold,
            silence_duration_ms=settings.silence_duration_ms,
            prefix_padding_ms=settings.prefix_padding_ms,
            min_speech_ms=settings.min_speech_ms,
            turn_end=settings.turn_end,
            complete_silence_ms=settings.complete_silence_ms,
            incomplete_silence_ms=settings.incomplete_silence_ms,
        )

    def policy(self) -> EndpointPolicy:
        """The endpointer's policy."""
        return EndpointPolicy(
            self.threshold,
            self.silence_duration_ms,
            self.prefix_padding_ms,
            self.min_speech_ms,
            turn_end=self.turn_end,
            complete_silence_ms=self.complete_silence_ms,
            incomplete_silence_ms=self.incomplete_silence_ms,
        )


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What a client may change with ``update`` (OpenAI's ``session.update``).

    Attributes:
        instructions: The system prompt.
        voice: TTS voice (``None``: the backend's default).
        speed: TTS speaking rate.
        params: LLM sampling options.
        turn_detection: Server VAD, or ``None`` for manual turns (``commit`` then
            ``create_response``).
        language: Spoken language for STT (``None``: the engine's setting).
        input_sample_rate: Rate of the client's audio (for the transport; ``append_audio``
            takes chunks at any rate).
        output_sample_rate: Rate of the audio deltas (``None``: the TTS engine's own).
        tools: Functions the model may call (OpenAI's ``session.tools`` of type function).
        tool_choice: Whether it may, must or must not call one.
        tier: The LLM tier every response uses (``None``: the router picks per turn).
        file_search: The vector stores replies are grounded in (OpenAI's ``file_search`` tool
            in ``session.tools``; ``None``: no retrieval).
    """

    instructions: str = "You are a helpful voice assistant."
    voice: str | None = None
    speed: float = 1.0
    params: GenerationParams = field(default_factory=GenerationParams)
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    language: str | None = None
    input_sample_rate: int = 24_000
    output_sample_rate: int | None = 24_000
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: ToolChoice = "auto"
    tier: str | None = None

    @property
    def reply_params(self) -> GenerationParams:
        """The LLM options of a reply: sampling, and the functions it may call."""
        return dataclasses.replace(self.params, tools=self.tools, tool_choice=self.tool_choice)

    file_search: FileSearch | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionConfig:
        """The defaults of a new session, from the settings tree."""
        s, llm = settings.session, settings.llm
        return cls(
            instructions=llm.system_prompt,
            voice=settings.tts.voice,
            speed=settings.tts.speed,
            params=GenerationParams(
                max_tokens=llm.max_tokens, temperature=llm.temperature, top_p=llm.top_p
            ),
            turn_detection=TurnDetection.from_settings(s),
            language=settings.stt.language,
            input_sample_rate=s.input_sample_rate,
            output_sample_rate=s.output_sample_rate,
        )

    def validate(self) -> None:
        """Raises ``InvalidInput`` naming the first bad field."""
        td = self.turn_detection
        checks = [
            (0.25 <= self.speed <= 4.0, "speed", "must be between 0.25 and 4.0"),
            (8_000 <= self.input_sample_rate <= 192_000, "input_sample_rate", "out of range"),
            (
                self.output_sample_rate is None or 8_000 <= self.output_sample_rate <= 192_000,
                "output_sample_rate",
                "out of range",
            ),
            (td is None or 0.0 < td.threshold < 1.0, "turn_detection.threshold", "not in (0, 1)"),
            (
                td is None
                or min(
                    td.silence_duration_ms,
                    td.prefix_padding_ms,
                    td.min_speech_ms,
                    td.complete_silence_ms,
                    td.incomplete_silence_ms,
                )
                >= 0,
                "turn_detection",
                "durations must not be negative",
            ),
        ]
        choice = self.tool_choice
        names = {t.name for t in self.tools}
        checks += [
            (
                not isinstance(choice, ForcedTool) or choice.name in names,
                "tool_choice",
                "names a function that is not in tools",
            ),
            (choice != "required" or bool(names), "tool_choice", "'required' needs tools"),
        ]
        for ok, param, problem in checks:
            if not ok:
                raise InvalidInput(f"{param} {problem}", param=param)
        validate_chat([Message("system", self.instructions)], self.params)
