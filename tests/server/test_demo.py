"""The Gradio demo and its realtime client, against a real server with the real default models.

The server runs in uvicorn on a loopback port (the demo is a WebSocket client of
``/v1/realtime``, which ASGITransport cannot carry); the clip is real speech from the packaged
Piper voice, spoken at real-time pace as the demo does. The browser test (``test_demo_browser``)
drives the page itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app as cli
from models.registry import Engines
from pipeline.errors import EngineUnavailable
from pipeline.settings import LLMSettings, SessionSettings
from pipeline.types import AudioChunk
from server.demo import _render, build_demo
from server.demo_client import RealtimeDemoClient
from server.demo_conversation import SAMPLE_RATE, STAGES, Conversation, DemoView
from tests.conftest import speak
from tests.server.conftest import LiveServer, make_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUESTION = "Please tell me, what is the capital city of France?"


@pytest.fixture(scope="module")
def server(engines: Engines) -> Iterator[LiveServer]:
    """The app with the demo on, served by uvicorn (short replies keep the tests quick)."""
    from server.app import create_app

    settings = make_settings(
        demo_enabled=True,
        llm=LLMSettings(engine="transformers", max_tokens=24),
        # a longer fixed end-of-turn silence: the comma pause of "Please tell me," must not end
        # it (the smart turn end would ask Whisper, which may hear "Please tell me." there)
        session=SessionSettings(partial_interval_ms=800, silence_duration_ms=700, turn_end="fixed"),
    )
    with LiveServer(create_app(settings, engines=engines)) as live:
        yield live


async def _turn(client: RealtimeDemoClient, audio: AudioChunk) -> list[DemoView]:
    return [view async for view in client.speak(audio)]


async def test_the_demo_is_served_at_demo_with_the_voices_it_offers(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        page = await http.get("/demo/")
        root = await http.get("/")
        config = (await http.get("/demo/config")).json()
        voices = (await http.get("/v1/audio/voices")).json()
    assert page.status_code == 200 and "gradio" in page.text.lower()
    assert root.status_code == 404  # the API owns the root, not the demo
    assert config["analytics_enabled"] is False
    ids = [v["id"] for v in voices["data"]]
    assert voices["default"] == "joe" and "joe" in ids and "alloy" in ids


async def test_a_spoken_clip_becomes_a_timed_turn(server: LiveServer, engines: Engines) -> None:
    async with RealtimeDemoClient(server.url) as client:
        await client.configure(instructions="Answer in one short sentence.", voice="joe")
        views = await _turn(client, speak(QUESTION, SAMPLE_RATE))

    last = views[-1]
    assert last.done and last.errors == ()
    # the live transcript showed while the question was still being spoken (no user line yet)
    assert any(v.partial and not v.chat for v in views[:-1])
    you, assistant = last.chat
    assert you.role == "user" and "capital" in you.text.lower() and "france" in you.text.lower()
    assert last.partial == you.text
    assert assistant.role == "assistant" and len(assistant.text.split()) >= 2
    # the reply audio streamed: it reached the page before the turn was over (a reply of one
    # short phrase is one piece, so the number of pieces is not asserted)
    pieces = [v.audio for v in views if v.audio.size]
    assert pieces and any(v.audio.size for v in views[:-1])
    audio_s = sum(p.size for p in pieces) / SAMPLE_RATE
    assert audio_s > 0.5
    assert np.abs(np.concatenate(pieces)).max() > 1000  # speech, not silence
    (turn,) = last.turns
    assert turn.status in ("completed", "incomplete")
    assert turn.audio_s == pytest.approx(audio_s, abs=1e-3)
    stages = {s.stage: s for s in turn.stages}
    assert list(stages) == [label for label, _, _ in STAGES]
    assert all(s.ms is not None and s.ms > 0 for s in turn.stages), turn.stages
    assert stages["STT"].backend == engines.stt.name
    assert stages["LLM first phrase"].backend == engines.llm.name
    assert stages["TTS first audio"].backend == engines.tts.name


async def test_the_conversation_goes_on_and_renders_every_turn(server: LiveServer) -> None:
    async with RealtimeDemoClient(server.url) as client:
        await _turn(client, speak("What is the capital of France?", SAMPLE_RATE))
        views = await _turn(client, speak("And what about Germany?", SAMPLE_RATE))

    last = views[-1]
    assert last.errors == () and [t.number for t in last.turns] == [1, 2]
    assert [line.role for line in last.chat] == ["user", "assistant", "user", "assistant"]
    assert "germany" in last.chat[2].text.lower()

    _, chat, _, status, chart, table = _render(last, None)
    assert chat[2] == {"role": "user", "content": last.chat[2].text}
    assert status.startswith("Turn 2 ") and "voice-to-voice" in status
    bars = chart.value["data"]  # the chart shows the latest turn, a bar per stage
    assert [row[0] for row in bars] == [label for label, _, _ in STAGES]
    assert list(table["turn"]) == [1, 2] and table.shape[1] == 4 + len(STAGES)


async def test_a_clip_without_speech_ends_with_a_clear_error(server: LiveServer) -> None:
    silence = AudioChunk(np.zeros(SAMPLE_RATE // 4, dtype=np.float32), SAMPLE_RATE)
    async with RealtimeDemoClient(server.url) as client:
        views = await _turn(client, silence)
    assert views[-1].done and views[-1].errors == ("no speech was heard in the audio",)
    assert views[-1].chat == ()


async def test_an_unknown_voice_is_reported_by_the_server(server: LiveServer) -> None:
    async with RealtimeDemoClient(server.url) as client:
        await client.configure(voice="no-such-voice")
        views = await _turn(client, speak("Hello there.", SAMPLE_RATE))
    assert any("no-such-voice" in error for error in views[-1].errors)


async def test_an_unreachable_server_raises_engine_unavailable() -> None:
    with pytest.raises(EngineUnavailable, match="cannot open a realtime session"):
        async with RealtimeDemoClient("http://127.0.0.1:9", connect_timeout_s=2):
            pass


async def test_the_page_builds_for_a_remote_server_and_the_cli_offers_it() -> None:
    demo = build_demo("http://example.invalid:8000")
    labels = {getattr(block, "label", None) for block in demo.blocks.values()}
    assert {"Spoken question", "Reply", "Conversation", "Voice", "Instructions"} <= labels
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0 and "--url" in result.output


async def test_a_reply_cut_by_new_speech_is_marked_and_the_turn_waits_for_the_next() -> None:
    # barge-in, in the wire shapes of server.realtime_events (the reducer needs no socket)
    conv = Conversation()
    for event in [
        {"type": "input_audio_buffer.speech_started", "item_id": "u1"},
        {"type": "input_audio_buffer.speech_stopped", "item_id": "u1"},
        {"type": "input_audio_buffer.committed", "item_id": "u1"},
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "u1",
         "transcript": "Tell me a story."},
        {"type": "response.created", "response": {"id": "r1"}},
        {"type": "response.output_audio_transcript.delta", "response_id": "r1",
         "delta": "Once upon a time there was"},
        {"type": "input_audio_buffer.speech_started", "item_id": "u2"},
        {"type": "response.done", "response": {"id": "r1", "status": "cancelled", "output": [
            {"content": [{"type": "output_audio", "transcript": "Once upon"}]}]}},
    ]:  # fmt: skip
        conv.apply(event)
    view = conv.view()
    assert [line.text for line in view.chat] == ["Tell me a story.", "Once upon (interrupted)"]
    assert view.turns == () and conv.speaking and not conv.settled()
