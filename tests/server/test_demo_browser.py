"""The demo in a real browser: headless Chromium opens /demo, sends a spoken question (uploaded,
then through the microphone), and sees the transcript, the reply and its audio appear.

Chromium is Debian's package (``apt-get install chromium``) driven by Playwright's Python package;
Playwright's own browser download is never used (nothing outside PyPI and Debian is reachable).
The microphone is Chromium's fake capture device playing a wav file, so the streaming path runs
as it does for a person. The page must not reach the internet: every request that leaves the
loopback server is refused, and the test fails if there was one. Screenshots of the finished
turns are saved to ``test-artifacts/``. Skips only where no Chromium is installed.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from playwright.async_api import Page, Route, async_playwright, expect

from models.registry import Engines
from pipeline.audio import encode_wav
from pipeline.settings import LLMSettings
from pipeline.types import AudioChunk
from tests.conftest import speak
from tests.server.conftest import LiveServer, make_settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",  # the reply plays without a click on it
]
QUESTION = "What is the capital of France?"
TRANSCRIPT = re.compile("capital.*france", re.IGNORECASE)
# greedy: the reply, and so whether it ends before the token limit, is the same every run
GREEDY = LLMSettings(engine="transformers", max_tokens=24, temperature=0.0)

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="no Chromium to drive: install Debian's package (apt-get install -y chromium)",
    ),
]


@pytest.fixture(scope="module")
def server(engines: Engines) -> Iterator[LiveServer]:
    """The app with the demo on, served by uvicorn on a loopback port."""
    from server.app import create_app

    settings = make_settings(demo_enabled=True, llm=GREEDY)
    with LiveServer(create_app(settings, engines=engines)) as live:
        yield live


@asynccontextmanager
async def _demo_page(server: LiveServer, *args: str) -> AsyncIterator[Page]:
    """/demo open in headless Chromium (extra launch ``args``); fails the test if the page
    reached beyond the server."""
    outside: list[str] = []

    async def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[*BROWSER_ARGS, *args])
        try:
            context = await browser.new_context(
                viewport={"width": 1280, "height": 1000}, permissions=["microphone"]
            )
            page = await context.new_page()
            await page.route("**/*", only_loopback)
            await page.goto(f"{server.url}/demo/")
            # the voice list came from the server's TTS
            await expect(page.locator("#voice input")).to_have_value("joe", timeout=30_000)
            yield page
        finally:
            await browser.close()
    assert outside == [], f"the page tried to reach beyond the server: {outside}"


async def _expect_answered(page: Page, screenshot: str) -> None:
    """The turn's transcript, reply, playing audio and timings are on the page."""
    status = page.locator("#status")
    await expect(status).to_contain_text("voice-to-voice", timeout=60_000)
    chat = page.locator("#chat")
    await expect(chat.locator(".user").first).to_contain_text(TRANSCRIPT)
    await expect(chat.locator(".bot").first).to_have_text(re.compile(r"\w+ \w+"))
    await expect(page.locator("#partial textarea")).to_have_value(TRANSCRIPT)
    # the streamed reply reached the player and plays (autoplay)
    await page.wait_for_function(
        "() => { const a = document.querySelector('#reply audio');"
        " return a && a.currentSrc && (a.currentTime > 0 || !a.paused); }",
        timeout=30_000,
    )
    await expect(page.locator("#chart")).to_contain_text("where the milliseconds went")
    # the finished turn's row: answered in full, or cut at the token limit (both are answers)
    await expect(page.locator("#turns")).to_contain_text(re.compile(r"\b(completed|incomplete)\b"))
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / screenshot, full_page=True)


async def test_a_question_uploaded_in_the_browser_is_answered_aloud(
    server: LiveServer, tmp_path: Path
) -> None:
    question = tmp_path / "question.wav"
    question.write_bytes(encode_wav(speak(QUESTION, 24_000)))
    async with _demo_page(server) as page:
        await page.get_by_role("tab", name="Upload").click()
        await page.locator("#clip input[type=file]").set_input_files(question)
        await expect(page.locator("#clip audio").first).to_be_attached(timeout=15_000)
        await page.locator("#send").click()
        await _expect_answered(page, "demo-upload.png")


async def test_a_question_spoken_into_the_microphone_is_answered_aloud(
    server: LiveServer, tmp_path: Path
) -> None:
    spoken = speak(QUESTION, 48_000)
    pause = np.zeros(2 * 48_000, dtype=np.float32)  # the speaker stops: the server ends the turn
    mic = tmp_path / "mic.wav"
    mic.write_bytes(encode_wav(AudioChunk(np.concatenate([spoken.samples, pause]), 48_000)))
    fake_mic = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}%noloop",
    ]
    async with _demo_page(server, *fake_mic) as page:
        await page.get_by_role("tab", name="Microphone").click()
        await page.locator("#mic button", has_text="Record").click()
        # the live transcript shows while the microphone is still streaming (how much of the
        # question a partial holds by then is a matter of the machine's speed; the final
        # transcript's words are checked below)
        await expect(page.locator("#partial textarea")).to_have_value(
            re.compile(r"\w+"), timeout=30_000
        )
        await expect(page.locator("#chat .bot").first).to_be_attached(timeout=60_000)
        await page.locator("#mic button", has_text="Stop").click()
        await _expect_answered(page, "demo-microphone.png")


async def test_with_api_keys_the_demo_asks_for_one_then_answers(
    engines: Engines, tmp_path: Path
) -> None:
    """Keys on: the page sends the browser to the login form; a key with the realtime scope
    opens the demo, which then answers as before (its realtime session is the key's)."""
    from server.app import create_app

    settings = make_settings(demo_enabled=True, llm=GREEDY)
    app = create_app(settings, engines=engines)
    key = app.state.voxline.store.keys.create("browser", ["realtime"])
    question = tmp_path / "question.wav"
    question.write_bytes(encode_wav(speak(QUESTION, 24_000)))
    with LiveServer(app) as live:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 1000})
                await page.goto(f"{live.url}/demo/")
                assert page.url.endswith("/demo/login")
                await page.locator("#key").fill("vx-not-a-key")
                await page.locator("#login").click()
                await expect(page.get_by_role("alert")).to_contain_text("not a live API key")
                await page.locator("#key").fill(key.secret)
                await page.locator("#login").click()
                await expect(page.locator("#voice input")).to_have_value("joe", timeout=30_000)
                await page.get_by_role("tab", name="Upload").click()
                await page.locator("#clip input[type=file]").set_input_files(question)
                await expect(page.locator("#clip audio").first).to_be_attached(timeout=15_000)
                await page.locator("#send").click()
                await _expect_answered(page, "demo-keys.png")
            finally:
                await browser.close()
    usage = app.state.voxline.store.usage.day(key.key.id)
    assert usage.requests >= 1 and usage.tokens > 0  # the demo's turn was the key's
