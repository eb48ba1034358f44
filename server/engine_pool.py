"""Started engines shared by the releases a server holds: one chain per distinct stage setup.

Two releases that differ only in their system prompt must not load SmolLM2 twice, and a release
that changes only its TTS voice must not load a second Whisper. So each stage's chain is keyed
by the settings it is built from (``engine_key``) and counted by the releases that use it; a
release takes the chains whose keys exist and starts only the missing ones, and a chain is
closed when its last release lets go.

The key of a stage is a hash of the whole settings tree *minus* what cannot change how that
stage's engines are built: the other stages' sections, the sections no engine reads
(``ENGINE_FREE``) and the LLM fields every caller passes with each call (``CALL_TIME``: the
system prompt and the sampling defaults, which the routes take from the release that serves
them). Anything else, including sections added later, counts: an unknown section costs a
needless second load at worst, never the wrong engine. The engine scheduler attached to a
backend when it is built (``models.registry``) is shared with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from models.registry import Engines, start_stage
from pipeline.errors import Stage
from pipeline.settings import Settings
from pipeline.stages import LLM, STT, TTS

STAGES: tuple[Stage, ...] = ("stt", "llm", "tts")

ENGINE_FREE = frozenset(
    {
        "session",
        "observability",
        "pricing",
        "state",
        "audio",
        "demo_enabled",
        "release",
        "edge",
        "jobs",
    }
)
"""Top-level settings no engine is built from (a release that changes only these shares every
engine with the active one)."""

CALL_TIME: Mapping[str, frozenset[str]] = {
    "llm": frozenset({"system_prompt", "max_tokens", "temperature", "top_p"}),
}
"""Fields of a stage's section that reach its engine with each call, not at build time."""

Keys = Mapping[Stage, str]
StageEngine = STT | LLM | TTS
StageStarter = Callable[[Stage, Settings], Awaitable[StageEngine]]


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):  # two keys, two engines (only the hash is kept)
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def engine_key(settings: Settings, stage: Stage) -> str:
    """What ``stage``'s chain is built from, hashed: equal keys, interchangeable engines."""
    tree = settings.model_dump()
    for name in list(tree):
        if name in ENGINE_FREE or (name in STAGES and name != stage):
            del tree[name]
    for name in CALL_TIME.get(stage, ()):
        tree[stage].pop(name, None)
    text = json.dumps(tree, sort_keys=True, default=_plain)
    return f"{stage}:{hashlib.sha256(text.encode()).hexdigest()[:20]}"


@dataclass(slots=True)
class _Entry:
    engine: StageEngine
    users: int
    owned: bool  # False: handed in (tests); never closed here


async def _start(stage: Stage, settings: Settings) -> StageEngine:
    return await start_stage(stage, settings)


class EnginePool:
    """Stage chains by key, counted by the releases holding them.

    Args:
        start: Builds, starts and warms one stage's chain (default: ``models.registry``).
    """

    def __init__(self, start: StageStarter = _start) -> None:
        self._start = start
        self._entries: dict[str, _Entry] = {}
        self._lock = asyncio.Lock()

    def adopt(self, settings: Settings, engines: Engines) -> Keys:
        """Hold engines started elsewhere (handed to the app) under ``settings``' keys; they
        are shared like any other, kept even when no release holds them (a rollback to them
        loads nothing) and never closed by the pool."""
        keys = {stage: engine_key(settings, stage) for stage in STAGES}
        for stage in STAGES:
            entry = self._entries.get(keys[stage])
            if entry is None:
                self._entries[keys[stage]] = _Entry(getattr(engines, stage), 1, owned=False)
            else:
                entry.users += 1
        return keys

    async def acquire(self, settings: Settings) -> tuple[Engines, Keys]:
        """The engines of ``settings``: shared where a chain of the same key is held, the
        missing ones started (concurrently) and warmed.

        Raises:
            VoxlineError: a missing chain could not start (nothing is left held).
        """
        keys = {stage: engine_key(settings, stage) for stage in STAGES}
        async with self._lock:
            held = [s for s in STAGES if keys[s] in self._entries]
            for stage in held:  # counted before any await: nobody closes them meanwhile
                self._entries[keys[stage]].users += 1
            missing = [s for s in STAGES if s not in held]
            results = await asyncio.gather(
                *(self._start(stage, settings) for stage in missing), return_exceptions=True
            )
            failure = next((r for r in results if isinstance(r, BaseException)), None)
            if failure is not None:
                started = [r for r in results if not isinstance(r, BaseException)]
                await asyncio.gather(*(e.aclose() for e in started), return_exceptions=True)
                for stage in held:
                    self._entries[keys[stage]].users -= 1
                await self._close(self._unused())
                raise failure
            for stage, engine in zip(missing, results, strict=True):
                assert not isinstance(engine, BaseException)
                self._entries[keys[stage]] = _Entry(engine, 1, owned=True)
        picked = {s: self._entries[keys[s]].engine for s in STAGES}
        engines = Engines(picked["stt"], picked["llm"], picked["tts"])  # type: ignore[arg-type]
        return engines, keys

    async def release(self, keys: Keys) -> None:
        """Let go of a release's chains; close those nobody holds any more."""
        for key in keys.values():
            entry = self._entries.get(key)
            if entry is not None:
                entry.users -= 1
        await self._close(self._unused())

    def held(self) -> dict[str, int]:
        """Key -> how many releases hold it (for tests and the logs)."""
        return {key: entry.users for key, entry in self._entries.items()}

    async def aclose(self) -> None:
        """Close every chain the pool started (at shutdown); those handed in stay held."""
        owned = [e for e in self._entries.values() if e.owned]
        self._entries = {k: e for k, e in self._entries.items() if not e.owned}
        await self._close(owned)

    def _unused(self) -> list[_Entry]:
        gone = [k for k, e in self._entries.items() if e.users <= 0 and e.owned]
        return [self._entries.pop(key) for key in gone]

    @staticmethod
    async def _close(entries: list[_Entry]) -> None:
        await asyncio.gather(
            *(e.engine.aclose() for e in entries if e.owned), return_exceptions=True
        )
