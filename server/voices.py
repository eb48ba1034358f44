"""Voices as a service: reference clips uploaded through the API, kept in the state store and
spoken by the GPT-SoVITS backend of the TTS chain.

A voice is a 3-10 s clip, what it says and its language. ``POST /v1/audio/voices``
(``server.routes_voices``) checks the cheap things first (a GPT-SoVITS backend exists, the
transcript is not empty, the language is one upstream speaks, the key owns fewer than
``voices.max_per_key``, the clip fits ``voices.max_bytes``), then registers the clip with the
backend, which decodes it and checks its length; only then are the clip (a blob) and its
description (a ``voice`` document) stored. A refusal leaves the store as it was.

Where things live:

- the state store is the truth: ``store.documents("voice")`` (id, owner, name, transcript,
  language, seconds, blob id) and ``store.blobs`` (the clip as uploaded). On start the server
  registers every stored voice with the backend *before* the chain starts (a GPT-SoVITS
  backend starts only with a voice);
- the backend's voice book holds what this process can speak. A speech request naming a stored
  voice reads its document (one indexed row), so a voice deleted by another replica is refused
  here too, and one uploaded there is registered here on first use;
- ownership: a voice belongs to the API key that uploaded it (``server.identity``). Only that
  key sees it (list, get), speaks with it and deletes it; a key with the ``admin`` scope sees
  all; while auth is off (no key exists, loopback clients only) every caller does. To any other
  key the voice does not exist: 404 on get and delete, "unknown voice" on speech, and it is
  left out of every list and error message.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from models.registry import Engines
from models.tts_gpt_sovits import GptSovitsTTS
from pipeline.errors import AudioDecodeError, InvalidInput, VoxlineError
from pipeline.fallback_core import Chain
from pipeline.settings import VoicesSettings
from pipeline.stages import TTS
from server.identity import Identity
from store import Document, NotFound, Store

log = logging.getLogger("voxline.server.voices")

KIND = "voice"
"""The documents' kind in the store."""
_READY = "ready"
_ID = re.compile(r"voice_[0-9a-f]{24}")


def is_voice_id(name: str) -> bool:
    """Whether ``name`` has the shape of a stored voice's id (``voice_`` + 24 hex digits)."""
    return _ID.fullmatch(name) is not None


def can_see(who: Identity | None, owner: str | None) -> bool:
    """Whether ``who`` may see, speak with and delete a voice owned by ``owner``: its owner, a
    key with the ``admin`` scope, or anyone while auth is off (``who`` is ``None``)."""
    return who is None or "admin" in who.scopes or owner == who.key_id


def cloning_backend(tts: TTS) -> GptSovitsTTS | None:
    """The GPT-SoVITS backend of a TTS (chain), or ``None``: only it speaks uploaded voices."""
    backends = tts.backends if isinstance(tts, Chain) else (tts,)
    return next((b for b in backends if isinstance(b, GptSovitsTTS)), None)


@dataclass(frozen=True, slots=True)
class StoredVoice:
    """A voice as the store keeps it."""

    id: str
    name: str
    owner: str | None
    """The key id that uploaded it (``None``: uploaded while auth was off)."""
    transcript: str
    language: str
    seconds: float
    """Length of the reference clip."""
    blob_id: str
    """The clip, as uploaded."""
    created_at: float

    @classmethod
    def of(cls, doc: Document) -> StoredVoice:
        """The voice a stored document describes."""
        p = doc.payload
        return cls(
            doc.id,
            str(p["name"]),
            p.get("owner"),
            str(p["transcript"]),
            str(p["language"]),
            float(p["seconds"]),
            str(p["blob_id"]),
            doc.created_at,
        )

    def payload(self) -> dict[str, Any]:
        """The document's payload."""
        return {
            "name": self.name,
            "owner": self.owner,
            "transcript": self.transcript,
            "language": self.language,
            "seconds": self.seconds,
            "blob_id": self.blob_id,
        }

    def to_json(self) -> dict[str, Any]:
        """The voice object of the API (an item of ``GET /v1/audio/voices``)."""
        return {
            "id": self.id,
            "object": "voice",
            "type": "audio_sample",
            "name": self.name,
            "language": self.language,
            "transcript": self.transcript,
            "seconds": round(self.seconds, 3),
            "created_at": int(self.created_at),
        }


