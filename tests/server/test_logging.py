"""JSON-lines logs: request and session ids, stage timings and error types, and no transcript,
reply, audio or secret unless ``log_content`` is on (a real voice turn's logs are captured)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from models.registry import Engines
from pipeline.settings import HostedSettings, LLMSettings, ObservabilitySettings
from pipeline.stages import CallRecord
from pipeline.turn import run_turn
from pipeline.types import AudioChunk, GenerationParams
from server.logging_setup import (
    JsonFormatter,
    RequestContextMiddleware,
    bind,
    configure_logging,
    content,
    current_request_id,
    log_call,
    scrub,
)
from tests.server.conftest import http_client

module_loop = pytest.mark.asyncio(loop_scope="module")  # the module-scoped engines' loop
log = logging.getLogger("voxline.test")
TRANSCRIPT = "please book a table for two at nine"


class Captured:
    """The JSON log lines written through ``configure_logging`` during a test."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@pytest.fixture
def capture() -> Iterator[Any]:
    """``capture(log_content=False, log_format="json", log_level="DEBUG") -> Captured``."""
    root = logging.getLogger()
    level = root.level
    installed: list[logging.Handler] = []

    def start(**settings: Any) -> Captured:
        captured = Captured()
        obs = ObservabilitySettings(**{"log_level": "DEBUG", **settings})
        installed.append(configure_logging(obs, stream=captured.stream))
        return captured

    yield start
    for handler in installed:
        root.removeHandler(handler)
    root.setLevel(level)


def test_lines_are_json_with_the_documented_fields(capture: Any) -> None:
    out = capture()

    with bind(request_id="req-1", session_id="sess-9"):
        log.info("hello %s", "world", extra={"stage": "stt", "total_ms": 12.5})
    log.warning("outside")

    first, second = out.lines()
    assert first["message"] == "hello world"
    assert first["level"] == "INFO"
    assert first["logger"] == "voxline.test"
    assert first["request_id"] == "req-1"
    assert first["session_id"] == "sess-9"
    assert first["stage"] == "stt" and first["total_ms"] == 12.5
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]
    assert "request_id" not in second and "session_id" not in second


@pytest.mark.parametrize("log_content", [False, True])
def test_content_is_redacted_unless_asked_for(capture: Any, log_content: bool) -> None:
    out = capture(log_content=log_content)

    log.info("heard %s", content(TRANSCRIPT), extra={"reply": content("Nine is fine.")})

    (line,) = out.lines()
    if log_content:
        assert line["message"] == f"heard {TRANSCRIPT}"
        assert line["reply"] == "Nine is fine."
    else:
        assert TRANSCRIPT not in out.text and "Nine is fine" not in out.text
        assert line["message"] == f"heard <redacted {len(TRANSCRIPT)} chars>"
        assert line["reply"] == "<redacted 13 chars>"


def test_content_formatted_elsewhere_stays_redacted() -> None:
    assert str(content(TRANSCRIPT)) == f"<redacted {len(TRANSCRIPT)} chars>"
    assert TRANSCRIPT not in f"{content(TRANSCRIPT)}"


@pytest.mark.parametrize("log_content", [False, True])
def test_errors_log_their_type_and_keep_the_message_out(capture: Any, log_content: bool) -> None:
    out = capture(log_content=log_content)

    try:
        raise ValueError(f"could not parse {TRANSCRIPT!r}")
    except ValueError:
        log.exception("turn failed")

    (line,) = out.lines()
    assert line["error_type"] == "ValueError"
    assert "test_logging.py" in line["traceback"]  # where it happened
    assert (TRANSCRIPT in out.text) is log_content


def test_secrets_audio_and_unknown_objects_are_never_rendered(capture: Any) -> None:
    out = capture(log_content=True)  # even in debug mode
    key = "sk-live-0123456789abcdefXYZ"
    hosted = HostedSettings(base_url="http://h/v1", api_key=SecretStr(key))

    log.info(
        "calling upstream with Authorization: Bearer %s",
        key,
        extra={
            "api_key": hosted.api_key,
            "hosted": hosted,
            "llm": LLMSettings(hosted=hosted),
            "audio": np.ones(16000, np.float32),
            "headers": {"authorization": f"Bearer {key}"},
            "timings": CallRecord("llm", "hosted:h:443", 40.0, 90.0, 3),
        },
    )

    assert key not in out.text
    (line,) = out.lines()
    assert line["api_key"] == "**********"
    assert line["hosted"] == "<HostedSettings>"
    assert line["audio"] == "<ndarray>"
    assert line["timings"]["backend"] == "hosted:h:443"  # known value types are logged whole
    assert "<secret>" in line["message"]


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abc.def-123",
        "{'authorization': 'Bearer abc.def-123'}",
        'headers={"Authorization": "abc.def-123"}',
        "key=sk-abc.def-123_4567",
        "bearer abc.def-123",
        "key vx-abc.def-123_4567abcdef",  # our API keys and client secrets
        "secret ek_abc.def-123_4567abcdef",
        "Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.abc.def-123",
    ],
)
def test_scrub_masks_credentials(text: str) -> None:
    assert "abc.def-123" not in scrub(text)
    assert "<secret>" in scrub(text)


