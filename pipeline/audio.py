"""Audio in and out: bounded decoding of common formats, resampling, and encoders.

We decode with PyAV, whose wheels bundle FFmpeg, so wav, flac, ogg/opus/vorbis, mp3 and webm
decode on a fresh machine without system packages. Limits are enforced on what we actually
decode, frame by frame: the declared duration, channel count or rate in a header can lie, so we
stop as soon as the decoded samples pass ``max_seconds`` and check every frame's layout and rate.
Everything downstream sees mono float32 at the rate the caller asked for.
"""

from __future__ import annotations

import io
import wave
from typing import Literal

import numpy as np
import soxr

from pipeline.errors import AudioDecodeError, InvalidInput
from pipeline.settings import AudioLimits
from pipeline.types import AudioChunk, Float32Array

EncodeFormat = Literal["wav", "pcm", "flac", "mp3", "opus", "aac"]
ENCODE_FORMATS: tuple[str, ...] = ("wav", "pcm", "flac", "mp3", "opus", "aac")

# Containers and codecs for the compressed formats we write with PyAV.
_AV_FORMATS: dict[str, tuple[str, str, int | None]] = {
    # fmt: (container, codec, forced sample rate or None)
    "flac": ("flac", "flac", None),
    "mp3": ("mp3", "libmp3lame", None),
    "opus": ("ogg", "libopus", 48_000),  # libopus only takes 8/12/16/24/48 kHz
    "aac": ("adts", "aac", None),
}


def resample(chunk: AudioChunk, sample_rate: int) -> AudioChunk:
    """Resample to ``sample_rate`` (soxr, high quality); a no-op at the same rate."""
    if chunk.sample_rate == sample_rate or len(chunk.samples) == 0:
        return AudioChunk(chunk.samples, sample_rate) if len(chunk.samples) == 0 else chunk
    out = soxr.resample(chunk.samples, chunk.sample_rate, sample_rate, quality="HQ")
    return AudioChunk(np.ascontiguousarray(out, dtype=np.float32), sample_rate)


