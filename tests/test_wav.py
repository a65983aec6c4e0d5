"""WAV decoding: every PCM depth and float format, chunks, mixdown, resampling, pad/crop, and bad input."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from cnnkit.data import wav
from cnnkit.data.wav import AudioDecodeError, AudioFormat, fit_length, read_wav, resample, to_clip, write_wav
from cnnkit.errors import CnnkitError

RATE = 8000


def tone(frames: int = 400, channels: int = 1, rate: int = RATE) -> np.ndarray:
    """(frames, channels) sines at different frequencies per channel, within ±0.9."""
    t = np.arange(frames) / rate
    return np.stack([0.9 * np.sin(2 * np.pi * (300 + 200 * c) * t) for c in range(channels)], axis=1)


def riff(fmt: bytes, body: bytes, extra: bytes = b"") -> bytes:
    """A WAV file built by hand (independent of cnnkit's writer): fmt chunk, extra chunks, then data."""
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra + b"data" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def fmt_chunk(tag: int, channels: int, rate: int, bits: int, extensible_tag: int | None = None) -> bytes:
    align = channels * bits // 8
    base = struct.pack("<HHIIHH", 0xFFFE if extensible_tag else tag, channels, rate, rate * align, align, bits)
    if extensible_tag is None:
        return base
    guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"  # KSDATAFORMAT_SUBTYPE_* after the tag
    return base + struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", extensible_tag) + guid_tail


def write_pcm_with_wave(path: Path, samples: np.ndarray, width: int) -> np.ndarray:
    """Write integer PCM through Python's ``wave`` module; returns the exact values it stored, scaled to ±1."""
    scale = 2 ** (8 * width - 1)
    ints = np.round(samples * (scale - 1)).astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    else:
        raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.reshape(-1))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(samples.shape[1])
        out.setsampwidth(width)
        out.setframerate(RATE)
        out.writeframes(raw)
    return ints / scale


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_wav_round_trips_every_pcm_depth(tmp_path: Path, width: int):
    samples = tone(channels=2)
    expected = write_pcm_with_wave(tmp_path / "a.wav", samples, width)
    decoded, info = read_wav(tmp_path / "a.wav")
    assert decoded.dtype == np.float32 and decoded.shape == (400, 2)
    assert (info.sample_rate, info.channels, info.frames, info.codec) == (RATE, 2, 400, f"PCM {8 * width}-bit")
    np.testing.assert_allclose(decoded, expected, atol=1e-7)


@pytest.mark.parametrize("extensible", [False, True])
@pytest.mark.parametrize("dtype", ["<f4", "<f8"])
def test_read_wav_round_trips_float_and_extensible(tmp_path: Path, dtype: str, extensible: bool):
    samples = tone(channels=3)
    bits = 8 * np.dtype(dtype).itemsize
    fmt = fmt_chunk(3, 3, RATE, bits, extensible_tag=3 if extensible else None)
    (tmp_path / "f.wav").write_bytes(riff(fmt, samples.astype(dtype).tobytes()))
    decoded, info = read_wav(tmp_path / "f.wav")
    assert info.codec == f"IEEE float {bits}-bit" and decoded.shape == (400, 3)
    np.testing.assert_allclose(decoded, samples.astype(np.float32), atol=1e-7)


def test_read_wav_reads_extensible_24_bit_pcm_and_clips_float_overs(tmp_path: Path):
    ints = np.array([-(2**23), -1, 0, 1, 2**23 - 1])
    body = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    (tmp_path / "e.wav").write_bytes(riff(fmt_chunk(1, 1, 48000, 24, extensible_tag=1), body))
    decoded, info = read_wav(tmp_path / "e.wav")
    assert info.codec == "PCM 24-bit"
    np.testing.assert_allclose(decoded[:, 0], ints / 2**23, atol=1e-7)
    loud = np.array([1.5, -2.0, 0.25], "<f4")
    decoded, _ = read_wav(riff(fmt_chunk(3, 1, RATE, 32), loud.tobytes()))
    np.testing.assert_array_equal(decoded[:, 0], [1.0, -1.0, 0.25])


