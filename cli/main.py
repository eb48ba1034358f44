"""The ``voxline`` command line: one voice turn, a spoken sample, the configured models, the
server, the demo, the benchmark, the eval and releases.

This is the composition root (docs/architecture.md, "Layers"): the only module that uses both
``server`` and ``benchmarks``. Each command imports the heavy parts it needs when it runs.

Errors a user can cause (a missing file, bytes that are not audio, silence, a model that cannot
be loaded) print one clear line and exit non-zero; tracebacks are for bugs, not for users.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmarks.cli import bench
from benchmarks.eval.cli import evaluate
from cli.doctor import doctor
from cli.jobs import app as jobs_app
from cli.kb import app as kb_app
from cli.keys import app as keys_app
from cli.release import release_app
from models.registry import check_loads, describe_models, start_engines
from pipeline.audio import decode_audio, encode_wav
from pipeline.errors import InvalidInput, StageError, VoxlineError
from pipeline.phrases import PhrasePolicy
from pipeline.settings import Settings
from pipeline.turn import TurnResult, run_turn
from pipeline.types import AudioChunk, GenerationParams

app = typer.Typer(
    name="voxline",
    help="Self-hosted streaming speech pipeline: STT -> LLM -> TTS, timed stage by stage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

DEFAULT_QUESTION = "What is the capital of France?"


def _fail(message: str, code: int) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _exit_code(exc: VoxlineError) -> int:
    if isinstance(exc, InvalidInput):
        return 2
    if isinstance(exc, StageError):
        return 3
    return 1


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log engine details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def _turn(settings: Settings, audio: AudioChunk, voice: str | None) -> TurnResult:
    # the engines of every LLM tier and their router (``llm.tiers``, ``router``), as the
    # server's /v1/turns answers with them
    engines = await start_engines(settings)
    try:
        return await run_turn(
            audio,
            stt=engines.stt,
            llm=engines.llm,
            tts=engines.tts,
            system_prompt=settings.llm.system_prompt,
            params=GenerationParams(
                max_tokens=settings.llm.max_tokens,
                temperature=settings.llm.temperature,
                top_p=settings.llm.top_p,
            ),
            voice=voice or settings.tts.voice,
            speed=settings.tts.speed,
            language=settings.stt.language,
            phrase_policy=PhrasePolicy.from_settings(settings.reply),
            router=engines.router,
        )
    finally:
        await engines.aclose()


def _print_turn(result: TurnResult) -> None:
    out = Console()
    out.print(f"[bold]you:[/]       {result.transcript}", highlight=False)
    out.print(f"[bold]assistant:[/] {result.reply}", highlight=False)
    table = Table("stage", "backend", "ms", title="timings")
    t, b = result.timings, result.backends
    rows = [
        ("stt (final)", b.stt, t.stt_ms),
        ("llm first token", b.llm, t.llm_ttft_ms),
        ("llm first phrase", b.llm, t.llm_first_phrase_ms),
        ("llm total", b.llm, t.llm_total_ms),
        ("tts first audio", b.tts, t.tts_ttfb_ms),
        ("tts total", b.tts, t.tts_total_ms),
        ("turn total", "", t.total_ms),
    ]
    for name, backend, ms in rows:
        table.add_row(name, backend, "-" if ms is None else f"{ms:.0f}")
    out.print(table)


@app.command()
def turn(
    audio_in: Annotated[Path, typer.Argument(help="Spoken question (wav, flac, mp3, ogg, webm).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the reply as wav.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    voice: Annotated[str | None, typer.Option(help="TTS voice (default from settings).")] = None,
) -> None:
    """Transcribe a spoken question, answer it and speak the answer."""
    settings = Settings()
    if not audio_in.is_file():
        raise _fail(f"{audio_in}: no such file", 2)
    try:
        audio = decode_audio(audio_in.read_bytes(), sample_rate=16_000, limits=settings.audio)
        result = asyncio.run(_turn(settings, audio, voice))
    except VoxlineError as exc:
        raise _fail(f"{audio_in}: {exc}", _exit_code(exc)) from None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(encode_wav(result.audio))
    if as_json:
        from server.turn_schemas import turn_json

        print(json.dumps(turn_json(result)))
    else:
        _print_turn(result)
        if out is not None:
            console.print(f"reply audio: {out} ({result.audio.duration:.1f} s)")


async def _speak(settings: Settings, text: str) -> AudioChunk:
    from models.registry import build_tts

    tts = build_tts(settings)
    await tts.start()
    try:
        chunks = [c async for c in tts.synthesize(text, settings.tts.voice)]
    finally:
        await tts.aclose()
    import numpy as np

    return AudioChunk(np.concatenate([c.samples for c in chunks]), chunks[0].sample_rate)


@app.command()
def say(
    text: Annotated[str, typer.Argument(help="What to say.")] = DEFAULT_QUESTION,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the wav.")] = Path(
        "question.wav"
    ),
) -> None:
    """Speak ``text`` with the configured TTS into a wav file (e.g. a question for ``turn``)."""
    settings = Settings()
    try:
        audio = asyncio.run(_speak(settings, text))
    except VoxlineError as exc:
        raise _fail(str(exc), _exit_code(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_wav(audio))
    console.print(f"wrote {out} ({audio.duration:.1f} s at {audio.sample_rate} Hz)")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Deploy on the Ray cluster at this address (auto, HOST:PORT, ray://HOST:10001,"
            " local): the stages as Ray Serve deployments, the API as their ingress.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the streaming voice server (realtime WebSocket + OpenAI-compatible HTTP); SIGTERM
    drains it gracefully (``VOXLINE_LIMITS__DRAIN_TIMEOUT_S``)."""
    settings = Settings()
    refusal = _exposure_refusal(settings, host)
    if refusal is not None:
        raise _fail(refusal, 2)
    if ray is not None:
        from server.ray_serve import run  # ray is an optional extra (docs/ray.md)

        run(settings, ray, host=host, port=port)
        return
    from server.app import create_app
    from server.logging_setup import configure_logging
    from server.serving import serve as serve_app

    logging.getLogger().handlers.clear()  # the CLI's plain handler: the server logs JSON lines
    configure_logging(settings.observability)
    # our JSON handler takes uvicorn's logs too; its access log (raw paths and query strings)
    # is replaced by one line per request from the request-context middleware
    serve_app(
        create_app(settings),
        host=host,
        port=port,
        limits=settings.limits,
        ws="auto",
        log_config=None,
        access_log=False,
    )


