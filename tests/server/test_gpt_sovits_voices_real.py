"""Voices through the API against a REAL upstream GPT-SoVITS (opt-in: ``pytest -m gpt_sovits``).

``test_voices.py`` runs the voice routes on the stand-in checkout; this runs them on a real
server (uvicorn on loopback, owning its engines) whose TTS is real upstream GPT-SoVITS v2Pro
with random weights (docs/gpt_sovits.md says how to set it up): a reference clip is uploaded,
spoken with (the audio's length follows from the weights' ``max_sec``; the pauses between
phrases are measured), with a per-request language, and deleted. The worker starts on an empty
``NUMBA_CACHE_DIR``, as on a fresh venv. Needs ``GPT_SOVITS_HOME`` and ``GPT_SOVITS_PYTHON``;
the same optional variables as ``tests/models/test_gpt_sovits_real.py``.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile as sf

from pipeline.settings import (
    FallbackSettings,
    GptSovitsSettings,
    GptSovitsVoice,
    StateSettings,
    TTSSettings,
)
from server.app import create_app
from server.voices import cloning_backend
from tests.conftest import speak
from tests.models.test_gpt_sovits_real import (
    FOUR_SEGMENTS,
    HOME,
    MAX_SEC,
    ONE_SEGMENT,
    PROMPT_TEXT,
    PYTHON,
    SHIM,
    WEIGHTS,
    _missing_weights,
)
from tests.server.conftest import LiveServer, make_settings, silences_ms, wait_ready

pytestmark = [
    pytest.mark.gpt_sovits,
    pytest.mark.skipif(
        not (HOME and PYTHON),
        reason="needs a GPT-SoVITS checkout: set GPT_SOVITS_HOME and GPT_SOVITS_PYTHON "
        "(docs/gpt_sovits.md)",
    ),
    pytest.mark.timeout(1200),
]

VERSION = "v2Pro"
RATE = 24_000  # pcm from /v1/audio/speech
PAUSE_S = 0.1  # segment_pause_s (the default)


def _reference() -> bytes:
    """About 5 s of real speech at 22.05 kHz, as a wav file's bytes."""
    audio = speak("The quick brown fox jumps over the lazy dog, and then it runs far away.", 22_050)
    out = io.BytesIO()
    sf.write(out, audio.samples, audio.sample_rate, format="WAV")
    return out.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Any]]:
    """A real server whose TTS is upstream GPT-SoVITS with one voice of its settings (a server
    with none could not start it: see test_voices.py for the upload that brings it up)."""
    assert HOME and PYTHON
    home = Path(HOME)
    if missing := _missing_weights(home, VERSION):
        pytest.skip(
            f"{VERSION} weights missing in {home} ({', '.join(missing)}); write random ones with "
            f"$GPT_SOVITS_PYTHON {WEIGHTS} $GPT_SOVITS_HOME --max-sec 1"
        )
    root = tmp_path_factory.mktemp("gpt_sovits_api")
    narrator = root / "narrator.wav"
    narrator.write_bytes(_reference())
    use_shim = os.environ.get("GPT_SOVITS_NO_SHIM") != "1"
    gpt_sovits = GptSovitsSettings(
        home=home,
        python=Path(PYTHON),
        version=VERSION,
        device="cpu",
        pool_size=1,
        threads=int(os.environ.get("GPT_SOVITS_THREADS", "1")),
        voices={
            "narrator": GptSovitsVoice(
                ref_audio=narrator, prompt_text=PROMPT_TEXT, prompt_lang="yue", text_lang="yue"
            )
        },
        segment_pause_s=PAUSE_S,
        start_timeout_s=600.0,
        request_timeout_s=120.0,
        extra_pythonpath=[SHIM] if use_shim else [],
        env={"NUMBA_CACHE_DIR": str(root / "numba")},  # empty: a fresh venv's cache
        run_options={"seed": 1, "top_k": 15},
    )
    (root / "numba").mkdir()
    # A CPU takes longer than the chain's 10 s default to a new voice's first chunk (encoding
    # the reference, then the first segment): on CPU, raise the deadlines as a user must.
    patient = FallbackSettings(first_output_timeout_s=300.0, gap_timeout_s=300.0)
    settings = make_settings(
        tts=TTSSettings(engine="gpt_sovits", gpt_sovits=gpt_sovits, fallback=patient),
        state=StateSettings(data_dir=root / "state"),
    )
    app = create_app(settings)
    with LiveServer(app) as live:
        started = time.perf_counter()
        wait_ready(live.url, timeout_s=900)
        print(
            f"\n[{VERSION}] server ready (worker import, load, warm-up on a cold numba cache) in "
            f"{time.perf_counter() - started:.1f} s"
        )
        yield live, app


def test_upload_speak_and_delete_a_voice_through_the_api(
    server: tuple[LiveServer, Any],
) -> None:
    live, app = server
    http = httpx.Client(base_url=live.url, timeout=600)
    with http:
        files = {"file": ("reference.wav", _reference(), "audio/wav")}
        data = {"transcript": PROMPT_TEXT, "language": "yue", "name": "fox"}
        answer = http.post("/v1/audio/voices", files=files, data=data)
        assert answer.status_code == 200, answer.text
        voice = answer.json()
        vid = voice["id"]
        assert 3.0 <= voice["seconds"] <= 10.0

        speech = {"model": "tts-1", "input": FOUR_SEGMENTS, "voice": vid, "response_format": "pcm"}
        started = time.perf_counter()
        answer = http.post("/v1/audio/speech", json=speech)
        took = time.perf_counter() - started
        assert answer.status_code == 200, answer.text
        seconds = len(answer.content) / 2 / RATE
        # each segment is 2 * max_sec seconds (a random GPT never stops early), the pauses
        # between them segment_pause_s, and nothing trails the last one
        expected = 4 * 2 * MAX_SEC + 3 * PAUSE_S
        assert expected * 0.75 <= seconds <= expected * 1.25, (seconds, expected)
        backend = cloning_backend(app.state.voxline.engines.tts)
        assert backend is not None and backend.reported_version == VERSION  # the worker's word
        gaps = silences_ms(answer.content)
        print(
            f"\n[{VERSION}] uploaded voice, 4 segments: {seconds:.1f} s of audio in {took:.1f} s; "
            f"silences between phrases (ms): {[round(g) for g in gaps]}"
        )
        assert gaps and all(g <= 150 for g in gaps)

        # per-request language: upstream detects each part's language and reads it as Cantonese
        answer = http.post(
            "/v1/audio/speech", json=speech | {"input": ONE_SEGMENT, "language": "auto_yue"}
        )
        assert answer.status_code == 200, answer.text
        seconds = len(answer.content) / 2 / RATE
        assert 2 * MAX_SEC * 0.75 <= seconds <= 2 * MAX_SEC * 1.25

        answer = http.delete(f"/v1/audio/voices/{vid}")
        assert answer.status_code == 200 and answer.json()["deleted"] is True
        assert vid not in backend.capabilities.voices
        answer = http.post("/v1/audio/speech", json=speech)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "unknown_voice"
