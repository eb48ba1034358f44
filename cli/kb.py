"""``voxline kb``: fill and inspect the knowledge base from the command line.

``voxline kb add STORE PATH...`` uploads documents (txt, md, html, pdf; a folder adds the ones
inside it) into the vector store named ``STORE`` (a ``vs_...`` id or a name; a new name creates
the store), with a progress bar per file while it is chunked and embedded. It works on the
state store directly (``VOXLINE_STATE__URL``), the same one the server uses, so a running
server searches the new files at once; no server needs to be running.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.errors import InvalidInput, VoxlineError

if TYPE_CHECKING:  # the CLI imports the server's modules inside its commands
    from server.kb import KnowledgeBase
    from server.kb.records import StoreRecord

app = typer.Typer(help="The knowledge base: vector stores of documents for grounded answers.")
console = Console(stderr=True)


def _fail(message: str, code: int) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _documents(paths: list[Path]) -> list[Path]:
    from models.doc_text import KINDS

    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in KINDS)
        elif path.is_file():
            found.append(path)
        else:
            raise InvalidInput(f"{path}: no such file or folder")
    if not found:
        raise InvalidInput("no documents to add (txt, md, html, pdf)")
    return found


@app.command()
def add(
    store_name: Annotated[str, typer.Argument(metavar="STORE", help="A vector store id or name.")],
    paths: Annotated[list[Path], typer.Argument(help="Documents, or folders of them.")],
    chunk_tokens: Annotated[
        int | None, typer.Option(help="Chunk size in tokens (default: the kb settings).")
    ] = None,
    overlap_tokens: Annotated[
        int | None, typer.Option(help="Chunk overlap in tokens (default: the kb settings).")
    ] = None,
) -> None:
    """Add documents to a vector store (created if the name is new)."""
    from pipeline.settings import Settings
    from server.kb import knowledge_base
    from store import Store

    settings = Settings()
    try:
        files = _documents(paths)
        with Store.open(settings.state) as store:
            kb = knowledge_base(store, settings)
            vs = _store_named(kb, store_name)
            console.print(f"vector store {vs.name!r} ({vs.id})", highlight=False)
            failed = 0
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("chunks"),
                TimeElapsedColumn(),
                console=console,
            ) as bar:
                for path in files:
                    failed += not _add_one(kb, vs.id, path, bar, chunk_tokens, overlap_tokens)
    except VoxlineError as exc:
        raise _fail(str(exc), 2 if isinstance(exc, InvalidInput) else 1) from None
    if failed:
        raise typer.Exit(1)


def _store_named(kb: KnowledgeBase, name: str) -> StoreRecord:
    stores = kb.catalog.vector_stores(None)
    for vs in stores:
        if name in (vs.id, vs.name):
            return vs
    if name.startswith("vs_"):
        raise InvalidInput(f"no vector store {name!r}")
    return kb.create_store(name, None)


def _add_one(
    kb: KnowledgeBase,
    vs_id: str,
    path: Path,
    bar: Progress,
    chunk_tokens: int | None,
    overlap_tokens: int | None,
) -> bool:
    task = bar.add_task(escape(path.name), total=None)
    try:
        with path.open("rb") as f:
            record = kb.upload(f, path.name, "assistants", None)
    except InvalidInput as exc:
        bar.update(task, description=f"[red]{escape(path.name)}: refused")
        bar.console.print(f"[red]{escape(str(path))}:[/] {escape(str(exc))}", highlight=False)
        return False
    kb.attach(vs_id, record.id, None, max_chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    result = kb.ingest(vs_id, record.id, progress)
    if result.status != "completed":
        bar.update(task, description=f"[red]{escape(path.name)}: failed")
        reason = escape(result.error_message or "")
        bar.console.print(f"[red]{escape(str(path))}:[/] {reason}", highlight=False)
        return False
    bar.update(task, completed=result.chunks, total=result.chunks)
    return True


@app.command("list")
def list_stores(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The vector stores and their files."""
    from pipeline.settings import Settings
    from server.kb import knowledge_base
    from store import Store

    settings = Settings()
    with Store.open(settings.state) as store:
        kb = knowledge_base(store, settings)
        rows = []
        for vs in kb.catalog.vector_stores(None):
            files = kb.catalog.store_files(vs.id)
            chunks = sum(f.chunks for f in files)
            rows.append({"id": vs.id, "name": vs.name, "files": len(files), "chunks": chunks})
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("id", "name", "files", "chunks", title="vector stores")
    for row in rows:
        table.add_row(str(row["id"]), str(row["name"]), str(row["files"]), str(row["chunks"]))
    Console().print(table)


@app.command()
def search(
    store_name: Annotated[str, typer.Argument(metavar="STORE", help="A vector store id or name.")],
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="How many passages.")] = 3,
) -> None:
    """The passages of a store closest to a query, with their scores."""
    from pipeline.settings import Settings
    from server.kb import knowledge_base
    from store import Store

    settings = Settings()
    try:
        with Store.open(settings.state) as store:
            kb = knowledge_base(store, settings)
            names = {vs.name: vs.id for vs in kb.catalog.vector_stores(None)}
            found = kb.search(query, [names.get(store_name, store_name)], k, None)
    except VoxlineError as exc:
        raise _fail(str(exc), 2 if isinstance(exc, InvalidInput) else 1) from None
    out = Console()
    for p in found.passages:
        out.print(f"[bold]{p.score:.3f}[/] {escape(p.filename)} #{p.chunk}", highlight=False)
        out.print(escape(p.text), highlight=False)
    console.print(f"embed {found.embed_ms:.1f} ms, search {found.search_ms:.1f} ms")
