"""Incremental encoders for audio that streams out while it is being synthesized.

One container per response, written to an output that cannot seek so muxers never hold bytes
back, and one soxr stream resampling every chunk so there are no clicks between phrases.
"""

from __future__ import annotations

import contextlib
import fractions
import struct
import threading
from collections.abc import Iterator

import numpy as np
import soxr

from pipeline.audio import _AV_FORMATS, ENCODE_FORMATS, to_pcm16
from pipeline.errors import InvalidInput
from pipeline.types import AudioChunk, Float32Array


def wav_stream_header(sample_rate: int) -> bytes:
    """A 16-bit mono wav header whose RIFF and data sizes say "unknown" (``0xFFFFFFFF``).

    A streamed wav cannot know its length when its first bytes leave, and buffering the whole
    clip to learn it would defeat streaming. FFmpeg, browsers and most players read such a file
    to its end; OpenAI's streamed wav is written the same way.
    """
    unknown = 0xFFFFFFFF
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", unknown, b"WAVE",
        b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16,
        b"data", unknown,
    )  # fmt: skip


class _Sink:
    """Where PyAV writes. No ``seek``: muxers see a stream and hold nothing back to patch."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class StreamEncoder:
    """Encode audio chunk by chunk into one file of ``fmt``, handing out bytes as they exist.

    For streamed speech: each phrase the TTS yields is encoded as it arrives, so a client hears
    the first phrase while later ones are still being synthesized. The stream is one container
    (concatenated mp3 or ogg files confuse players), and chunks pass through one soxr stream to
    ``sample_rate``, so chunk boundaries leave no clicks.

    - ``pcm``: raw 16-bit little-endian mono; ``wav``: ``wav_stream_header`` then the same.
    - ``flac``, ``mp3``, ``aac`` (ADTS): PyAV. ``opus``: PyAV in ogg at 48 kHz, the rate libopus
      needs, with an ogg page every 20 ms instead of every second so opus streams as promptly
      as the rest.

    Calls are sequential, except that ``close`` may run while ``encode`` runs in another thread
    (its consumer was cancelled): that ``encode`` then releases the codec when it ends.

    Args:
        fmt: One of ``ENCODE_FORMATS``.
        sample_rate: Output rate (ignored for opus, which is always 48 kHz).

    Raises:
        InvalidInput: a format we cannot encode.
    """

    def __init__(self, fmt: str, *, sample_rate: int) -> None:
        if fmt not in ENCODE_FORMATS:
            raise InvalidInput(
                f"cannot encode {fmt!r}; supported: {', '.join(ENCODE_FORMATS)}",
                param="response_format",
                code="unsupported_format",
            )
        forced = _AV_FORMATS[fmt][2] if fmt in _AV_FORMATS else None
        self.fmt = fmt
        self.sample_rate = forced or sample_rate
        self._in_rate: int | None = None
        self._resampler: soxr.ResampleStream | None = None
        self._header = wav_stream_header(self.sample_rate) if fmt == "wav" else b""
        self._samples = 0  # samples encoded so far: the next frame's pts
        self._guard = threading.Lock()  # held only to flip the flags below, never to encode
        self._busy = False
        self._closed = False
        self._close_pending = False
        self._sink = _Sink()
        self._container: object | None = None
        self._stream: object | None = None
        if fmt in _AV_FORMATS:
            self._open_av()

    def _open_av(self) -> None:
        import av

        container_name, codec, _ = _AV_FORMATS[self.fmt]
        options = {"page_duration": "20000"} if container_name == "ogg" else {}
        container = av.open(self._sink, mode="w", format=container_name, container_options=options)
        try:
            self._stream = container.add_stream(codec, rate=self.sample_rate, layout="mono")
        except (av.error.FFmpegError, ValueError) as exc:  # an FFmpeg build without the codec
            container.close()
            raise InvalidInput(
                f"cannot encode {self.fmt!r}: this server's FFmpeg lacks {codec} ({exc})",
                param="response_format",
                code="unsupported_format",
            ) from exc
        self._container = container

    @property
    def seconds(self) -> float:
        """Duration of the audio encoded so far, at the output rate."""
        return self._samples / self.sample_rate

    def encode(self, chunk: AudioChunk) -> bytes:
        """Add a chunk; returns the bytes of the file that are ready (possibly none yet)."""
        with self._working():
            return self._write(self._resample(chunk.samples, chunk.sample_rate))

    def finish(self) -> bytes:
        """Flush the resampler and the codec and close the file; returns its last bytes."""
        with self._working():
            out = self._write(self._resample(None, None))
            if self._container is not None:
                import av

                assert isinstance(self._stream, av.audio.stream.AudioStream)
                assert isinstance(self._container, av.container.OutputContainer)
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
                self._container.close()
                self._container = None
                out += self._sink.take()
            self._close_pending = True  # released on the way out of _working
            return self._take_header() + out

    def close(self) -> None:
        """Release the codec without finishing the file (idempotent; see the class docstring)."""
        with self._guard:
            if self._busy:
                self._close_pending = True  # the running call releases when it ends
                return
            self._closed = True
        self._release()

    @contextlib.contextmanager
    def _working(self) -> Iterator[None]:
        with self._guard:
            if self._closed:
                raise ValueError("the encoder is closed")
            self._busy = True
        try:
            yield
        finally:
            with self._guard:
                self._busy = False
                self._closed = self._close_pending
            if self._closed:
                self._release()

    def _release(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.close()  # type: ignore[attr-defined]

    def _take_header(self) -> bytes:
        header, self._header = self._header, b""
        return header

    def _resample(self, samples: Float32Array | None, rate: int | None) -> Float32Array:
        """Through one soxr stream per input rate; ``None`` flushes the stream's tail."""
        pieces: list[Float32Array] = []
        if rate != self._in_rate and self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            pieces.append(tail)
            self._resampler = None
        if samples is not None and rate is not None:
            if rate != self._in_rate:
                self._in_rate = rate
                if rate != self.sample_rate:
                    self._resampler = soxr.ResampleStream(
                        rate, self.sample_rate, 1, dtype="float32", quality="HQ"
                    )
            samples = np.ascontiguousarray(samples, dtype=np.float32)
            pieces.append(
                samples if self._resampler is None else self._resampler.resample_chunk(samples)
            )
        else:
            self._in_rate = None
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def _write(self, samples: Float32Array) -> bytes:
        if len(samples) == 0:
            return self._sink.take() if self._container is not None else b""
        pcm = to_pcm16(samples)
        pts, self._samples = self._samples, self._samples + len(pcm)
        if self._container is None:
            return self._take_header() + pcm.tobytes()
        import av

        assert isinstance(self._stream, av.audio.stream.AudioStream)
        assert isinstance(self._container, av.container.OutputContainer)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()
