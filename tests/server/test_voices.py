"""Voices as a service (issue 12): upload a reference clip, speak with it over HTTP and in a
realtime session, delete it; ownership, validation, and a restart on the same store.

The servers are real (uvicorn on loopback, owning their engines: GPT-SoVITS workers are
asyncio subprocesses, bound to the event loop that started them) and GPT-SoVITS is the
stand-in checkout (``tests/fakes/gpt_sovits_checkout.py``) run by the real worker script in
real worker processes; the state store is a real SQLite file. The stub's log says which
reference clip and language each synthesis used. ``test_gpt_sovits_voices_real.py`` runs the
same path against real upstream (opt-in).
"""

from __future__ import annotations

import asyncio
import base64
import io
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf
import sqlalchemy as sa

from client.realtime import RealtimeClient
from models.registry import Engines
from models.tts_gpt_sovits import GptSovitsTTS
from models.tts_piper import PiperTTS
from pipeline.fallback import FallbackPolicy, FallbackTTS
from pipeline.settings import (
    GptSovitsSettings,
    GptSovitsVoice,
    Settings,
    StateSettings,
    TTSSettings,
    VoicesSettings,
)
from server.app import create_app
from server.voices import KIND, VoiceService, is_voice_id
from store import NewKey, Store
from store.schema import blobs
from tests.fakes.gpt_sovits_checkout import make_stub_checkout, read_log
from tests.fakes.stages import ScriptedLLM, ScriptedSTT, ScriptedTTS
from tests.server.conftest import LiveServer, http_client, make_settings, silences_ms, wait_ready

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

RATE = 24_000  # pcm from /v1/audio/speech and the realtime session
MAX_BYTES = 512 * 1024  # voices.max_bytes of these servers: a 4 s 16 kHz wav is 128 KiB
MAX_PER_KEY = 3
TRANSCRIPT = "This is my reference voice."
PAUSE_S = 0.1  # tts.gpt_sovits.segment_pause_s: silence between the segments of one request
STUB_SEGMENT_S = 0.5  # the stub speaks 5 chunks of 100 ms per segment