def test_read_wav_skips_extra_chunks_with_odd_padding(tmp_path: Path):
    body = (np.arange(10, dtype="<i2") * 1000).tobytes()
    odd = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00"  # 5 bytes, padded to 6
    fact = b"fact" + struct.pack("<I", 4) + struct.pack("<I", 10)
    decoded, info = read_wav(riff(fmt_chunk(1, 1, RATE, 16), body, extra=odd + fact))
    assert info.frames == 10
    np.testing.assert_allclose(decoded[:, 0], np.arange(10) * 1000 / 32768, atol=1e-7)


def test_write_wav_writes_16_bit_pcm_that_the_wave_module_reads(tmp_path: Path):
    samples = tone(channels=2)
    write_wav(tmp_path / "w.wav", samples, RATE)
    with wave.open(str(tmp_path / "w.wav")) as stored:
        assert (stored.getnchannels(), stored.getsampwidth(), stored.getframerate()) == (2, 2, RATE)
        ints = np.frombuffer(stored.readframes(stored.getnframes()), "<i2").reshape(-1, 2)
    np.testing.assert_array_equal(ints, np.round(samples * 32768))
    decoded, _ = read_wav(tmp_path / "w.wav")
    np.testing.assert_allclose(decoded, samples, atol=0.5 / 32768 + 1e-7)


def test_to_clip_mixes_channels_down_by_their_mean(tmp_path: Path):
    samples = tone(frames=RATE, channels=2)
    samples[:, 1] = 0.5  # a DC channel: the mean halves it
    write_wav(tmp_path / "s.wav", samples, RATE)
    clip, change = to_clip(tmp_path / "s.wav", AudioFormat(RATE, RATE))
    assert change is None and clip.shape == (RATE,)
    np.testing.assert_allclose(clip, (np.round(samples * 32768) / 32768).mean(axis=1), atol=1e-6)


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - estimate) ** 2)))


RATIOS = [(44100, 16000), (8000, 16000), (22050, 16000), (48000, 8000)]


def sine_resampled(source: int, target: int) -> tuple[np.ndarray, np.ndarray, slice]:
    """A second of 440 Hz at ``source`` resampled to ``target``, the input, and the part away from the ends."""
    sine = np.sin(2 * np.pi * 440 * np.arange(source) / source)
    return resample(sine, source, target), sine, slice(target // 10, -target // 10)  # zeros lie beyond the ends


@pytest.mark.parametrize(("source", "target"), RATIOS)
def test_resample_matches_an_ideal_sine(source: int, target: int):
    out, _, inner = sine_resampled(source, target)
    assert len(out) == target
    ideal = np.sin(2 * np.pi * 440 * np.arange(target) / target)
    assert snr_db(ideal[inner], out[inner]) > 80


@pytest.mark.slow  # importing scipy.signal takes seconds
@pytest.mark.parametrize(("source", "target"), RATIOS)
def test_resample_matches_scipy_resample_poly(source: int, target: int):
    signal = pytest.importorskip("scipy.signal", reason="scipy (with scikit-learn) is the independent reference")
    out, sine, inner = sine_resampled(source, target)
    reference = signal.resample_poly(sine, target, source, window=("kaiser", 8.6))
    assert len(reference) == len(out) and snr_db(reference[inner], out[inner]) > 60


def test_resample_gives_the_same_samples_in_blocks(monkeypatch: pytest.MonkeyPatch):
    signal_ = np.random.default_rng(0).standard_normal(3000)
    whole = resample(signal_, 44100, 16000)
    monkeypatch.setattr(wav, "GATHER", 500)  # a few outputs per block
    np.testing.assert_array_equal(resample(signal_, 44100, 16000), whole)


def test_resample_removes_what_would_alias():
    source = 44100
    above_nyquist = np.sin(2 * np.pi * 7000 * np.arange(source) / source)  # above 4 kHz, 8 kHz's Nyquist
    out = resample(above_nyquist, source, 8000)
    assert np.sqrt(np.mean(out[800:-800] ** 2)) < 1e-3  # a 7 kHz tone would alias to 1 kHz at rms 0.7


def test_to_clip_keeps_a_resampled_full_scale_square_wave_within_one(tmp_path: Path):
    square = np.where(np.arange(800) % 80 < 40, 1.0, -1.0)  # full-scale steps: the sinc rings past them
    write_wav(tmp_path / "sq.wav", square, RATE)
    clip, _ = to_clip(tmp_path / "sq.wav", AudioFormat(16000, 1600))
    assert float(np.abs(clip).max()) == 1.0


def test_fit_length_pads_and_crops_by_the_recorded_rule():
    wave_ = np.arange(1, 7, dtype=np.float32)
    padded, change = fit_length(wave_, AudioFormat(RATE, 10, pad="centre"))
    assert change == "padded" and padded.tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 0, 0]
    padded, _ = fit_length(wave_, AudioFormat(RATE, 8, pad="end"))
    assert padded.tolist() == [1, 2, 3, 4, 5, 6, 0, 0]
    cropped, change = fit_length(wave_, AudioFormat(RATE, 2, crop="centre"))
    assert change == "cropped" and cropped.tolist() == [3, 4]
    cropped, _ = fit_length(wave_, AudioFormat(RATE, 2, crop="start"))
    assert cropped.tolist() == [1, 2]