def _unsupported(tts: TTS) -> InvalidInput:
    return InvalidInput(
        f"uploaded voices need the GPT-SoVITS TTS engine, and this server's TTS ({tts.name}) has"
        " none: set VOXLINE_TTS__ENGINE=gpt_sovits or put GPT-SoVITS in VOXLINE_TTS__CHAIN"
        " (docs/gpt_sovits.md)",
        param="file",
        code="voices_unsupported",
    )


def _limit_reached(owned: int) -> InvalidInput:
    return InvalidInput(
        f"this key owns {owned} voices, the most allowed (voices.max_per_key): delete one first",
        param="file",
        code="voice_limit_reached",
    )


def _preview(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


class VoiceService:
    """Uploaded voices: the store's documents and blobs, and the backend's voice book.

    Args:
        store: The state store.
        settings: The ``voices`` settings section.
    """

    def __init__(self, store: Store, settings: VoicesSettings) -> None:
        self.settings = settings
        self._store = store
        self._docs = store.documents(KIND)
        self._owners: dict[str, str | None] = {}  # stored voices registered here, by id
        # The backend's voice book is changed from worker threads (decoding a clip blocks): one
        # change at a time. A threading lock, not an asyncio one: apps and tests run on
        # several event loops.
        self._book_lock = threading.Lock()
        # A key's count of voices and the save of its next one happen under that key's lock,
        # so concurrent uploads to this process never pass voices.max_per_key (threading
        # locks, for the same reason). Across processes sharing one store this is not atomic
        # (the store has no conditional insert): uploads racing on N replicas may leave a key
        # up to N - 1 voices over the limit.
        self._owner_locks: dict[str | None, threading.Lock] = {}
        self._owner_locks_lock = threading.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()

    # -- what a caller may name ------------------------------------------------------------

    def visible(self, voices: Sequence[str], who: Identity | None) -> tuple[str, ...]:
        """``voices`` (a TTS's) without the stored voices ``who`` may not see."""
        return tuple(v for v in voices if v not in self._owners or can_see(who, self._owners[v]))

    async def check_voice(self, engines: Engines, who: Identity | None, voice: str | None) -> None:
        """Refuse a voice ``who`` may not speak with; register a stored one this process does
        not hold yet (uploaded to another replica). Call before synthesizing.

        Raises:
            InvalidInput: an unknown voice (or another key's), or a stored voice while the TTS
                has no GPT-SoVITS backend.
        """
        if voice is None:
            return
        tts = engines.tts
        if is_voice_id(voice):
            doc = await asyncio.to_thread(self._docs.get, voice)
            if doc is None and voice in self._owners:  # deleted through another replica
                await self._forget(engines, voice)
            if doc is not None and can_see(who, doc.payload.get("owner")):
                backend = cloning_backend(tts)
                if backend is None:
                    raise _unsupported(tts)
                if voice not in backend.capabilities.voices:
                    await self._load(backend, StoredVoice.of(doc))
                    _refresh(engines)
                return
        elif voice in tts.capabilities.voices or not tts.capabilities.voices:
            return  # a voice of the engine's own (an empty list: the engine takes any name)
        known = self.visible(tts.capabilities.voices, who)
        raise InvalidInput(
            f"unknown voice {voice[:64]!r}; available: {_preview(known)}",
            param="voice",
            code="unknown_voice",
        )

    # -- the API's operations --------------------------------------------------------------

    async def create(
        self,
        engines: Engines,
        who: Identity | None,
        clip: bytes,
        *,
        transcript: str,
        language: str,
        name: str,
        content_type: str,
    ) -> StoredVoice:
        """Register and store an uploaded voice (see the module docstring for the order).

        Raises:
            InvalidInput: no GPT-SoVITS backend, an empty or too long transcript, a language
                upstream does not speak, too many voices for this key, a clip too large (413),
                not decodable or not 3-10 s long.
            StoreError: the store failed (nothing is kept).
        """
        backend = cloning_backend(engines.tts)
        if backend is None:
            raise _unsupported(engines.tts)
        transcript = transcript.strip()
        if not transcript:
            raise InvalidInput(
                "transcript is empty: say what the clip says",
                param="transcript",
                code="invalid_value",
            )
        if len(transcript) > self.settings.max_transcript_chars:
            raise InvalidInput(
                f"transcript is {len(transcript)} characters; the limit is "
                f"{self.settings.max_transcript_chars}",
                param="transcript",
                code="invalid_value",
            )
        languages = backend.capabilities.languages
        if language not in languages:
            raise InvalidInput(
                f"unsupported language {language[:32]!r}; GPT-SoVITS {backend.settings.version}"
                f" speaks: {', '.join(languages)}",
                param="language",
                code="unsupported_language",
            )
        if len(clip) > self.settings.max_bytes:
            raise AudioDecodeError(
                f"the clip is {len(clip)} bytes; the limit is {self.settings.max_bytes}",
                param="file",
                code="audio_too_large",
            )
        owner = who.key_id if who is not None else None
        owned = await asyncio.to_thread(self._count, owner)
        if owned >= self.settings.max_per_key:  # the common case, refused before decoding
            raise _limit_reached(owned)
        voice_id = "voice_" + secrets.token_hex(12)
        seconds = await asyncio.to_thread(
            self._register, backend, voice_id, clip, transcript, language
        )
        try:
            voice = await asyncio.to_thread(
                self._save, voice_id, clip, content_type, owner, name, transcript, language, seconds
            )
        except BaseException:
            await asyncio.to_thread(self._unregister, backend, voice_id)
            raise
        self._owners[voice_id] = owner
        _refresh(engines)
        self._bring_up(engines, backend)
        log.info("voice %s added (%.1f s, %s)", voice_id, seconds, language)
        return voice

    async def listed(self, who: Identity | None) -> list[StoredVoice]:
        """The stored voices ``who`` may see, oldest first."""
        docs = await asyncio.to_thread(self._all)
        return [v for v in map(StoredVoice.of, docs) if can_see(who, v.owner)]

    async def get(self, who: Identity | None, voice_id: str) -> StoredVoice:
        """A stored voice ``who`` may see.

        Raises:
            NotFound: no such voice, or another key's.
        """
        doc = await asyncio.to_thread(self._docs.get, voice_id)
        if doc is None or not can_see(who, doc.payload.get("owner")):
            raise NotFound(f"no voice {voice_id[:64]!r}")
        return StoredVoice.of(doc)

    async def delete(self, engines: Engines | None, who: Identity | None, voice_id: str) -> None:
        """Delete a stored voice: its document, its clip, and its registration here (requests
        already speaking in it finish).

        Raises:
            NotFound: no such voice, or another key's.
        """
        voice = await self.get(who, voice_id)
        await asyncio.to_thread(self._drop, voice)
        if engines is not None:
            await self._forget(engines, voice_id)
        self._owners.pop(voice_id, None)
        log.info("voice %s deleted", voice_id)

    # -- start and stop --------------------------------------------------------------------

    async def restore(self, engines: Engines) -> int:
        """Register every stored voice with the engines' GPT-SoVITS backend (before the chain
        starts, or with engines that already run); a voice that no longer registers (a model
        version without its language) is logged and skipped. Returns how many were added."""
        return await self.restore_tts(engines.tts)

    async def restore_tts(self, tts: TTS) -> int:
        """``restore`` for one TTS chain (a release's, before the engine pool starts it)."""
        backend = cloning_backend(tts)
        docs = await asyncio.to_thread(self._all)
        if backend is None:
            if docs:
                log.warning(
                    "%d stored voice(s) are not served: the TTS has no GPT-SoVITS backend",
                    len(docs),
                )
            return 0
        added = 0
        for voice in map(StoredVoice.of, docs):
            if voice.id in backend.capabilities.voices:
                self._owners[voice.id] = voice.owner
                continue
            try:
                await self._load(backend, voice)
            except VoxlineError as exc:
                log.warning("stored voice %s was not registered: %s", voice.id, exc)
                continue
            added += 1
        _refresh_tts(tts)
        if docs:
            log.info("%d stored voice(s) registered with %s", added, backend.name)
        return added

    async def aclose(self) -> None:
        """Stop the background starts of backends (``create``)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- helpers ---------------------------------------------------------------------------

    async def _load(self, backend: GptSovitsTTS, voice: StoredVoice) -> None:
        clip = await asyncio.to_thread(self._store.blobs.read, voice.blob_id)
        await asyncio.to_thread(
            self._register, backend, voice.id, clip, voice.transcript, voice.language
        )
        self._owners[voice.id] = voice.owner

    async def _forget(self, engines: Engines, voice_id: str) -> None:
        backend = cloning_backend(engines.tts)
        if backend is not None:
            await asyncio.to_thread(self._unregister, backend, voice_id)
            _refresh(engines)
        self._owners.pop(voice_id, None)

    def _bring_up(self, engines: Engines, backend: GptSovitsTTS) -> None:
        """A GPT-SoVITS backend that could not start for want of a voice starts now, in the
        background (its workers load and warm up: seconds to a minute), not at its next probe."""
        chain = engines.tts
        if backend.pool_size or not isinstance(chain, Chain):
            return
        task: asyncio.Task[bool] = asyncio.create_task(
            chain.recover(backend), name=f"start {backend.name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _register(
        self, backend: GptSovitsTTS, voice_id: str, clip: bytes, transcript: str, language: str
    ) -> float:
        """Decode, check and register the clip (blocking); its length in seconds."""
        import soundfile  # local: only registration reads audio files

        with self._book_lock:
            voice = backend.add_voice_clip(voice_id, clip, transcript=transcript, language=language)
        return float(soundfile.info(str(voice.ref_audio)).duration)

    def _unregister(self, backend: GptSovitsTTS, voice_id: str) -> None:
        with self._book_lock:
            backend.remove_voice(voice_id)

    def _save(
        self,
        voice_id: str,
        clip: bytes,
        content_type: str,
        owner: str | None,
        name: str,
        transcript: str,
        language: str,
        seconds: float,
    ) -> StoredVoice:
        """Store the voice, unless ``owner`` has ``max_per_key`` voices by now: counted again
        under the owner's lock (other uploads may have been saved since the first count)."""
        with self._owner_locks_lock:
            lock = self._owner_locks.setdefault(owner, threading.Lock())
        with lock:
            owned = self._count(owner)
            if owned >= self.settings.max_per_key:
                raise _limit_reached(owned)
            blob = self._store.blobs.put(
                clip, content_type=content_type, max_bytes=self.settings.max_bytes
            )
            voice = StoredVoice(
                voice_id, name, owner, transcript, language, seconds, blob.id, blob.created_at
            )
            try:
                doc = self._docs.create(voice_id, voice.payload(), status=_READY)
            except BaseException:
                self._store.blobs.delete(blob.id)
                raise
        return StoredVoice.of(doc)

    def _drop(self, voice: StoredVoice) -> None:
        self._docs.delete(voice.id)  # first: a voice without its clip must never be listed
        self._store.blobs.delete(voice.blob_id)

    def _all(self) -> list[Document]:
        docs: list[Document] = []
        while page := self._docs.list(limit=500, offset=len(docs)):
            docs += page
        return docs

    def _count(self, owner: str | None) -> int:
        return sum(1 for doc in self._all() if doc.payload.get("owner") == owner)


def _refresh(engines: Engines) -> None:
    """A chain's voices are its backends': derive them again after a change."""
    _refresh_tts(engines.tts)


def _refresh_tts(tts: TTS) -> None:
    if isinstance(tts, Chain):
        tts.refresh_capabilities()