def wav(seconds: float, rate: int = 16_000, freq: float = 220.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    out = io.BytesIO()
    sf.write(out, (0.1 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV")
    return out.getvalue()


def bearer(key: NewKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.secret}"}


def upload(clip: bytes, **fields: str) -> dict[str, Any]:
    data = {"transcript": TRANSCRIPT, "language": "yue", **fields}
    return {"files": {"file": ("ref.wav", clip, "audio/wav")}, "data": data}


def gs_settings(checkout: Path, log: Path, **fields: Any) -> GptSovitsSettings:
    values: dict[str, Any] = {
        "home": checkout,
        "python": Path(sys.executable),  # the stub needs numpy only; upstream needs its venv
        "version": "v2Pro",
        "device": "cpu",
        "pool_size": 1,
        "segment_pause_s": PAUSE_S,
        "start_timeout_s": 60.0,
        "request_timeout_s": 30.0,
        "env": {"STUB_LOG": str(log)},
    }
    return GptSovitsSettings(**(values | fields))


def server_settings(gpt_sovits: GptSovitsSettings, state_dir: Path) -> Settings:
    return make_settings(
        tts=TTSSettings(engine="gpt_sovits", gpt_sovits=gpt_sovits),
        voices=VoicesSettings(max_bytes=MAX_BYTES, max_per_key=MAX_PER_KEY),
        state=StateSettings(data_dir=state_dir),
    )


class Served:
    """A live server with two keys in its store (each with the audio and realtime scopes)."""

    def __init__(
        self, server: LiveServer, store: Store, log: Path, state_dir: Path, voices: VoiceService
    ) -> None:
        self.server = server
        self.voices = voices
        self.url = server.url
        self.store = store
        self.state_dir = state_dir
        self.log = log
        self.alice = store.keys.create("alice", ["audio", "realtime"])
        self.bob = store.keys.create("bob", ["audio", "realtime"])

    def client(self, key: NewKey) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=bearer(key), timeout=60)

    def runs(self) -> list[dict[str, Any]]:
        return [e for e in read_log(self.log) if e["event"] == "run"]

    def stored(self) -> tuple[int, int]:
        """Voice documents and blobs in the store."""
        with self.store.db.read() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(blobs)).scalar()
        return len(self.store.documents(KIND).list()), int(count or 0)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_stub_checkout(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def served(checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server whose TTS is GPT-SoVITS with one voice of its settings ("narrator")."""
    root = tmp_path_factory.mktemp("served")
    narrator = root / "narrator.wav"
    narrator.write_bytes(wav(4.0))
    log = root / "stub.jsonl"
    voice = GptSovitsVoice(ref_audio=narrator, prompt_text=TRANSCRIPT, prompt_lang="en")
    state_dir = root / "state"
    settings = server_settings(gs_settings(checkout, log, voices={"narrator": voice}), state_dir)
    app = create_app(settings)
    with LiveServer(app) as server:
        wait_ready(server.url)
        state = app.state.voxline
        yield Served(server, state.store, log, state_dir, state.voices)


@pytest_asyncio.fixture(loop_scope="module")
async def alice_voice(served: Served) -> AsyncIterator[dict[str, Any]]:
    """A voice alice uploaded (deleted afterwards if the test has not)."""
    async with served.client(served.alice) as http:
        answer = await http.post("/v1/audio/voices", **upload(wav(4.0), name="Alice"))
        assert answer.status_code == 200, answer.text
        voice = dict(answer.json())
        yield voice
        await http.delete(f"/v1/audio/voices/{voice['id']}")


# ---------------------------------------------------------------- upload, list, speak, delete


async def test_upload_list_speak_and_delete(served: Served) -> None:
    async with served.client(served.alice) as http:
        before = served.stored()
        answer = await http.post("/v1/audio/voices", **upload(wav(4.0), name="Alice"))
        assert answer.status_code == 200, answer.text
        voice = answer.json()
        vid = voice["id"]
        assert is_voice_id(vid)
        assert voice["object"] == "voice" and voice["type"] == "audio_sample"
        assert (voice["name"], voice["language"], voice["transcript"]) == (
            "Alice",
            "yue",
            TRANSCRIPT,
        )
        assert voice["seconds"] == pytest.approx(4.0, abs=0.05)
        assert served.stored() == (before[0] + 1, before[1] + 1)  # its document and its clip

        listed = (await http.get("/v1/audio/voices")).json()
        assert listed["object"] == "list" and listed["default"] == "narrator"
        assert listed["data"][0] == {"id": "narrator", "object": "voice"}
        assert voice in listed["data"]
        assert (await http.get(f"/v1/audio/voices/{vid}")).json() == voice

        speech = {"model": "tts-1", "input": "Hello there.", "voice": vid, "response_format": "pcm"}
        answer = await http.post("/v1/audio/speech", json=speech)
        assert answer.status_code == 200, answer.text
        assert len(answer.content) / 2 / RATE == pytest.approx(STUB_SEGMENT_S, abs=0.02)
        run = served.runs()[-1]["inputs"]
        assert run["text"] == "Hello there."
        assert run["ref_audio_path"].endswith(".wav") and "voxline-voices-" in run["ref_audio_path"]
        assert (run["prompt_text"], run["prompt_lang"], run["text_lang"]) == (
            TRANSCRIPT,
            "yue",
            "yue",
        )
        clip = Path(run["ref_audio_path"])
        assert await asyncio.to_thread(clip.is_file)

        # per-request language: upstream's codes, "auto" among them; another is a 400
        answer = await http.post("/v1/audio/speech", json=speech | {"language": "auto"})
        assert answer.status_code == 200, answer.text
        assert served.runs()[-1]["inputs"]["text_lang"] == "auto"
        answer = await http.post("/v1/audio/speech", json=speech | {"language": "xx"})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "language"

        answer = await http.delete(f"/v1/audio/voices/{vid}")
        assert answer.json() == {"id": vid, "object": "voice.deleted", "deleted": True}
        assert served.stored() == before
        assert not await asyncio.to_thread(clip.exists)  # the engine's copy is gone too
        assert (await http.get(f"/v1/audio/voices/{vid}")).status_code == 404
        assert vid not in [v["id"] for v in (await http.get("/v1/audio/voices")).json()["data"]]
        runs = len(served.runs())
        answer = await http.post("/v1/audio/speech", json=speech)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "unknown_voice"
        assert len(served.runs()) == runs  # refused before any engine work


async def test_phrases_of_one_request_are_joined_by_short_pauses_only(
    served: Served, alice_voice: dict[str, Any]
) -> None:
    """Silence between phrases, measured on the audio the API sends: upstream's pause between
    the segments of a request is ``segment_pause_s``; nothing trails a request's last one."""
    speech = {
        "model": "tts-1",
        "input": "One small step. Then another one. And a third.",
        "voice": alice_voice["id"],
        "response_format": "pcm",
    }
    async with served.client(served.alice) as http:
        answer = await http.post("/v1/audio/speech", json=speech)
    assert answer.status_code == 200, answer.text
    gaps = silences_ms(answer.content)
    print(f"\nsilence between the phrases of one speech request: {[round(g) for g in gaps]} ms")
    assert len(gaps) == 2  # three segments
    assert all(PAUSE_S * 1000 * 0.8 <= g <= 150 for g in gaps)
    seconds = len(answer.content) / 2 / RATE
    assert seconds == pytest.approx(3 * STUB_SEGMENT_S + 2 * PAUSE_S, abs=0.03)  # no trailing pause


# ---------------------------------------------------------------- ownership


async def test_another_key_can_neither_see_nor_use_nor_delete_a_voice(
    served: Served, alice_voice: dict[str, Any]
) -> None:
    vid = alice_voice["id"]
    async with served.client(served.bob) as http:
        listed = [v["id"] for v in (await http.get("/v1/audio/voices")).json()["data"]]
        assert vid not in listed and "narrator" in listed
        answer = await http.get(f"/v1/audio/voices/{vid}")
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
        answer = await http.delete(f"/v1/audio/voices/{vid}")
        assert answer.status_code == 404
        speech = {"model": "tts-1", "input": "Hello.", "voice": vid}
        answer = await http.post("/v1/audio/speech", json=speech)
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["code"] == "unknown_voice"
        assert vid not in error["message"].split("available:")[1]  # not listed as a choice
        job = {"kind": "speech", "input": "Hello.", "voice": vid}  # nor in a batch job
        answer = await http.post("/v1/jobs", data=job)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "unknown_voice"
        files = {"file": ("q.wav", wav(2.0), "audio/wav")}  # nor to speak a voice turn's answer
        answer = await http.post("/v1/turns", data={"voice": vid}, files=files)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "unknown_voice"
        assert vid not in error["message"].split("available:")[1]
    async with served.client(served.alice) as http:
        assert (await http.get(f"/v1/audio/voices/{vid}")).status_code == 200  # still there


# ---------------------------------------------------------------- refusals


async def test_bad_uploads_are_refused_and_leave_the_store_as_it_was(served: Served) -> None:
    cases: list[tuple[dict[str, Any], int, str]] = [
        (upload(wav(2.0)), 400, "invalid_reference_clip"),  # too short
        (upload(wav(12.0, rate=8_000)), 400, "audio_too_long"),  # too long (and small)
        (upload(b"RIFF but not audio at all" * 100), 400, "invalid_audio"),
        (upload(wav(20.0)), 413, "audio_too_large"),  # 640 KiB > voices.max_bytes
        (upload(wav(4.0), transcript="   "), 400, "invalid_value"),
        (upload(wav(4.0), language="xx"), 400, "unsupported_language"),
    ]
    before = served.stored()
    async with served.client(served.alice) as http:
        voices = (await http.get("/v1/audio/voices")).json()["data"]
        for request, status, code in cases:
            answer = await http.post("/v1/audio/voices", **request)
            assert answer.status_code == status, (code, answer.text)
            error = answer.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert (error["type"], error["code"]) == ("invalid_request_error", code)
            assert served.stored() == before, code
        assert (await http.get("/v1/audio/voices")).json()["data"] == voices


async def test_an_upload_far_past_the_voice_limit_is_refused_at_the_edge(served: Served) -> None:
    """The edge's body limit for ``/v1/audio/voices`` is ``voices.max_bytes`` plus the form's
    overhead (not the transcription routes' ``audio.max_bytes``, 25 MiB here): a 3 MiB body
    sent without a Content-Length is cut off as it arrives, before any form is parsed."""

    async def chunks() -> AsyncIterator[bytes]:
        yield (
            b"--x\r\nContent-Disposition: form-data; name=file; filename=ref.wav\r\n"
            b"Content-Type: audio/wav\r\n\r\n"
        )
        for _ in range(3 * 16):  # a file part that never ends
            yield b"x" * 64 * 1024

    before = served.stored()
    async with served.client(served.alice) as http:
        headers = {"Content-Type": "multipart/form-data; boundary=x"}
        answer = await http.post("/v1/audio/voices", content=chunks(), headers=headers)
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"  # the edge's, not the route's
    assert served.stored() == before


async def test_a_key_owns_a_bounded_number_of_voices(served: Served) -> None:
    async with served.client(served.bob) as http:
        made = []
        for _ in range(MAX_PER_KEY):
            answer = await http.post("/v1/audio/voices", **upload(wav(3.5)))
            assert answer.status_code == 200, answer.text
            made.append(answer.json()["id"])
        before = served.stored()
        answer = await http.post("/v1/audio/voices", **upload(wav(3.5)))
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "voice_limit_reached"
        assert served.stored() == before
        for vid in made:
            assert (await http.delete(f"/v1/audio/voices/{vid}")).status_code == 200


async def test_concurrent_uploads_never_pass_the_voice_limit(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two uploads of a key one voice short of its limit: both pass the first count, and are
    held (a barrier after each clip's registration) until both have, so both reach the save
    together; only one may be kept."""
    key = served.store.keys.create("racer", ["audio"])
    barrier = threading.Barrier(2, timeout=60)  # the timeout only guards against a hang
    register = served.voices._register

    def register_then_meet(*args: Any) -> float:
        seconds = register(*args)
        barrier.wait()
        return seconds

    async with served.client(key) as http:
        made = []
        for _ in range(MAX_PER_KEY - 1):
            answer = await http.post("/v1/audio/voices", **upload(wav(3.5)))
            assert answer.status_code == 200, answer.text
            made.append(answer.json()["id"])
        before = served.stored()
        monkeypatch.setattr(served.voices, "_register", register_then_meet)
        answers = await asyncio.gather(
            *(http.post("/v1/audio/voices", **upload(wav(3.5))) for _ in range(2))
        )
        monkeypatch.undo()
        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 400], [a.text for a in answers]
        [refused] = [a for a in answers if a.status_code == 400]
        assert refused.json()["error"]["code"] == "voice_limit_reached"
        assert served.stored() == (before[0] + 1, before[1] + 1)  # the refused one left nothing
        listed = (await http.get("/v1/audio/voices")).json()["data"]
        mine = [v["id"] for v in listed if is_voice_id(v["id"])]
        assert len(mine) == MAX_PER_KEY
        for vid in mine:
            assert (await http.delete(f"/v1/audio/voices/{vid}")).status_code == 200


async def test_uploading_needs_the_audio_scope(served: Served) -> None:
    chat = served.store.keys.create("chatty", ["chat"])
    async with served.client(chat) as http:
        answer = await http.post("/v1/audio/voices", **upload(wav(4.0)))
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "insufficient_scope"
        assert (await http.get("/v1/audio/voices")).status_code == 200  # listing: any key


# ---------------------------------------------------------------- realtime


def user_text(text: str) -> dict[str, Any]:
    content = [{"type": "input_text", "text": text}]
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": content},
    }


async def until(rt: RealtimeClient, kind: str, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """The events up to and including the first of type ``kind``."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not rt.closed:
        for received in await rt.receive_for(0.5):
            events.append(received.event)
            if received.type == kind:
                return events
    raise AssertionError(f"no {kind}: {[e.get('type') for e in events]}")


async def test_a_realtime_session_speaks_in_an_uploaded_voice_and_language(
    served: Served, alice_voice: dict[str, Any]
) -> None:
    vid = alice_voice["id"]
    async with RealtimeClient(served.url, api_key=served.alice.secret) as rt:
        pcm = {"type": "audio/pcm", "rate": RATE}
        session = {
            "type": "realtime",
            "instructions": "Answer in two short sentences.",
            "max_output_tokens": 40,
            "audio": {
                # the session's language (its transcription's) is the TTS's too where it can
                "input": {
                    "format": pcm,
                    "turn_detection": None,
                    "transcription": {"language": "ko"},
                },
                "output": {"format": pcm, "voice": vid},
            },
        }
        await rt.send({"type": "session.update", "session": session})
        updated = (await until(rt, "session.updated"))[-1]
        assert updated["session"]["audio"]["output"]["voice"] == vid
        runs = len(served.runs())
        await rt.send(user_text("Tell me about tea."))
        await rt.send({"type": "response.create"})
        events = await until(rt, "response.done")
    assert not [e for e in events if e["type"] == "error"], events
    assert events[-1]["response"]["status"] in ("completed", "incomplete")  # (max_output_tokens)
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    assert len(audio) / 2 / RATE >= STUB_SEGMENT_S
    spoken = served.runs()[runs:]
    assert spoken and all(r["inputs"]["prompt_text"] == TRANSCRIPT for r in spoken)
    assert {r["inputs"]["text_lang"] for r in spoken} == {"ko"}
    # the reply is spoken phrase by phrase, one request each: no hole where they join
    gaps = silences_ms(audio)
    print(
        f"\nrealtime reply: {len(spoken)} phrase(s); silences between sounds (ms): "
        f"{[round(g) for g in gaps]}"
    )
    assert all(g <= 150 for g in gaps)


async def test_another_keys_voice_is_an_unknown_voice_in_a_realtime_session(
    served: Served, alice_voice: dict[str, Any]
) -> None:
    vid = alice_voice["id"]
    async with RealtimeClient(served.url, api_key=served.bob.secret) as rt:
        await rt.update_session(voice=vid, server_vad=False)
        error = (await until(rt, "error"))[-1]["error"]
    assert error["param"] == "session.audio.output.voice"
    assert vid not in error["message"].split("voices:")[1]


# ---------------------------------------------------------------- restart


async def test_a_restarted_server_on_the_same_store_still_speaks_the_voice(
    served: Served, checkout: Path, tmp_path: Path
) -> None:
    """A new server on the first one's store (a restart, or a second replica): its GPT-SoVITS
    has no voice of its own settings, so it starts at all only because the stored voice is
    registered before the chain starts. A voice deleted through the other server is refused
    here too (the store is the truth)."""
    async with served.client(served.alice) as http:
        answer = await http.post("/v1/audio/voices", **upload(wav(5.0), name="kept"))
        assert answer.status_code == 200, answer.text
        voice = answer.json()
        vid = voice["id"]

        log = tmp_path / "restarted.jsonl"
        settings = server_settings(gs_settings(checkout, log), served.state_dir)
        app = create_app(settings)
        with LiveServer(app) as restarted:
            ready = await asyncio.to_thread(wait_ready, restarted.url)
            [backend] = ready["stages"]["tts"]["backends"]
            assert backend["name"].startswith("gpt_sovits") and backend["started"]
            again = httpx.AsyncClient(
                base_url=restarted.url, headers=bearer(served.alice), timeout=60
            )
            async with again:
                assert (await again.get(f"/v1/audio/voices/{vid}")).json() == voice
                speech = {
                    "model": "tts-1",
                    "input": "Still here.",
                    "voice": vid,
                    "response_format": "pcm",
                }
                answer = await again.post("/v1/audio/speech", json=speech)
                assert answer.status_code == 200, answer.text
                assert len(answer.content) / 2 / RATE == pytest.approx(STUB_SEGMENT_S, abs=0.02)
                [run] = [
                    r
                    for r in read_log(log)
                    if r["event"] == "run" and r["inputs"]["text"] == "Still here."
                ]
                assert run["inputs"]["prompt_text"] == TRANSCRIPT

                assert (await http.delete(f"/v1/audio/voices/{vid}")).status_code == 200
                answer = await again.post("/v1/audio/speech", json=speech)
                assert (
                    answer.status_code == 400 and answer.json()["error"]["code"] == "unknown_voice"
                )


# ---------------------------------------------------------------- in process: other TTS chains


async def test_without_gpt_sovits_an_upload_says_voices_need_it() -> None:
    app = create_app(make_settings(), engines=Engines(ScriptedSTT(), ScriptedLLM(), ScriptedTTS()))
    store: Store = app.state.voxline.store
    async with http_client(app) as http:
        answer = await http.post("/v1/audio/voices", **upload(wav(4.0)))
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "voices_unsupported" and "GPT-SoVITS" in error["message"]
        assert store.documents(KIND).list() == []
        fake = "voice_" + "0" * 24
        speech = {"model": "tts-1", "input": "Hi.", "voice": fake}
        answer = await http.post("/v1/audio/speech", json=speech)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "unknown_voice"
        assert (await http.get(f"/v1/audio/voices/{fake}")).status_code == 404
        assert (await http.delete(f"/v1/audio/voices/{fake}")).status_code == 404


async def test_a_gpt_sovits_backend_without_a_voice_starts_with_the_first_upload(
    checkout: Path, tmp_path: Path
) -> None:
    """GPT-SoVITS cannot start without a voice: its chain serves from Piper until a voice is
    uploaded, and then starts it at once (not at its next probe, an hour away here)."""
    log = tmp_path / "stub.jsonl"
    gpt_sovits = GptSovitsTTS(gs_settings(checkout, log))
    chain = FallbackTTS(
        [gpt_sovits, PiperTTS(TTSSettings())], FallbackPolicy(probe_interval_s=3600)
    )
    await chain.start()
    app = create_app(make_settings(), engines=Engines(ScriptedSTT(), ScriptedLLM(), chain))
    try:
        async with http_client(app) as http:
            backends = (await http.get("/readyz")).json()["stages"]["tts"]["backends"]
            assert not backends[0]["started"] and "no voice" in backends[0]["start_error"]
            answer = await http.post("/v1/audio/voices", **upload(wav(4.0)))
            assert answer.status_code == 200, answer.text
            vid = answer.json()["id"]
            deadline = time.monotonic() + 60
            while True:  # started, then its probe (one phrase) passed: it serves
                first = (await http.get("/readyz")).json()["stages"]["tts"]["backends"][0]
                if first["started"] and first["state"] == "closed":
                    break
                assert time.monotonic() < deadline, first
                await asyncio.sleep(0.1)
            speech = {
                "model": "tts-1",
                "input": "Now in my voice.",
                "voice": vid,
                "response_format": "pcm",
            }
            answer = await http.post("/v1/audio/speech", json=speech)
            assert answer.status_code == 200, answer.text
        [run] = [
            r
            for r in read_log(log)
            if r["event"] == "run" and r["inputs"]["text"] == "Now in my voice."
        ]
        assert run["inputs"]["prompt_text"] == TRANSCRIPT
    finally:
        await chain.aclose()
        await app.state.voxline.voices.aclose()