def to_pcm16(samples: Float32Array) -> np.ndarray:
    """Float32 in [-1, 1] to little-endian int16 (clipped)."""
    clipped = np.clip(samples, -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2")


def decode_pcm16(data: bytes, sample_rate: int) -> AudioChunk:
    """Raw little-endian 16-bit mono PCM to float32.

    Raises:
        InvalidInput: an odd number of bytes (not whole samples).
    """
    if len(data) % 2:
        raise InvalidInput("pcm16 audio must have an even number of bytes", code="invalid_audio")
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return AudioChunk(samples, sample_rate)


def decode_audio(data: bytes, *, sample_rate: int, limits: AudioLimits) -> AudioChunk:
    """Decode an audio file's bytes to mono float32 at ``sample_rate``.

    Raises:
        AudioDecodeError: not decodable audio, or a limit broken while decoding (``code`` says
            which: ``audio_too_large``, ``audio_too_long``, ``too_many_channels``,
            ``unsupported_sample_rate``, ``invalid_audio``, ``empty_audio``).
    """
    if len(data) > limits.max_bytes:
        raise AudioDecodeError(
            f"audio is {len(data)} bytes; the limit is {limits.max_bytes}",
            param="file",
            code="audio_too_large",
        )
    if not data:
        raise AudioDecodeError("audio is empty", param="file", code="empty_audio")
    import av  # deferred: PyAV loads FFmpeg's shared libraries

    max_samples = int(limits.max_seconds * sample_rate)
    pieces: list[np.ndarray] = []
    decoded = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioDecodeError("no audio stream found", param="file", code="invalid_audio")
            stream = container.streams.audio[0]
            _check_declared(stream, container, limits)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for frame in container.decode(stream):
                _check_frame(frame, limits)
                for out in resampler.resample(frame):
                    decoded += _append(pieces, out)
                if decoded > max_samples:
                    raise AudioDecodeError(
                        f"audio is longer than {limits.max_seconds:g} seconds",
                        param="file",
                        code="audio_too_long",
                    )
            for out in resampler.resample(None):
                decoded += _append(pieces, out)
    except AudioDecodeError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise AudioDecodeError(
            f"could not decode audio: {exc}", param="file", code="invalid_audio"
        ) from exc
    if decoded == 0:
        raise AudioDecodeError("audio has no samples", param="file", code="empty_audio")
    if decoded > max_samples:
        raise AudioDecodeError(
            f"audio is longer than {limits.max_seconds:g} seconds",
            param="file",
            code="audio_too_long",
        )
    samples = np.concatenate(pieces).astype(np.float32, copy=False)
    # FFmpeg's downmix adds each channel at -3 dB, so loud correlated stereo (or 5.1) passes full
    # scale; scale the clip back into [-1, 1] as AudioChunk promises, without clipping distortion.
    peak = float(np.abs(samples).max())
    if peak > 1.0:
        samples /= peak
    return AudioChunk(samples, sample_rate)


def _check_declared(stream: object, container: object, limits: AudioLimits) -> None:
    """Refuse what the file's own header says breaks a limit, before decoding a frame: a small
    file can declare an hour of 8-channel 192 kHz audio, seconds of CPU to decode just to find
    out. Frames are still checked as they come (a header can lie, or say nothing)."""
    codec = stream.codec_context  # type: ignore[attr-defined]
    channels, rate = codec.channels, codec.sample_rate
    if channels and rate:
        _check_format(channels, rate, limits)
    seconds = None
    if stream.duration is not None and stream.time_base:  # type: ignore[attr-defined]
        seconds = float(stream.duration * stream.time_base)  # type: ignore[attr-defined]
    elif container.duration is not None:  # type: ignore[attr-defined]
        seconds = container.duration / 1_000_000  # type: ignore[attr-defined]  # AV_TIME_BASE
    if seconds is not None and seconds > limits.max_seconds:
        raise AudioDecodeError(
            f"audio is longer than {limits.max_seconds:g} seconds (its header says"
            f" {seconds:.0f} s)",
            param="file",
            code="audio_too_long",
        )


def _check_frame(frame: object, limits: AudioLimits) -> None:
    channels = len(frame.layout.channels)  # type: ignore[attr-defined]
    _check_format(channels, frame.sample_rate, limits)  # type: ignore[attr-defined]


def _check_format(channels: int, rate: int | None, limits: AudioLimits) -> None:
    if channels > limits.max_channels:
        raise AudioDecodeError(
            f"audio has {channels} channels; the limit is {limits.max_channels}",
            param="file",
            code="too_many_channels",
        )
    if not rate or rate > limits.max_sample_rate:
        raise AudioDecodeError(
            f"audio sample rate {rate} Hz is not supported (limit {limits.max_sample_rate} Hz)",
            param="file",
            code="unsupported_sample_rate",
        )


def _append(pieces: list[np.ndarray], frame: object) -> int:
    samples = frame.to_ndarray().reshape(-1)  # type: ignore[attr-defined]
    pieces.append(samples)
    return len(samples)


def encode_wav(chunk: AudioChunk) -> bytes:
    """16-bit PCM mono wav."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(chunk.sample_rate)
        out.writeframes(to_pcm16(chunk.samples).tobytes())
    return buffer.getvalue()


def encode_audio(chunk: AudioChunk, fmt: str) -> bytes:
    """Encode a whole clip as ``fmt`` (one of ``ENCODE_FORMATS``).

    Raises:
        InvalidInput: a format we cannot encode.
    """
    if fmt == "wav":
        return encode_wav(chunk)
    if fmt == "pcm":
        return to_pcm16(chunk.samples).tobytes()
    if fmt not in _AV_FORMATS:
        raise InvalidInput(
            f"cannot encode {fmt!r}; supported: {', '.join(ENCODE_FORMATS)}",
            param="response_format",
            code="unsupported_format",
        )
    return _encode_av(chunk, fmt)


def _encode_av(chunk: AudioChunk, fmt: str) -> bytes:
    import av

    container_name, codec, forced_rate = _AV_FORMATS[fmt]
    if forced_rate is not None:
        chunk = resample(chunk, forced_rate)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_name) as container:
        stream = container.add_stream(codec, rate=chunk.sample_rate, layout="mono")
        assert isinstance(stream, av.audio.stream.AudioStream)
        pcm = to_pcm16(chunk.samples).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = chunk.sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def rms_dbfs(samples: Float32Array) -> float:
    """Root-mean-square level in dBFS (-inf for digital silence)."""
    if len(samples) == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20 * np.log10(rms) if rms > 0 else float("-inf")