@module_loop
async def test_lines_of_an_authenticated_request_carry_its_key_id(capture: Any) -> None:
    from server.app import create_app
    from tests.server.conftest import make_settings

    out = capture()
    app = create_app(make_settings())
    key = app.state.voxline.store.keys.create("logged", ["chat"])

    @app.get("/v1/hello")
    async def hello() -> dict[str, str]:
        log.info("hello")
        return {}

    async with http_client(app) as client:
        answer = await client.get("/v1/hello", headers={"authorization": f"Bearer {key.secret}"})
    assert answer.status_code == 200
    lines = out.lines()
    [said] = [line for line in lines if line["logger"] == "voxline.test"]
    [access] = [line for line in lines if line["logger"] == "voxline.access"]
    assert said["key_id"] == access["key_id"] == key.key.id
    assert key.secret not in out.text


def test_text_format_applies_the_same_rules(capture: Any) -> None:
    out = capture(log_format="text")

    with bind(request_id="r-2"):
        log.info("heard %s", content(TRANSCRIPT), extra={"total_ms": 3.0})

    assert TRANSCRIPT not in out.text
    assert "INFO voxline.test [request_id=r-2]: heard <redacted" in out.text
    assert "total_ms=3.0" in out.text


@module_loop
async def test_requests_get_an_id_on_every_line_and_an_access_line(capture: Any) -> None:
    out = capture()
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware)
    seen: list[str | None] = []

    @app.post("/v1/echo/{n}")
    async def echo(n: int) -> dict[str, int]:
        seen.append(current_request_id())
        log.info("echo %d", n)
        return {"n": n}

    async with http_client(app) as client:
        given = await client.post(
            "/v1/echo/1?api_key=sk-querysecret123456",
            headers={"x-request-id": "client-id-1", "authorization": "Bearer sk-hdrsecret9999999"},
            content=TRANSCRIPT,
        )
        fresh = await client.post("/v1/echo/2", headers={"x-request-id": "bad id\nwith newline"})

    assert given.headers["x-request-id"] == "client-id-1" == seen[0]
    assert fresh.headers["x-request-id"] == seen[1] and len(seen[1] or "") == 32
    lines = out.lines()
    echo_lines = [line for line in lines if line["logger"] == "voxline.test"]
    access = [line for line in lines if line["logger"] == "voxline.access"]
    assert [line["request_id"] for line in echo_lines] == ["client-id-1", seen[1]]
    assert [line["request_id"] for line in access] == ["client-id-1", seen[1]]
    assert access[0]["route"] == "/v1/echo/{n}" and access[0]["status"] == 200
    assert access[0]["method"] == "POST" and access[0]["duration_ms"] >= 0
    for secret in ("querysecret", "hdrsecret", TRANSCRIPT):  # no query, header or body
        assert secret not in out.text


@pytest.fixture
def logged_engines(engines: Engines) -> Iterator[Engines]:
    stages = (engines.stt, engines.llm, engines.tts)
    for stage in stages:
        stage.listeners.append(log_call)
    yield engines
    for stage in stages:
        stage.listeners.remove(log_call)


@module_loop
async def test_a_real_turn_logs_timings_but_no_transcript_by_default(
    capture: Any, logged_engines: Engines, spoken_question: AudioChunk
) -> None:
    out = capture()  # the default; DEBUG, so the engines' own lines are checked too
    # the same records through a debug formatter: proves the content was there to leak
    debug = Captured()
    debug_handler = logging.StreamHandler(debug.stream)
    debug_handler.setFormatter(JsonFormatter(log_content=True))
    logging.getLogger().addHandler(debug_handler)
    e = logged_engines

    try:
        with bind(request_id="turn-1"):
            result = await run_turn(
                spoken_question,
                stt=e.stt,
                llm=e.llm,
                tts=e.tts,
                system_prompt="Answer in one short sentence.",
                params=GenerationParams(max_tokens=16, temperature=0.0),
            )
            # what a route logs when a turn is done
            log.info(
                "turn done: %s -> %s",
                content(result.transcript),
                content(result.reply),
                extra={"timings": result.timings, "backends": result.backends, "result": result},
            )
    finally:
        logging.getLogger().removeHandler(debug_handler)

    assert "capital" in result.transcript.lower() and result.reply
    lines = out.lines()
    stage_lines = [line for line in lines if line["logger"] == "voxline.stage"]
    assert {line["stage"] for line in stage_lines} == {"stt", "llm", "tts"}
    assert all(line["request_id"] == "turn-1" for line in stage_lines)
    assert all(line["total_ms"] > 0 and line["error_type"] is None for line in stage_lines)
    (done,) = [line for line in lines if line["message"].startswith("turn done")]
    assert done["timings"]["stt_ms"] == result.timings.stt_ms
    assert done["backends"]["llm"] == result.backends.llm
    assert done["result"] == "<TurnResult>"  # a value holding content is not rendered
    assert result.transcript not in out.text
    assert result.reply not in out.text
    assert result.transcript in debug.text and result.reply in debug.text


def test_a_failed_stage_call_is_a_warning_with_its_type(capture: Any) -> None:
    out = capture(log_level="INFO")

    log_call(CallRecord("tts", "piper:cpu", None, 15.0, 0, error="EngineTimeout"))
    log_call(CallRecord("tts", "piper:cpu", 5.0, 15.0, 2))  # fine: DEBUG, filtered at INFO

    (line,) = out.lines()
    assert line["level"] == "WARNING"
    assert line["error_type"] == "EngineTimeout"
    assert line["backend"] == "piper:cpu"
