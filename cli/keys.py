"""``voxline keys``: create, list and revoke API keys (stored hashed in the state store).

The first key turns authentication on for every server sharing the store (README,
"Security"); a key's secret is printed once, at creation, and never again.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
console = Console(stderr=True)

DEFAULT_SCOPES = "realtime,audio,chat"


def _store() -> Any:
    from pipeline.settings import Settings
    from store import Store

    return Store.open(Settings().state)


def _when(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M")


def _key_json(key: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": list(key.scopes),
        "limits": asdict(key.limits),
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="What the key is for (shown in lists and usage).")],
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: realtime, audio, chat, admin.")
    ] = DEFAULT_SCOPES,
    rpm: Annotated[int | None, typer.Option(min=0, help="Requests per minute.")] = None,
    max_sessions: Annotated[
        int | None, typer.Option(min=0, help="Concurrent realtime sessions.")
    ] = None,
    tokens_per_day: Annotated[
        int | None, typer.Option(min=0, help="LLM tokens per UTC day.")
    ] = None,
    audio_seconds_per_day: Annotated[
        float | None, typer.Option(min=0, help="Seconds of audio (in and out) per UTC day.")
    ] = None,
    usd_per_month: Annotated[
        float | None, typer.Option(min=0, help="USD per UTC calendar month.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {id, key, ...} as JSON.")] = False,
) -> None:
    """Create a key and print its secret (the only time it is shown)."""
    from pipeline.errors import InvalidInput
    from server.edge.policy import SCOPES
    from store import KeyLimits

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SCOPES))
    if unknown or not wanted:
        console.print(
            f"[bold red]error:[/] unknown scope(s) {escape(', '.join(unknown) or '(none)')};"
            f" choose from {', '.join(SCOPES)}",
            highlight=False,
        )
        raise typer.Exit(2)
    try:
        limits = KeyLimits(rpm, max_sessions, tokens_per_day, audio_seconds_per_day, usd_per_month)
        with _store() as store:
            new = store.keys.create(name, wanted, limits)
    except InvalidInput as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps({**_key_json(new.key), "key": new.secret}))
        return
    print(new.secret)
    console.print(
        f"created {new.key.id} ({escape(new.key.name)}, scopes {', '.join(new.key.scopes)}):"
        " the key above is shown only now; keep it secret.",
        highlight=False,
    )


@app.command("list")
def list_keys(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List every key (never a secret: its visible prefix only)."""
    with _store() as store:
        keys = store.keys.list()
    if as_json:
        print(json.dumps([_key_json(k) for k in keys]))
        return
    table = Table("id", "name", "prefix", "scopes", "limits", "created", "revoked")
    for k in keys:
        limits = ", ".join(
            f"{name}={value}" for name, value in _key_json(k)["limits"].items() if value is not None
        )
        table.add_row(
            k.id,
            escape(k.name),
            k.prefix,
            ",".join(k.scopes),
            limits or "-",
            _when(k.created_at),
            _when(k.revoked_at),
        )
    Console().print(table)


@app.command()
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")]) -> None:
    """Revoke a key (and the client secrets minted for it), at once on every server."""
    with _store() as store:
        done = store.keys.revoke(key_id)
    if not done:
        console.print(f"[bold red]error:[/] no live key {escape(key_id)!r}", highlight=False)
        raise typer.Exit(1)
    console.print(f"revoked {escape(key_id)}", highlight=False)
