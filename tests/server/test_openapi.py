"""The OpenAPI document says what the server does: schemathesis calls every operation with
generated requests (valid and invalid) and checks each answer against the document (status
codes, media types, schemas, headers) and against 5xx. CI-sized: a few examples per operation,
on the scripted stage doubles (what is checked is the HTTP contract, not the engines)."""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from models.registry import Engines
from server.app import create_app
from tests.fakes.stages import ScriptedLLM, ScriptedSTT, ScriptedTTS
from tests.server.conftest import make_settings


def _app() -> tuple[FastAPI, dict[str, str]]:
    engines = Engines(ScriptedSTT(), ScriptedLLM(), ScriptedTTS())
    app = create_app(make_settings(), engines=engines)
    key = app.state.voxline.store.keys.create(
        "schemathesis", ["realtime", "audio", "chat", "admin"]
    )
    return app, {"Authorization": f"Bearer {key.secret}"}


APP, AUTH = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@hypothesis.settings(
    max_examples=8,
    deadline=None,
    derandomize=True,  # the same cases every run: a CI check, not a fuzzing campaign
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_every_operation_matches_the_document(case: Any) -> None:
    # Audio uploads: bytes that match "format: binary" are rarely audio, and no schema can say
    # which bytes decode, so a schema-valid upload may rightly be a 400 (invalid_audio).
    upload = "multipart/form-data" in (case.media_type or "")
    excluded = [positive_data_acceptance] if upload else []
    if _rightly_accepted(case):
        excluded.append(negative_data_rejection)
    if _overlap_over_half(case.body):
        excluded.append(positive_data_acceptance)
    case.call_and_validate(headers=AUTH, excluded_checks=excluded)


def _overlap_over_half(body: Any) -> bool:
    """A static chunking strategy whose overlap is over half its chunk size: valid for the
    schema (which cannot compare two fields), refused with a 400 by the server, as by OpenAI."""
    static = body.get("chunking_strategy") if isinstance(body, dict) else None
    sizes = static.get("static") if isinstance(static, dict) else None
    if not isinstance(sizes, dict):
        return False
    size, overlap = sizes.get("max_chunk_size_tokens"), sizes.get("chunk_overlap_tokens")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (size, overlap)):
        return False
    return bool(2 * overlap > size)


def _rightly_accepted(case: Any) -> bool:
    """Negative data a server rightly accepts: a query parameter the operation does not know
    (ignored, as by OpenAI's API and FastAPI), or a missing ``Authorization`` header (the test
    sends the key with every call). Which cases schemathesis draws depends on the tests that ran
    before it in the process: without this, one order in a few failed on an unknown parameter."""
    negative = {
        location
        for location, info in case.meta.components.items()
        if info.mode is GenerationMode.NEGATIVE
    }
    if not negative or not negative <= {ParameterLocation.QUERY, ParameterLocation.HEADER}:
        return False
    known = {parameter.name for parameter in case.operation.query}
    unknown = any(name not in known for name in case.query or {})
    return ParameterLocation.QUERY not in negative or unknown


def test_the_document_promises_400_not_422_and_documents_readyz_503() -> None:
    document = APP.openapi()
    for path, item in document["paths"].items():
        for method, op in item.items():
            assert "422" not in op["responses"], (method, path)
            if method == "post":
                error = op["responses"]["400"]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/Error"}
    assert "503" in document["paths"]["/readyz"]["get"]["responses"]
    speech = document["paths"]["/v1/audio/speech"]["post"]["responses"]["200"]["content"]
    assert {"audio/mpeg", "audio/wav", "text/event-stream"} <= set(speech)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/audio/speech"])
def test_a_json_route_refuses_a_huge_body_before_parsing_it(path: str) -> None:
    """A 20 MB chat request: 413 from its Content-Length, and nothing read or parsed."""
    from starlette.testclient import TestClient

    received: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def counting() -> Any:
            message = await receive()
            received.append(len(message.get("body", b"")))
            return message

        await APP(scope, counting, send)

    body = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * 20_000_000
    client = TestClient(app)  # no `with`: the app's lifespan is the module's, not this test's
    answer = client.post(path, content=body + b'"}]}', headers=AUTH)
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"
    assert sum(received) == 0  # refused on the header, before a byte of the body


def test_an_over_limit_chunked_upload_gets_a_named_code() -> None:
    from starlette.testclient import TestClient

    def chunks() -> Any:
        for _ in range(30):
            yield b"x" * 1024 * 1024  # no Content-Length: counted as it arrives

    client = TestClient(APP)
    answer = client.post("/v1/chat/completions", content=chunks(), headers=AUTH)
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"
