"""``file_search`` in realtime ``session.tools``: parsed into the session's configuration,
echoed in ``session.voxline`` (OpenAI's session type has no such tool), and ``response.done``
carries citations; every event still parses as the SDK's model."""

from __future__ import annotations

import json
from typing import Any

from pipeline.events import ResponseDone
from pipeline.file_search import FileSearch
from pipeline.knowledge import Citation, KnowledgeReport, Support
from pipeline.session_config import SessionConfig, TurnDetection
from pipeline.types import Backends, TurnTimings, Usage
from server.realtime_commands import UpdateSession
from server.realtime_events import ServerEvents
from server.realtime_protocol import ClientEventParser
from tests.server.test_realtime_protocol import sdk_valid

TOOL = {"type": "file_search", "vector_store_ids": ["vs_a"], "max_num_results": 2}


def _update(session: dict[str, Any]) -> UpdateSession:
    parser = ClientEventParser(max_append_bytes=1000)
    _, command = parser.parse(json.dumps({"type": "session.update", "session": session}))
    assert isinstance(command, UpdateSession)
    return command


def test_session_tools_set_and_clear_file_search() -> None:
    vad = TurnDetection()
    on = _update({"type": "realtime", "tools": [TOOL]})
    assert on.file_search == FileSearch(("vs_a",), 2)
    config = SessionConfig()
    assert on.changes(config, vad)["file_search"] == FileSearch(("vs_a",), 2)
    off = _update({"type": "realtime", "tools": []})
    assert off.changes(config, vad)["file_search"] is None
    untouched = _update({"type": "realtime", "instructions": "hi"})
    assert "file_search" not in untouched.changes(config, vad)


def test_the_session_and_response_done_stay_sdk_valid() -> None:
    config = SessionConfig(file_search=FileSearch(("vs_a",), 2))
    events = ServerEvents(model="voxline", config=config, transcription_model="whisper")
    created = sdk_valid(events.session_created())
    assert created["session"]["voxline"]["file_search"]["vector_store_ids"] == ["vs_a"]
    assert created["session"]["tools"] == []
    report = KnowledgeReport(
        ("vs_a",),
        5.5,
        (0.7, 0.2),
        (Citation("file-1", "manual.md", 3, 0.7, "Replace the filter every 6 months."),),
        dont_know=False,
        llm_called=True,
        support=Support(0.8, 0.5, "s", 3.0),
        relevance=(1.0, 0.2),
    )
    done = ResponseDone(
        "resp_1",
        "item_1",
        "completed",
        None,
        "Every 6 months.",
        Usage(),
        TurnTimings(),
        Backends("a", "b", "c"),
        knowledge=report,
    )
    wire = [sdk_valid(w) for w in events.map(done)][-1]
    voxline = wire["response"]["voxline"]
    assert voxline["citations"][0] == {
        "file_id": "file-1",
        "filename": "manual.md",
        "chunk": 3,
        "score": 0.7,
        "text": "Replace the filter every 6 months.",
    }
    assert voxline["knowledge"]["support"]["flagged"] is False
    assert voxline["knowledge"]["relevance"] == [1.0, 0.2]
