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

LLM tiers (``llm.tiers``, ``pipeline.router``): each tier is a chain of its own, pooled by its
own key (the tier's settings as ``models.registry.tier_settings`` makes them), so a release that
adds a ``large`` tier shares its default tier with the active release and starts only the new
tier, and two releases naming the same tier model load it once. The router itself holds no
engine: each release gets its own, over its tiers, with its ``router`` policy.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from models.registry import Engines, router_of, start_stage, tier_settings
from pipeline.errors import Stage
from pipeline.settings import Settings
from pipeline.stages import LLM, STT, TTS

STAGES: tuple[Stage, ...] = ("stt", "llm", "tts")

ENGINE_FREE = frozenset(
    {
        "session",
        "reply",  # phrase cutting: read per turn from the release's settings
        "observability",
        "pricing",
        "state",
        "audio",
        "demo_enabled",
        "release",
        "edge",
        "jobs",
        "voices",  # upload limits (the voices are registered with a release's engines)
        "router",  # the per-release router is built over pooled tiers, holding no engine
        "kb",  # the embedding model is the knowledge base's, one per process (server.kb)
    }
)
"""Top-level settings no engine is built from (a release that changes only these shares every
engine with the active one)."""

CALL_TIME: Mapping[str, frozenset[str]] = {
    # ``tiers``: every tier is pooled under a key of its own (``slots``)
    "llm": frozenset({"system_prompt", "max_tokens", "temperature", "top_p", "tiers"}),
}
"""Fields of a stage's section that reach its engine with each call, not at build time."""

Keys = Mapping[str, str]
"""A release's chains: slot (``stt``, ``llm``, ``tts``, ``llm.<tier>``) -> pool key."""
StageEngine = STT | LLM | TTS
StageStarter = Callable[[Stage, Settings], Awaitable[StageEngine]]
StagePrepare = Callable[[Stage, StageEngine], Awaitable[object]]
"""Called with a stage's built chain before it starts."""


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


def slots(settings: Settings) -> dict[str, tuple[Stage, Settings]]:
    """The chains ``settings`` needs: slot -> (stage, the settings it is built from). The
    default LLM tier is ``llm``; every other tier of ``llm.tiers`` is ``llm.<tier>``."""
    out: dict[str, tuple[Stage, Settings]] = {stage: (stage, settings) for stage in STAGES}
    for tier in settings.llm.tiers:
        if tier != settings.router.default_tier:
            out[f"llm.{tier}"] = ("llm", tier_settings(settings, tier))
    return out


def keys_of(settings: Settings) -> dict[str, str]:
    """Slot -> pool key of every chain ``settings`` needs."""
    return {slot: engine_key(built, stage) for slot, (stage, built) in slots(settings).items()}


@dataclass(slots=True)
class _Entry:
    engine: StageEngine
    users: int
    owned: bool  # False: handed in (tests); never closed here


async def _start(
    stage: Stage, settings: Settings, *, prepare: StagePrepare | None = None
) -> StageEngine:
    hook = None if prepare is None else functools.partial(prepare, stage)
    return await start_stage(stage, settings, prepare=hook)


class EnginePool:
    """Stage chains by key, counted by the releases holding them.

    Args:
        start: Builds, starts and warms one stage's chain (default: ``models.registry``).
        prepare: With the default ``start``: called with each built chain before it starts
            (the server registers the stored voices with a TTS there).
    """

    def __init__(
        self, start: StageStarter | None = None, *, prepare: StagePrepare | None = None
    ) -> None:
        self._start = start or functools.partial(_start, prepare=prepare)
        self._entries: dict[str, _Entry] = {}
        self._lock = asyncio.Lock()

    def adopt(self, settings: Settings, engines: Engines) -> Keys:
        """Hold engines started elsewhere (handed to the app) under ``settings``' keys; they
        are shared like any other, kept even when no release holds them (a rollback to them
        loads nothing) and never closed by the pool. A tier the engines lack is not held."""
        tiers = engines.router.tiers if engines.router is not None else {}
        keys: dict[str, str] = {}
        for slot, key in keys_of(settings).items():
            engine = getattr(engines, slot, None) if slot in STAGES else tiers.get(slot[4:])
            if engine is None:
                continue
            keys[slot] = key
            entry = self._entries.get(key)
            if entry is None:
                self._entries[key] = _Entry(engine, 1, owned=False)
            else:
                entry.users += 1
        return keys

    async def acquire(self, settings: Settings) -> tuple[Engines, Keys]:
        """The engines of ``settings`` (every LLM tier and its router included): shared where
        a chain of the same key is held, the missing ones started (concurrently) and warmed.

        Raises:
            VoxlineError: a missing chain could not start (nothing is left held).
        """
        needed = slots(settings)
        keys = {slot: engine_key(built, stage) for slot, (stage, built) in needed.items()}
        async with self._lock:
            held = [slot for slot in needed if keys[slot] in self._entries]
            for slot in held:  # counted before any await: nobody closes them meanwhile
                self._entries[keys[slot]].users += 1
            missing: dict[str, tuple[Stage, Settings]] = {}  # key -> how to build it, once
            for slot, (stage, built) in needed.items():
                if slot not in held:
                    missing.setdefault(keys[slot], (stage, built))
            results = await asyncio.gather(
                *(self._start(stage, built) for stage, built in missing.values()),
                return_exceptions=True,
            )
            failure = next((r for r in results if isinstance(r, BaseException)), None)
            if failure is not None:
                started = [r for r in results if not isinstance(r, BaseException)]
                await asyncio.gather(*(e.aclose() for e in started), return_exceptions=True)
                for slot in held:
                    self._entries[keys[slot]].users -= 1
                await self._close(self._unused())
                raise failure
            for key, engine in zip(missing, results, strict=True):
                assert not isinstance(engine, BaseException)
                self._entries[key] = _Entry(engine, 0, owned=True)
            for slot in needed:
                if slot not in held:
                    self._entries[keys[slot]].users += 1
        picked = {slot: self._entries[keys[slot]].engine for slot in needed}
        default = settings.router.default_tier
        tiers = {default: picked["llm"]}
        tiers.update({slot[4:]: e for slot, e in picked.items() if slot.startswith("llm.")})
        engines = Engines(
            picked["stt"],  # type: ignore[arg-type]
            picked["llm"],  # type: ignore[arg-type]
            picked["tts"],  # type: ignore[arg-type]
            router_of(settings, tiers),  # type: ignore[arg-type]
        )
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