def _exposure_refusal(settings: Settings, host: str) -> str | None:
    """Why ``serve`` must not listen on ``host`` (``None``: it may). The secure default: with
    no API key, a server answers loopback clients only, so binding another interface without
    one is refused unless the setting says so explicitly."""
    from server.edge.hosts import is_loopback
    from store import Store

    if is_loopback(host) or settings.edge.allow_remote_without_keys:
        return None
    with Store.open(settings.state) as store:
        if store.keys.any_keys():
            return None
    return (
        f"refusing to listen on {host} without an API key: anyone who can reach it could use"
        " it. Create a key first (`voxline keys create NAME`), or set"
        " VOXLINE_EDGE__ALLOW_REMOTE_WITHOUT_KEYS=true to serve without authentication."
    )


@app.command()
def demo(
    url: Annotated[str, typer.Option(help="The voxline server to talk to.")] = (
        "http://127.0.0.1:8000"
    ),
    host: Annotated[str, typer.Option(help="Interface the demo listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The demo's TCP port.")] = 7860,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="VOXLINE_API_KEY", help="A key (realtime scope) for a server with API keys."
        ),
    ] = None,
) -> None:
    """Serve the browser demo on its own against a running server (``serve`` has it at /demo)."""
    from server.demo import launch_demo  # gradio is heavy: imported only for this command

    launch_demo(url, host=host, port=port, api_key=api_key)


@app.command()
def settings() -> None:
    """Print the settings reference (every VOXLINE_* variable) as Markdown."""
    from server.settings_doc import settings_markdown

    print(settings_markdown(), end="")


@app.command()
def models(
    check: Annotated[bool, typer.Option("--check", help="Also load each model.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the configured models: where their weights come from, their size, whether they load."""
    settings = Settings()
    infos = asyncio.run(check_loads(settings)) if check else describe_models(settings)
    if as_json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return
    table = Table("stage", "backend", "engine", "model", "source", "size", "license", "loads")
    for i in infos:
        size = "-" if i.size_bytes is None else f"{i.size_bytes / 1e6:.0f} MB"
        loads = {None: "not checked", True: "yes", False: f"no: {i.error}"}[i.loads]
        stage = i.stage if i.tier is None else f"{i.stage}:{i.tier}"
        table.add_row(stage, i.backend, i.engine, i.ref, i.source, size, i.license or "-", loads)
    Console().print(table)
    if any(i.loads is False for i in infos):
        sys.exit(1)


app.command()(doctor)
app.command()(bench)
app.add_typer(keys_app, name="keys")
app.command("eval")(evaluate)
app.add_typer(kb_app, name="kb")
app.add_typer(jobs_app, name="jobs")
app.add_typer(release_app, name="release")


if __name__ == "__main__":  # pragma: no cover
    app()
