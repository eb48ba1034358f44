"""The Gradio demo: talk to voxline in a browser and see where the milliseconds go.

The page is a client of the realtime WebSocket (``server.demo_client``), never a second path into
the pipeline: mounted on the server at ``/demo`` (not at ``/``: the API owns the root) it connects
to its own server's ``/v1/realtime``, and ``voxline demo --url URL`` serves the same page on its
own against any voxline server. Speech comes from the microphone (streamed while you speak) or an
uploaded clip (spoken at real-time pace); the reply streams back and plays while it is being
synthesized, next to the live transcript, the conversation, and for every turn the stage
breakdown from ``response.done`` with the backend that served each stage.

Gradio must not reach the internet: analytics (and its version check) are off, nothing is shared,
and the default theme's fonts are served by Gradio itself.
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import numpy as np
import pandas as pd  # type: ignore[import-untyped]  # no stubs; only builds two frames
from fastapi import FastAPI

from pipeline.audio import decode_audio
from pipeline.errors import VoxlineError
from pipeline.settings import AudioLimits, Settings
from pipeline.types import AudioChunk
from server.demo_client import RealtimeDemoClient, TabSessions
from server.demo_conversation import SAMPLE_RATE, STAGES, DemoView, Int16Array, TurnStats
from server.edge import auth

log = logging.getLogger("voxline.demo")

MOUNT_PATH = "/demo"
_TABLE_HEADERS = [
    "turn",
    "status",
    *(f"{label} ms" for label, _, _ in STAGES),
    "reply s",
    "backends (stt / llm / tts)",
]


def _read_clip(path: Path, limits: AudioLimits) -> AudioChunk:
    return decode_audio(path.read_bytes(), sample_rate=SAMPLE_RATE, limits=limits)


def _key(request: gr.Request) -> str:
    return request.session_hash or ""


def _credential(request: gr.Request, api_key: str | None) -> str | None:
    """What the tab's realtime session authenticates with: the browser's own credential (its
    bearer header, or the demo login's cookie, which holds a client secret for its key), else
    the key the demo was launched with (``voxline demo --api-key``), else nothing (no keys)."""
    raw = request.request
    if raw is not None:
        headers = raw.headers
        found = auth.bearer(headers) or auth.demo_cookie(headers)
        if found is not None:
            return found
    return api_key


def _base_url(server_url: str | None, request: gr.Request) -> str:
    """The HTTP base URL of the server a tab talks to: ``server_url``, or (``None``) the one
    serving the page, at the local address the request arrived on (no proxy in between)."""
    if server_url is not None:
        return server_url.rstrip("/")
    host, port = request.request.scope["server"]  # type: ignore[union-attr]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def _wav(pcm: Int16Array) -> bytes:
    # bytes, not a (rate, array) tuple: Gradio normalizes every array it is given by its own
    # peak, which would change the loudness from one streamed chunk to the next
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm.astype("<i2").tobytes())
    return out.getvalue()


def _chart(turn: TurnStats) -> pd.DataFrame:
    rows = [(s.stage, s.ms, s.backend) for s in turn.stages if s.ms]
    # the page keeps the column kinds (and colours) of the first frame it is sent: never send
    # an empty one, whose untyped "ms" would make every later chart categorical
    return pd.DataFrame(rows, columns=["stage", "ms", "backend"]).astype({"ms": float})


def _table(turns: tuple[TurnStats, ...]) -> pd.DataFrame:
    rows = []
    for turn in turns:
        by_stage = {s.stage: s for s in turn.stages}
        backends = " / ".join(by_stage[label].backend for label in ("STT", "LLM first phrase"))
        backends += f" / {by_stage['TTS first audio'].backend}"
        timings = ["-" if s.ms is None else f"{s.ms:.0f}" for s in turn.stages]
        rows.append([turn.number, turn.status, *timings, f"{turn.audio_s:.1f}", backends])
    return pd.DataFrame(rows, columns=_TABLE_HEADERS)


def _status(view: DemoView) -> str:
    if view.errors:
        return "**Error:** " + "; ".join(view.errors)
    if not view.done:
        return "Listening and answering…"
    if not view.turns:
        return ""
    turn = view.turns[-1]
    v2v = next((s.ms for s in turn.stages if s.stage == "V2V"), None)
    said = f"voice-to-voice {v2v:.0f} ms" if v2v is not None else "no voice-to-voice timing"
    return f"Turn {turn.number} {turn.status}: {said}, {turn.audio_s:.1f} s of reply audio."


def _chat(view: DemoView) -> list[dict[str, str]]:
    return [{"role": line.role, "content": line.text} for line in view.chat]


def _render(view: DemoView, audio: Any) -> tuple[Any, ...]:
    """The outputs of a turn handler: partial, chat, reply ``audio``, status, chart, table."""
    chart: Any = gr.skip()
    if view.done and view.turns:
        last = view.turns[-1]
        title = f"Turn {last.number}: where the milliseconds went"
        chart = gr.BarPlot(value=_chart(last), title=title)
    table = _table(view.turns) if view.done else gr.skip()
    return view.partial, _chat(view), audio, _status(view), chart, table


async def _outputs(
    views: AsyncIterator[DemoView], streaming: bool
) -> AsyncIterator[tuple[Any, ...]]:
    """A turn handler's outputs, view by view. Gradio needs ffmpeg to stream audio: without it
    the reply is one clip, played when the turn is over."""
    held: list[Int16Array] = []
    async for view in views:
        if streaming:
            yield _render(view, _wav(view.audio) if view.audio.size else gr.skip())
            continue
        held.append(view.audio)
        whole = np.concatenate(held)
        yield _render(view, (SAMPLE_RATE, whole) if view.done and whole.size else gr.skip())


def _error(exc: VoxlineError) -> tuple[Any, ...]:
    skip = gr.skip()
    return skip, skip, skip, f"**Error:** {exc}", skip, skip


def build_demo(
    server_url: str | None = None,
    *,
    instructions: str = "",
    limits: AudioLimits | None = None,
    api_key: str | None = None,
) -> gr.Blocks:
    """The demo page.

    Args:
        server_url: The voxline server to talk to; ``None``: the one serving the page.
        instructions: The instructions box's first value (empty: the server's default).
        limits: Bounds on an uploaded clip.
        api_key: The key to talk to the server with when the browser brings none (the demo
            served on its own; mounted on the server, each browser logs in with its own key).
    """
    sessions = TabSessions()
    stream_reply = shutil.which("ffmpeg") is not None
    if not stream_reply:
        log.warning("no ffmpeg on PATH: the demo plays each reply when it is complete")
    limits = limits or AudioLimits()

    async def tab_client(request: gr.Request, voice: str | None, prompt: str) -> RealtimeDemoClient:
        url = _base_url(server_url, request)
        credential = _credential(request, api_key)
        return await sessions.client(_key(request), url, voice, prompt, api_key=credential)

    async def load_voices(request: gr.Request) -> Any:
        try:
            credential = _credential(request, api_key)
            headers = {"Authorization": f"Bearer {credential}"} if credential else None
            async with httpx.AsyncClient(timeout=5.0, headers=headers) as http:
                response = await http.get(f"{_base_url(server_url, request)}/v1/audio/voices")
                response.raise_for_status()
                body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.info("no voice list (%s): the voice box takes any name", exc)
            return gr.Dropdown(choices=[], value=None)
        voices = [str(v["id"]) for v in body.get("data", [])]
        return gr.Dropdown(choices=voices, value=body.get("default"))

    async def send_clip(
        path: str | None, voice: str | None, prompt: str, request: gr.Request
    ) -> AsyncIterator[tuple[Any, ...]]:
        if not path:
            raise gr.Error("Upload or record a spoken question first.")
        async with sessions.lock(_key(request)):
            try:
                audio = await asyncio.to_thread(_read_clip, Path(path), limits)
                client = await tab_client(request, voice, prompt)
                async for out in _outputs(client.speak(audio), stream_reply):
                    yield out
            except VoxlineError as exc:
                yield _error(exc)

    async def open_session(voice: str | None, prompt: str, request: gr.Request) -> str:
        # before the first piece of speech arrives: connecting then would cost audio
        async with sessions.lock(_key(request)):
            try:
                await tab_client(request, voice, prompt)
            except VoxlineError as exc:
                return f"**Error:** {exc}"
        return "Listening…"

    async def mic_chunk(
        chunk: tuple[int, np.ndarray] | None, voice: str | None, prompt: str, request: gr.Request
    ) -> tuple[Any, ...]:
        if chunk is None:
            return gr.skip(), gr.skip(), gr.skip()
        rate, samples = chunk
        mono = samples.mean(axis=1) if samples.ndim == 2 else samples
        scale = 32768.0 if np.issubdtype(mono.dtype, np.integer) else 1.0
        audio = AudioChunk((mono / scale).astype(np.float32), int(rate))
        async with sessions.lock(_key(request)):
            try:
                client = await tab_client(request, voice, prompt)
                view = await client.append(audio)
            except VoxlineError as exc:
                return gr.skip(), gr.skip(), f"**Error:** {exc}"
        return view.partial, _chat(view), _status(view)

    async def mic_done(
        voice: str | None, prompt: str, request: gr.Request
    ) -> AsyncIterator[tuple[Any, ...]]:
        async with sessions.lock(_key(request)):
            try:
                client = await tab_client(request, voice, prompt)
                async for out in _outputs(client.finish(), stream_reply):
                    yield out
            except VoxlineError as exc:
                yield _error(exc)

    async def close(request: gr.Request) -> None:
        await sessions.close(_key(request))

    async def new_conversation(request: gr.Request) -> tuple[Any, ...]:
        await close(request)
        return "", [], None, "", None, _table(())

    where = server_url or "this server"
    demo = gr.Blocks(title="voxline demo", analytics_enabled=False)
    with demo:
        gr.Markdown(
            f"## voxline: talk to the pipeline\nSpeech to text, a language model, text to speech,"
            f" streamed end to end through the realtime API of {where}. Speak or upload a"
            " question; the reply plays while it is synthesized."
        )
        with gr.Row():
            with gr.Column(scale=1):
                # the microphone's tab first: in a tab hidden at load, Gradio 6 streams in
                # 0.1 s pieces whatever ``stream_every`` says
                with gr.Tab("Microphone"):
                    mic = gr.Audio(
                        sources=["microphone"],
                        streaming=True,
                        type="numpy",
                        label="Speak, then stop recording",
                        elem_id="mic",
                    )
                with gr.Tab("Upload"):
                    clip = gr.Audio(
                        sources=["upload"], type="filepath", label="Spoken question", elem_id="clip"
                    )
                    send = gr.Button("Send", variant="primary", elem_id="send")
                voice = gr.Dropdown(
                    label="Voice", allow_custom_value=True, elem_id="voice", interactive=True
                )
                prompt = gr.Textbox(
                    label="Instructions",
                    value=instructions,
                    placeholder="the server's default",
                    lines=3,
                    elem_id="instructions",
                )
                reset = gr.Button("New conversation", elem_id="reset")
            with gr.Column(scale=2):
                partial = gr.Textbox(
                    label="You (live transcript)", interactive=False, elem_id="partial"
                )
                chat = gr.Chatbot(label="Conversation", height=300, elem_id="chat")
                reply = gr.Audio(
                    label="Reply",
                    streaming=stream_reply,
                    autoplay=True,
                    interactive=False,
                    elem_id="reply",
                )
                status = gr.Markdown(elem_id="status")
        with gr.Column():
            chart = gr.BarPlot(
                value=None,
                x="stage",
                y="ms",
                color="backend",
                sort=[label for label, _, _ in STAGES],
                title="Stage breakdown",
                y_title="ms",
                height=260,
                elem_id="chart",
            )
            gr.Markdown(
                "The stages overlap: STT, the LLM and TTS start during the silence that ends"
                " the turn, so voice-to-voice (V2V) is less than their sum."
            )
            table = gr.Dataframe(
                value=_table(()), label="Every turn", interactive=False, elem_id="turns"
            )
        outputs = [partial, chat, reply, status, chart, table]
        demo.load(load_voices, outputs=[voice], queue=False)
        send.click(
            send_clip,
            [clip, voice, prompt],
            outputs,
            concurrency_limit=None,
            api_visibility="private",
        )
        mic.start_recording(
            open_session,
            [voice, prompt],
            [status],
            concurrency_limit=None,
            api_visibility="private",
        )
        # Gradio keeps only the latest piece of a stream that its handler has not taken yet:
        # pieces of half a second give the handler that long before audio is lost, and
        # "multiple" keeps a piece that arrives while the previous one is handled
        mic.stream(
            mic_chunk,
            [mic, voice, prompt],
            [partial, chat, status],
            stream_every=0.5,
            trigger_mode="multiple",
            concurrency_limit=None,
            api_visibility="private",
        )
        mic.stop_recording(
            mic_done, [voice, prompt], outputs, concurrency_limit=None, api_visibility="private"
        )
        reset.click(new_conversation, None, outputs, api_visibility="private")
        demo.unload(close)
    return demo


def mount_demo(app: FastAPI, settings: Settings) -> None:
    """Serve the demo at ``/demo`` on ``app`` (a client of the app's own ``/v1/realtime``; it
    reads the voice choices from ``GET /v1/audio/voices``)."""
    demo = build_demo(instructions=settings.llm.system_prompt, limits=settings.audio)
    gr.mount_gradio_app(
        app,
        demo,
        path=MOUNT_PATH,
        footer_links=[],
        run_history=False,  # it would keep every clip and reply in the browser
        max_file_size=settings.audio.max_bytes,
        ssr_mode=False,
        mcp_server=False,
    )


def launch_demo(
    url: str, *, host: str = "127.0.0.1", port: int = 7860, api_key: str | None = None
) -> None:
    """Serve the demo on its own (blocking) against the voxline server at ``url``, talking to
    it with ``api_key`` (anyone who reaches this demo uses that key: it listens on loopback
    unless ``host`` says otherwise)."""
    demo = build_demo(url, api_key=api_key)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        footer_links=[],
        run_history=False,
        ssr_mode=False,
        mcp_server=False,
        inbrowser=False,
    )