def test_audio_format_facts_round_trip_and_refuse_bad_rules():
    audio_format = AudioFormat(8000, 12000, pad="end", crop="start")
    facts = audio_format.facts()
    assert facts["clip_seconds"] == 1.5 and "mean of all channels" in facts["channels"]
    assert AudioFormat.from_facts(facts) == audio_format
    with pytest.raises(CnnkitError, match="pad rule"):
        AudioFormat(pad="both")
    with pytest.raises(CnnkitError, match="sample rate"):
        AudioFormat(sample_rate=10)


PCM16 = fmt_chunk(1, 1, RATE, 16)
BAD_INPUT = {
    "text": (b"hello, not audio at all", "is not a WAV file"),
    "empty": (b"", "is not a WAV file (it is empty)"),
    "no audio": (riff(PCM16, b""), "holds no audio"),
    "short header": (riff(PCM16, b"\x00\x00")[:30], "corrupt"),
    "cut data": (riff(PCM16, b"\x00\x01" * 100)[:-50], "truncated data chunk"),
    "no data chunk": (riff(PCM16, b"")[:36], "no data chunk"),
    "adpcm": (riff(fmt_chunk(2, 1, RATE, 4) + b"\x00" * 4, b"\x00" * 8), "Microsoft ADPCM codec is not supported"),
    "mu-law": (riff(fmt_chunk(7, 1, RATE, 8), b"\x00" * 8), "mu-law codec is not supported"),
    "absurd rate": (riff(fmt_chunk(1, 1, 5, 16), b"\x00" * 8), "sample rate 5 Hz is absurd"),
    "zero channels": (riff(struct.pack("<HHIIHH", 1, 0, RATE, 0, 0, 16), b"\x00" * 8), "0 channels"),
    "nan": (riff(fmt_chunk(3, 1, RATE, 32), np.array([0.0, np.nan], "<f4").tobytes()), "NaN"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_read_wav_refuses_bad_input_in_one_line_naming_the_file(tmp_path: Path, case: str):
    data, expected = BAD_INPUT[case]
    path = tmp_path / "clip.wav"
    path.write_bytes(data)
    with pytest.raises(AudioDecodeError) as raised:
        read_wav(path)
    message = str(raised.value)
    assert expected in message and str(path) in message and "\n" not in message
