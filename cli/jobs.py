"""``voxline jobs``: submit durable jobs to a server, watch them, cancel them, fetch results.

Talks to a running server over HTTP (:mod:`client.jobs`), so a job outlives the command: ``submit``
returns at once (``--wait`` stays with a progress bar), ``wait`` picks any job up again later,
even across a server restart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from client.jobs import JobsClient, JobsError

app = typer.Typer(
    help="Durable jobs: long audio, long text, batches of turns.", no_args_is_help=True
)
console = Console(stderr=True)

Url = Annotated[str, typer.Option(help="The voxline server.", envvar="VOXLINE_URL")]
ApiKey = Annotated[
    str | None, typer.Option(help="API key (Bearer).", envvar="VOXLINE_API_KEY", show_default=False)
]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="Write the result here.")]
Format = Annotated[
    str | None, typer.Option(help="Transcription result: json, text, srt, vtt, verbose_json.")
]


def _client(url: str, api_key: str | None) -> JobsClient:
    return JobsClient(url, api_key=api_key)


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    return typer.Exit(2 if isinstance(exc, JobsError) and exc.status < 500 else 1)


def _show(job: dict[str, Any]) -> None:
    print(json.dumps(job, indent=2))


def _watch(client: JobsClient, job_id: str) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[chunks]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(job_id, total=1.0, chunks="")

        def update(job: dict[str, Any]) -> None:
            chunks = job.get("chunks") or {}
            shown = f"{chunks.get('done', 0)}/{chunks.get('total') or '?'} chunks"
            bar.update(
                task,
                completed=job["progress"],
                chunks=shown,
                description=f"{job_id} {job['status']}",
            )

        return client.wait(job_id, on_update=update)


def _save(client: JobsClient, job: dict[str, Any], out: Path | None, fmt: str | None) -> None:
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        raise _fail(RuntimeError(f"job {job['id']} {job['status']}: {error.get('message', '')}"))
    data = client.result(job["id"], format=fmt)
    if out is None:
        sys.stdout.buffer.write(data)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    console.print(f"wrote {out} ({len(data)} bytes)")


@app.command()
def submit(
    kind: Annotated[str, typer.Argument(help="transcription, speech or turns.")],
    file: Annotated[Path | None, typer.Argument(help="Audio, text or JSONL file.")] = None,
    text: Annotated[str | None, typer.Option(help="Speech: the text (instead of a file).")] = None,
    language: Annotated[str | None, typer.Option(help="Transcription: language code.")] = None,
    voice: Annotated[str | None, typer.Option(help="Speech and turns: the voice.")] = None,
    response_format: Annotated[
        str | None, typer.Option(help="Speech: wav, mp3, flac, opus, aac, pcm.")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Stay until it ends, with a progress bar.")] = False,
    out: Out = None,
    format: Format = None,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Submit a job; prints its object (``--wait``: waits, then writes the result)."""
    if file is not None and not file.is_file():
        raise _fail(FileNotFoundError(f"{file}: no such file"))
    options = {"language": language, "voice": voice, "response_format": response_format}
    with _client(url, api_key) as client:
        try:
            job = client.submit(kind, file=file, text=text, options=options)
            if not wait:
                _show(job)
                return
            _save(client, _watch(client, job["id"]), out, format)
        except JobsError as exc:
            raise _fail(exc) from None


@app.command()
def status(
    job_id: Annotated[str | None, typer.Argument(help="A job id (none: list your jobs).")] = None,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Print a job's object, or your recent jobs."""
    with _client(url, api_key) as client:
        try:
            _show(client.get(job_id) if job_id else {"data": client.list()})
        except JobsError as exc:
            raise _fail(exc) from None


@app.command("wait")
def wait_(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    out: Out = None,
    format: Format = None,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Wait for a job with a progress bar, then write its result (stdout by default)."""
    with _client(url, api_key) as client:
        try:
            _save(client, _watch(client, job_id), out, format)
        except JobsError as exc:
            raise _fail(exc) from None


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Cancel a queued or running job."""
    with _client(url, api_key) as client:
        try:
            _show(client.cancel(job_id))
        except JobsError as exc:
            raise _fail(exc) from None
