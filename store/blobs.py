"""Blobs: binary payloads (uploads, voice reference clips, job inputs and results) in the
database, so every replica sharing it sees them.

A blob is stored as 1 MiB chunks: writing streams the source one chunk at a time (a 60 MB
upload never needs more than a chunk in memory besides the driver's copy), and reading
yields chunks. Each chunk is written in its own short transaction, so a large upload never
holds SQLite's single write lock for long (rate-limit counts and charges go on between its
chunks). A blob becomes visible only when its last transaction records its size and
SHA-256; until then (or forever, if the writer died) it reads as absent, and
:meth:`Blobs.purge_incomplete` removes the leftovers. Blobs are immutable: a new version is a
new id.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import sqlalchemy as sa

from pipeline.errors import InvalidInput
from store.database import Database
from store.errors import NotFound
from store.schema import blob_chunks, blobs

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored blob's description."""

    id: str
    content_type: str
    size: int
    sha256: str
    created_at: float


def _pieces(source: bytes | IO[bytes] | Iterable[bytes]) -> Iterator[bytes]:
    """``source`` re-cut into chunks of at most :data:`CHUNK_BYTES`."""
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for start in range(0, len(view), CHUNK_BYTES):
            yield bytes(view[start : start + CHUNK_BYTES])
        return
    if hasattr(source, "read"):
        while piece := source.read(CHUNK_BYTES):
            yield piece
        return
    buffer = bytearray()
    for part in source:
        buffer += part
        while len(buffer) >= CHUNK_BYTES:
            yield bytes(buffer[:CHUNK_BYTES])
            del buffer[:CHUNK_BYTES]
    if buffer:
        yield bytes(buffer)


def _info(row: Any) -> BlobInfo:
    return BlobInfo(row.id, row.content_type, row.size, row.sha256, row.created_at)


class Blobs:
    """Put, read and delete binary payloads.

    Args:
        db: The database.
        clock: Unix time source.
    """

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def put(
        self,
        source: bytes | IO[bytes] | Iterable[bytes],
        *,
        content_type: str = "application/octet-stream",
        blob_id: str | None = None,
        max_bytes: int | None = None,
    ) -> BlobInfo:
        """Store ``source`` (bytes, a binary file, or an iterable of byte strings).

        Args:
            source: The payload; files and iterables are read one chunk at a time.
            content_type: Its media type.
            blob_id: The id to store it under (default: a new random ``blob_...`` id).
            max_bytes: Refuse a larger payload (nothing is kept).

        Raises:
            Conflict: ``blob_id`` is taken.
            InvalidInput: The payload is larger than ``max_bytes``.
        """
        blob_id = blob_id or "blob_" + secrets.token_hex(12)
        created = self._clock()
        with self._db.write() as conn:  # reserves the id: a taken one fails here, at once
            conn.execute(
                blobs.insert().values(
                    id=blob_id, content_type=content_type, size=-1, sha256="", created_at=created
                )
            )
        digest = hashlib.sha256()
        size = 0
        try:
            for seq, piece in enumerate(_pieces(source)):
                size += len(piece)
                if max_bytes is not None and size > max_bytes:
                    raise InvalidInput(
                        f"the payload is larger than {max_bytes} bytes", code="file_too_large"
                    )
                digest.update(piece)
                with self._db.write() as conn:
                    conn.execute(blob_chunks.insert().values(blob_id=blob_id, seq=seq, data=piece))
            with self._db.write() as conn:
                conn.execute(
                    blobs.update()
                    .where(blobs.c.id == blob_id)
                    .values(size=size, sha256=digest.hexdigest())
                )
        except BaseException:
            self.delete(blob_id)
            raise
        return BlobInfo(blob_id, content_type, size, digest.hexdigest(), created)

    def info(self, blob_id: str) -> BlobInfo | None:
        """The blob's description, or ``None`` if there is no complete blob with this id."""
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(blobs).where(blobs.c.id == blob_id, blobs.c.size >= 0)
            ).first()
        return None if row is None else _info(row)

    def chunks(self, blob_id: str) -> Iterator[bytes]:
        """The blob's bytes, one chunk per short read (nothing is held open between them).

        Raises:
            NotFound: No complete blob has this id, or it was deleted while being read.
        """
        info = self.info(blob_id)
        if info is None:
            raise NotFound(f"no blob {blob_id!r}")
        seq, sent = 0, 0
        while sent < info.size:
            with self._db.read() as conn:
                data = conn.execute(
                    sa.select(blob_chunks.c.data).where(
                        blob_chunks.c.blob_id == blob_id, blob_chunks.c.seq == seq
                    )
                ).scalar()
            if data is None:
                raise NotFound(f"blob {blob_id!r} was deleted while being read")
            sent += len(data)
            seq += 1
            yield bytes(data)

    def read(self, blob_id: str) -> bytes:
        """The whole blob in memory (for small ones; stream large ones with :meth:`chunks`).

        Raises:
            NotFound: No complete blob has this id.
        """
        return b"".join(self.chunks(blob_id))

    def delete(self, blob_id: str) -> bool:
        """Delete a blob and its chunks; ``False`` if there was none."""
        with self._db.write() as conn:
            conn.execute(blob_chunks.delete().where(blob_chunks.c.blob_id == blob_id))
            return bool(conn.execute(blobs.delete().where(blobs.c.id == blob_id)).rowcount)

    def purge_incomplete(self, older_than_s: float = 3600.0) -> int:
        """Delete blobs whose writer never finished (it died mid-upload) and that are older
        than ``older_than_s`` (a younger one may still be being written)."""
        cutoff = self._clock() - older_than_s
        with self._db.write() as conn:
            dead = sa.select(blobs.c.id).where(blobs.c.size < 0, blobs.c.created_at < cutoff)
            conn.execute(blob_chunks.delete().where(blob_chunks.c.blob_id.in_(dead)))
            return int(
                conn.execute(
                    blobs.delete().where(blobs.c.size < 0, blobs.c.created_at < cutoff)
                ).rowcount
            )
