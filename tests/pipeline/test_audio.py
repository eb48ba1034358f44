"""Audio decoding, limits, resampling and encoders, on synthetic signals encoded in the test.

Test material is written with soundfile (wav, flac) or PyAV (mp3, ogg/opus, webm/opus) here,
independently of the encoders under test, so a decoder bug cannot hide behind a matching encoder
bug.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from pipeline.audio import (
    ENCODE_FORMATS,
    decode_audio,
    decode_pcm16,
    encode_audio,
    encode_wav,
    resample,
    to_pcm16,
)
from pipeline.errors import AudioDecodeError, InvalidInput
from pipeline.settings import AudioLimits
from pipeline.types import AudioChunk

LIMITS = AudioLimits()


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def band_energy(samples: np.ndarray, rate: int, freq: float, width: float = 20.0) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(spectrum[np.abs(freqs - freq) < width].sum() / spectrum.sum())


def sf_bytes(data: np.ndarray, rate: int, fmt: str, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, data, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def av_bytes(data: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    """Mono ``data`` encoded with PyAV (libopus is resampled to 48 kHz, its native rate)."""
    if codec == "libopus" and rate != 48_000:
        data = soxr.resample(data, rate, 48_000).astype(np.float32)
        rate = 48_000
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.audio.stream.AudioStream)
        pcm = (np.clip(data, -1, 1) * 32767).astype("<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def decode_error(data: bytes, limits: AudioLimits = LIMITS, rate: int = 16_000) -> AudioDecodeError:
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(data, sample_rate=rate, limits=limits)
    return info.value


# --- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "lossless"),
    [("wav", True), ("flac", True), ("mp3", False), ("ogg-opus", False), ("webm-opus", False)],
)
@pytest.mark.parametrize("target_rate", [16_000, 24_000])
def test_decode_formats_to_mono_float32_at_target_rate(
    fmt: str, lossless: bool, target_rate: int
) -> None:
    source_rate = 44_100
    original = sine(440, 1.5, source_rate)
    data = {
        "wav": lambda: sf_bytes(original, source_rate, "WAV"),
        "flac": lambda: sf_bytes(original, source_rate, "FLAC"),
        "mp3": lambda: av_bytes(original, source_rate, "mp3", "libmp3lame"),
        "ogg-opus": lambda: av_bytes(original, source_rate, "ogg", "libopus"),
        "webm-opus": lambda: av_bytes(original, source_rate, "webm", "libopus"),
    }[fmt]()

    chunk = decode_audio(data, sample_rate=target_rate, limits=LIMITS)

    assert chunk.sample_rate == target_rate
    assert chunk.samples.dtype == np.float32
    assert chunk.samples.ndim == 1
    # lossy codecs add encoder delay/padding (tens of ms); lossless must be sample exact
    assert chunk.duration == pytest.approx(1.5, abs=0.002 if lossless else 0.1)
    assert dominant_hz(chunk.samples, target_rate) == pytest.approx(440, abs=3)
    assert band_energy(chunk.samples, target_rate, 440) > 0.95
    assert np.abs(chunk.samples).max() == pytest.approx(0.5, abs=0.05)
    if lossless:
        expected = soxr.resample(original, source_rate, target_rate)
        n = min(len(expected), len(chunk.samples))
        assert np.corrcoef(expected[:n], chunk.samples[:n])[0, 1] > 0.999


def test_stereo_is_mixed_to_mono_keeping_both_channels() -> None:
    rate = 16_000
    stereo = np.stack([sine(440, 1, rate, 0.4), sine(1000, 1, rate, 0.4)], axis=1)

    chunk = decode_audio(sf_bytes(stereo, rate, "WAV"), sample_rate=rate, limits=LIMITS)

    assert chunk.samples.ndim == 1
    assert chunk.duration == pytest.approx(1.0)
    # a mix, not "take the left channel": both tones are there, at equal level
    e440 = band_energy(chunk.samples, rate, 440)
    e1000 = band_energy(chunk.samples, rate, 1000)
    assert e440 > 0.4
    assert e1000 > 0.4
    assert e440 == pytest.approx(e1000, rel=0.1)


def test_loud_correlated_stereo_stays_within_full_scale() -> None:
    # FFmpeg's downmix sums channels at -3 dB each: identical channels at 0.9 would reach 1.27
    rate = 16_000
    tone = sine(440, 1, rate, 0.9)

    chunk = decode_audio(
        sf_bytes(np.stack([tone, tone], axis=1), rate, "WAV"), sample_rate=rate, limits=LIMITS
    )

    assert np.abs(chunk.samples).max() <= 1.0
    assert np.abs(chunk.samples).max() > 0.8
    assert np.corrcoef(tone, chunk.samples)[0, 1] > 0.999


# --- limits ---------------------------------------------------------------------------------


def _wav_with_sizes(seconds: float, riff_size: int, data_size: int, rate: int = 16_000) -> bytes:
    """A canonical 44-byte-header wav of ``seconds`` whose RIFF and data size fields lie."""
    data = bytearray(encode_wav(AudioChunk(sine(440, seconds, rate), rate)))
    assert data[36:40] == b"data"  # canonical layout, so the offsets below are the size fields
    data[4:8] = struct.pack("<I", riff_size)
    data[40:44] = struct.pack("<I", data_size)
    return bytes(data)


@pytest.mark.parametrize("size", [0xFFFFFFFF, 0, 1_000_000_000])
def test_header_claiming_more_or_unknown_length_is_limited_by_decoded_samples(size: int) -> None:
    data = _wav_with_sizes(3.0, riff_size=size, data_size=size)

    # the bytes hold 3 s: that is what decodes, whatever the header says
    chunk = decode_audio(data, sample_rate=16_000, limits=LIMITS)
    assert chunk.duration == pytest.approx(3.0)

    # ...and that is what the limit is checked against (a 1,000,000,000-byte claim would be 8.7 h)
    error = decode_error(data, AudioLimits(max_seconds=1.0))
    assert error.code == "audio_too_long"
    assert error.param == "file"


def test_header_claiming_less_than_the_bytes_hold_decodes_only_the_declared_data() -> None:
    # FFmpeg's wav demuxer honours the data chunk size: the long tail past it is never decoded,
    # so it can neither blow a limit nor reach the caller
    data = _wav_with_sizes(3.0, riff_size=36 + 200, data_size=200)

    chunk = decode_audio(data, sample_rate=16_000, limits=AudioLimits(max_seconds=1.0))

    assert len(chunk.samples) == 100  # 200 bytes of 16-bit mono


def test_limit_applies_to_compressed_audio_without_a_length_header() -> None:
    rate = 16_000
    data = av_bytes(sine(440, 3, rate), rate, "ogg", "libopus")

    assert decode_error(data, AudioLimits(max_seconds=2.0)).code == "audio_too_long"
    assert decode_audio(data, sample_rate=rate, limits=AudioLimits(max_seconds=3.5)).duration > 2.9


def test_duration_exactly_at_the_limit_is_accepted() -> None:
    rate = 16_000
    data = sf_bytes(sine(440, 2.0, rate), rate, "WAV")

    assert decode_audio(data, sample_rate=rate, limits=AudioLimits(max_seconds=2.0)).duration == 2.0
    assert decode_error(data, AudioLimits(max_seconds=1.99)).code == "audio_too_long"


def test_max_bytes_is_checked_before_decoding() -> None:
    # garbage: were it decoded first, the code would be invalid_audio
    error = decode_error(os.urandom(2048), AudioLimits(max_bytes=1024))

    assert error.code == "audio_too_large"
    assert error.param == "file"
    valid = sf_bytes(sine(440, 1, 16_000), 16_000, "WAV")
    assert decode_error(valid, AudioLimits(max_bytes=len(valid) - 1)).code == "audio_too_large"
    decode_audio(valid, sample_rate=16_000, limits=AudioLimits(max_bytes=len(valid)))


def test_too_many_channels() -> None:
    rate = 16_000
    tone = sine(440, 0.5, rate, 0.1)

    ten = np.tile(tone[:, None], (1, 10))
    assert decode_error(sf_bytes(ten, rate, "WAV")).code == "too_many_channels"
    assert decode_error(sf_bytes(ten, rate, "WAV"), AudioLimits(max_channels=8)).param == "file"
    eight = np.tile(tone[:, None], (1, 8))
    chunk = decode_audio(sf_bytes(eight, rate, "WAV"), sample_rate=rate, limits=LIMITS)
    assert chunk.duration == pytest.approx(0.5)
    assert np.abs(chunk.samples).max() <= 1.0
    stereo = sf_bytes(np.stack([tone, tone], axis=1), rate, "WAV")
    assert decode_error(stereo, AudioLimits(max_channels=1)).code == "too_many_channels"


def test_sample_rate_above_the_limit() -> None:
    high = sf_bytes(sine(440, 0.25, 384_000), 384_000, "WAV")
    assert decode_error(high).code == "unsupported_sample_rate"

    cd = sf_bytes(sine(440, 0.25, 44_100), 44_100, "WAV")
    assert decode_error(cd, AudioLimits(max_sample_rate=16_000)).code == "unsupported_sample_rate"
    at_limit = sf_bytes(sine(440, 0.25, 192_000), 192_000, "WAV")
    assert decode_audio(at_limit, sample_rate=16_000, limits=LIMITS).duration == pytest.approx(0.25)


@pytest.mark.parametrize(
    "data",
    [os.urandom(4096), b"this is not audio at all " * 40, b"\x00" * 1000, b"RIFF"],
    ids=["random", "text", "zeros", "riff-magic-only"],
)
def test_garbage_is_invalid_audio(data: bytes) -> None:
    error = decode_error(data)

    assert isinstance(error, InvalidInput)
    assert error.code == "invalid_audio"
    assert error.param == "file"


def test_container_without_an_audio_stream_is_invalid_audio() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="webm") as out:
        stream = out.add_stream("libvpx", rate=10)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)

    assert decode_error(buffer.getvalue()).code == "invalid_audio"


def test_empty_input_and_a_file_without_samples_are_empty_audio() -> None:
    assert decode_error(b"").code == "empty_audio"
    assert decode_error(sf_bytes(np.zeros(0, np.float32), 16_000, "WAV")).code == "empty_audio"


# --- raw pcm, encoders ----------------------------------------------------------------------


def test_decode_pcm16() -> None:
    chunk = decode_pcm16(struct.pack("<4h", 0, 16384, -32768, 32767), 8_000)

    assert chunk.sample_rate == 8_000
    assert chunk.samples.dtype == np.float32
    np.testing.assert_allclose(chunk.samples, [0.0, 0.5, -1.0, 32767 / 32768])


def test_decode_pcm16_rejects_an_odd_byte_count() -> None:
    with pytest.raises(InvalidInput):
        decode_pcm16(b"\x00\x01\x02", 16_000)


def test_to_pcm16_scales_and_clips() -> None:
    out = to_pcm16(np.array([0.0, 0.5, 1.0, -1.0, 2.5, -7.0], dtype=np.float32))

    assert out.dtype == np.dtype("<i2")
    assert out.tolist() == [0, 16384, 32767, -32767, 32767, -32767]


def test_encode_wav_is_16_bit_mono_at_the_chunk_rate() -> None:
    tone = sine(440, 0.5, 22_050)

    data, rate = sf.read(io.BytesIO(encode_wav(AudioChunk(tone, 22_050))), dtype="float32")

    assert rate == 22_050
    assert data.ndim == 1
    assert sf.info(io.BytesIO(encode_wav(AudioChunk(tone, 22_050)))).subtype == "PCM_16"
    np.testing.assert_allclose(data, tone, atol=1 / 32767)


_MAGIC: dict[str, Callable[[bytes], bool]] = {
    "wav": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WAVE",
    "flac": lambda b: b[:4] == b"fLaC",
    "mp3": lambda b: b[:3] == b"ID3" or (b[0] == 0xFF and b[1] & 0xE0 == 0xE0),
    "opus": lambda b: b[:4] == b"OggS" and b"OpusHead" in b[:64],
    "aac": lambda b: b[0] == 0xFF and b[1] & 0xF6 == 0xF0,  # ADTS sync word, layer 0
}


@pytest.mark.parametrize("fmt", ENCODE_FORMATS)
def test_encode_audio_round_trips(fmt: str) -> None:
    rate = 24_000
    tone = sine(440, 1.0, rate)

    data = encode_audio(AudioChunk(tone, rate), fmt)

    if fmt == "pcm":
        assert len(data) == 2 * len(tone)
        chunk = decode_pcm16(data, rate)
    else:
        assert _MAGIC[fmt](data), f"{fmt} output does not start like a {fmt} file"
        chunk = decode_audio(data, sample_rate=rate, limits=LIMITS)
    lossless = fmt in {"wav", "pcm", "flac"}
    assert chunk.duration == pytest.approx(1.0, abs=0.001 if lossless else 0.1)
    assert dominant_hz(chunk.samples, rate) == pytest.approx(440, abs=3)
    assert band_energy(chunk.samples, rate, 440) > 0.95
    if lossless:
        np.testing.assert_allclose(chunk.samples, tone, atol=2 / 32767)


def test_encode_audio_unknown_format() -> None:
    with pytest.raises(InvalidInput) as info:
        encode_audio(AudioChunk(sine(440, 0.1, 16_000), 16_000), "wma")

    assert info.value.param == "response_format"
    assert not isinstance(info.value, AudioDecodeError)


# --- resampling -----------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "dst"), [(16_000, 24_000), (44_100, 16_000), (22_050, 48_000)])
def test_resample_changes_length_by_the_ratio_and_keeps_the_frequency(src: int, dst: int) -> None:
    chunk = AudioChunk(sine(440, 1.0, src), src)

    out = resample(chunk, dst)

    assert out.sample_rate == dst
    assert out.samples.dtype == np.float32
    assert abs(len(out.samples) - len(chunk.samples) * dst / src) <= 1
    assert dominant_hz(out.samples, dst) == pytest.approx(440, abs=2)
    assert np.abs(out.samples).max() == pytest.approx(0.5, abs=0.02)


def test_resample_same_rate_and_empty() -> None:
    chunk = AudioChunk(sine(440, 0.1, 16_000), 16_000)
    assert resample(chunk, 16_000) is chunk

    empty = resample(AudioChunk(np.zeros(0, np.float32), 16_000), 24_000)
    assert empty.sample_rate == 24_000
    assert len(empty.samples) == 0


def _flac_declaring(seconds: float, *, rate: int = 192_000, layout: str = "7.1") -> bytes:
    """A tenth of a second of 8-channel 192 kHz FLAC whose header claims ``seconds``."""
    channels = len(av.AudioLayout(layout).channels)
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout=layout)
        samples = np.zeros((1, channels * rate // 10), dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    data = bytearray(buf.getvalue())
    # STREAMINFO (after "fLaC" and its 4-byte block header): bytes 10-17 end with the 36-bit
    # total sample count
    offset = data.index(b"fLaC") + 8 + 10
    packed = int.from_bytes(data[offset : offset + 8], "big")
    packed = (packed & ~((1 << 36) - 1)) | int(seconds * rate)
    data[offset : offset + 8] = packed.to_bytes(8, "big")
    return bytes(data)


def test_a_header_that_declares_too_long_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hostile 7.1-channel 192 kHz FLAC: its header says what it would cost; not a frame
    is decoded to find out."""
    decoded: list[object] = []
    real = av.container.InputContainer.decode

    def counting(self: object, *args: object, **kwargs: object) -> object:
        decoded.append(args)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(av.container.InputContainer, "decode", counting)
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(_flac_declaring(700.0), sample_rate=16_000, limits=AudioLimits())
    assert info.value.code == "audio_too_long" and "700 s" in str(info.value)
    assert decoded == []
    # the same file declaring its true length decodes (and is checked frame by frame too)
    short = decode_audio(_flac_declaring(0.1), sample_rate=16_000, limits=AudioLimits())
    assert short.duration == pytest.approx(0.1, abs=0.01)
    assert decoded != []  # (the counter sees decoding when it happens)
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(_flac_declaring(0.1), sample_rate=16_000, limits=AudioLimits(max_channels=2))
    assert info.value.code == "too_many_channels"
