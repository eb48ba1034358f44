"""Blobs: chunked, streamed, invisible until complete."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from pipeline.errors import InvalidInput
from store import Conflict, NotFound, Store
from store.blobs import CHUNK_BYTES
from store.schema import blob_chunks
from tests.store.conftest import Clock


def test_a_blob_round_trips_from_bytes_files_and_iterables(store: Store) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 123)
    pieces = [data[:5], data[5 : CHUNK_BYTES + 9], data[CHUNK_BYTES + 9 :]]
    for source in (data, io.BytesIO(data), iter(pieces)):
        info = store.blobs.put(source, content_type="audio/wav")
        assert info.size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
        assert store.blobs.info(info.id) == info
        assert store.blobs.read(info.id) == data
        assert [len(c) for c in store.blobs.chunks(info.id)] == [CHUNK_BYTES, CHUNK_BYTES, 123]
    empty = store.blobs.put(b"")
    assert store.blobs.read(empty.id) == b""


def test_ids_are_unique_and_deleted_blobs_are_gone(store: Store) -> None:
    info = store.blobs.put(b"abc", blob_id="voice_1")
    with pytest.raises(Conflict):
        store.blobs.put(b"other", blob_id="voice_1")
    assert store.blobs.read("voice_1") == b"abc"
    assert store.blobs.delete(info.id)
    assert not store.blobs.delete(info.id)
    assert store.blobs.info(info.id) is None
    with pytest.raises(NotFound):
        store.blobs.read(info.id)


def test_an_oversized_or_failing_upload_leaves_nothing(store: Store) -> None:
    with pytest.raises(InvalidInput):
        store.blobs.put(b"x" * (CHUNK_BYTES + 1), blob_id="big", max_bytes=CHUNK_BYTES)
    assert store.blobs.info("big") is None

    def broken() -> Iterator[bytes]:
        yield b"x" * CHUNK_BYTES
        raise OSError("client went away")

    with pytest.raises(OSError):
        store.blobs.put(broken(), blob_id="torn")
    assert store.blobs.info("torn") is None
    assert store.blobs.put(b"again", blob_id="torn").size == 5  # the id is free again


def test_an_unfinished_upload_is_invisible_and_purged(store: Store, clock: Clock) -> None:
    seen: list[object] = []

    def watching() -> Iterator[bytes]:
        for part in (b"x" * CHUNK_BYTES, b"y"):
            seen.append(store.blobs.info("slow"))
            yield part

    store.blobs.put(watching(), blob_id="slow")
    assert seen == [None, None]  # never visible before its last transaction

    # a writer killed mid-upload leaves its reserved row and first chunks behind
    def killed() -> Iterator[bytes]:
        yield b"x" * CHUNK_BYTES
        yield b"x" * CHUNK_BYTES
        raise KeyboardInterrupt

    cleanup = store.blobs.delete
    store.blobs.delete = lambda blob_id: False  # type: ignore[method-assign]  # it died: no cleanup
    with pytest.raises(KeyboardInterrupt):
        store.blobs.put(killed(), blob_id="dead")
    store.blobs.delete = cleanup  # type: ignore[method-assign]
    assert store.blobs.info("dead") is None
    assert store.blobs.purge_incomplete(3600) == 0  # it might still be uploading
    clock.advance(3601)
    assert store.blobs.purge_incomplete(3600) == 1
    assert store.blobs.info("slow") is not None  # complete blobs are kept
    with store.db.read() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(blob_chunks)).scalar_one()
    assert left == 2  # the chunks of "slow" only


def test_a_60_mb_blob_streams_in_chunks(store: Store, tmp_path: object) -> None:
    size = 60 * 1024 * 1024
    block = os.urandom(CHUNK_BYTES)

    class Source(io.RawIOBase):
        """60 MB that never exist in memory at once."""

        def __init__(self) -> None:
            self.left = size

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            n = min(self.left, CHUNK_BYTES if n < 0 else n)
            self.left -= n
            return block[:n]

    tracemalloc.start()
    try:
        info = store.blobs.put(Source())  # type: ignore[arg-type]
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        total = 0
        for chunk in store.blobs.chunks(info.id):
            digest.update(chunk)
            total += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == total == size and digest.hexdigest() == info.sha256
    # a few chunks at a time, never the whole blob (one copy alone would be 60 MB)
    assert put_peak < 12 * CHUNK_BYTES, put_peak
    assert read_peak < 12 * CHUNK_BYTES, read_peak
