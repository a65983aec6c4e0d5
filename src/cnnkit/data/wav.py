"""One audio-decoding path: any RIFF/WAVE file to a mono float32 clip at one rate and one length.

Every clip goes through :func:`read_wav` (PCM 8/16/24/32-bit, IEEE float 32/64, WAVE_FORMAT_EXTENSIBLE,
any channel count and rate) and then :func:`to_clip`: channels are averaged to mono, the rate is
changed by a band-limited Kaiser-windowed sinc resampler (:func:`resample`), and the clip is padded
with zeros or cropped to a fixed length by the rule of an :class:`AudioFormat`, whose
:meth:`AudioFormat.facts` are recorded with a run. Training, evaluation, prediction and serving all
decode this way, so one file gives one waveform everywhere. NumPy only: no torch, no torchaudio.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cnnkit.errors import CnnkitError

WAV_EXTENSIONS = frozenset({".wav", ".wave"})

# Rates outside this range are header corruption or not audio: telephone speech is 8 kHz and
# the fastest studio converters run at 768 kHz.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000

# The resampler: a Kaiser-windowed sinc with this many zero crossings on each side of its centre
# (at the lower of the two rates); beta 8.6 gives about 86 dB of stopband attenuation (Kaiser's
# A = beta / 0.1102 + 8.7), and the cutoff sits below the lower Nyquist frequency by half the
# transition width, so the stopband starts at the Nyquist frequency: nothing aliases.
ZERO_CROSSINGS = 32
KAISER_BETA = 8.6
# Kaiser's width formula: transition width (cycles per sample) = (A - 7.95) / (14.36 x filter length).
ROLLOFF = 1.0 - (KAISER_BETA / 0.1102 + 8.7 - 7.95) / (14.36 * 2 * ZERO_CROSSINGS)  # 1 - half the width / Nyquist
GATHER = 1 << 22  # elements of the (outputs, taps) arrays computed at once: 32 MB, for recordings of any length

PCM, IEEE_FLOAT, EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
# Codecs seen in the wild that are compressed or companded: named in the error so the fix is obvious.
CODEC_NAMES = {
    0x0002: "Microsoft ADPCM",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG",
    0x0055: "MP3",
    0x0161: "Windows Media Audio",
}
CONVERT_ADVICE = "convert it to PCM, e.g. ffmpeg -i in.wav -c:a pcm_s16le out.wav"


class AudioDecodeError(CnnkitError):
    """A WAV file that cannot be decoded; the message names the file and the reason."""


@dataclass(frozen=True)
class WavInfo:
    """What a WAV file's header says: its rate, channels, frames and codec (e.g. ``PCM 16-bit``)."""

    sample_rate: int
    channels: int
    frames: int
    codec: str

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


@dataclass(frozen=True)
class AudioFormat:
    """The one rule that turns any WAV file into a model input: rate, length, and how to pad or crop.

    Args:
        sample_rate: Rate of the clips, in Hz. Defaults to 16000.
        clip_samples: Length of every clip, in samples. Defaults to 16000 (one second at 16 kHz).
        pad: Where shorter clips get their zeros: ``end`` (after the sound, as series are padded, so
            a set's ``lengths`` mark where the sound stops) or ``centre``. Defaults to ``end``.
        crop: Which part of a longer clip is kept: ``centre`` or ``start``. Defaults to ``centre``.

    Example:
        >>> AudioFormat(8000, 8000).facts()["clip_seconds"]
        1.0
    """

    sample_rate: int = 16_000
    clip_samples: int = 16_000
    pad: str = "end"
    crop: str = "centre"

    def __post_init__(self) -> None:
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise CnnkitError(
                f"sample rate {self.sample_rate} Hz is out of range; use {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}"
            )
        if not 1 <= self.clip_samples <= 3600 * self.sample_rate:
            raise CnnkitError(f"clip length {self.clip_samples} samples is out of range; use 1 sample to one hour")
        if self.pad not in ("centre", "end"):
            raise CnnkitError(f"unknown pad rule {self.pad!r}; use centre or end")
        if self.crop not in ("centre", "start"):
            raise CnnkitError(f"unknown crop rule {self.crop!r}; use centre or start")

    @property
    def clip_seconds(self) -> float:
        return self.clip_samples / self.sample_rate

    def facts(self) -> dict:
        """The rule as JSON-ready facts, recorded with a run so prediction decodes the same way."""
        return {
            **asdict(self),
            "clip_seconds": self.clip_seconds,
            "channels": "mono: the mean of all channels",
            "resampler": f"Kaiser-windowed sinc, beta {KAISER_BETA}, {ZERO_CROSSINGS} zero crossings, "
            f"cutoff {ROLLOFF:.3f} x the lower Nyquist frequency",
            "pad_with": "zeros",
        }

    @classmethod
    def from_facts(cls, facts: dict) -> AudioFormat:
        """The format that :meth:`facts` recorded."""
        return cls(int(facts["sample_rate"]), int(facts["clip_samples"]), str(facts["pad"]), str(facts["crop"]))


def _codec(tag: int, bits: int, name: str) -> tuple[str, str]:
    """(numpy kind, description) for a format tag and bit depth, or the one-line refusal."""
    if tag == PCM and bits in (8, 16, 24, 32):
        return ("u" if bits == 8 else "i"), f"PCM {bits}-bit"
    if tag == IEEE_FLOAT and bits in (32, 64):
        return "f", f"IEEE float {bits}-bit"
    if tag in (PCM, IEEE_FLOAT):
        kind = "PCM" if tag == PCM else "IEEE float"
        raise AudioDecodeError(f"{name}: {kind} with {bits} bits per sample is not supported; {CONVERT_ADVICE}")
    codec = CODEC_NAMES.get(tag, f"format tag 0x{tag:04x}")
    raise AudioDecodeError(f"{name}: the {codec} codec is not supported (only PCM and IEEE float); {CONVERT_ADVICE}")


def _parse_fmt(chunk: bytes, name: str) -> tuple[str, str, int, int, int]:
    """(numpy kind, codec, channels, rate, bytes per sample) of a ``fmt `` chunk, extensible resolved."""
    if len(chunk) < 16:
        raise AudioDecodeError(f"{name}: corrupt WAV header (fmt chunk of {len(chunk)} bytes, 16 needed)")
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", chunk[:16])
    if tag == EXTENSIBLE:
        if len(chunk) < 40:
            raise AudioDecodeError(f"{name}: corrupt WAV header (WAVE_FORMAT_EXTENSIBLE without its sub-format)")
        tag = struct.unpack("<H", chunk[24:26])[0]  # the sub-format GUID starts with the plain format tag
    kind, codec = _codec(tag, bits, name)
    if channels == 0:
        raise AudioDecodeError(f"{name}: corrupt WAV header (0 channels)")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            f"{name}: sample rate {rate} Hz is absurd (corrupt header?); "
            f"cnnkit reads {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz"
        )
    if block_align != channels * bits // 8:
        raise AudioDecodeError(
            f"{name}: corrupt WAV header (block align {block_align} does not fit {channels} x {bits}-bit)"
        )
    return kind, codec, channels, rate, bits // 8


def _chunks(stream: io.BufferedIOBase, size: int, name: str) -> tuple[bytes, int, int]:
    """Walk the RIFF chunks: the ``fmt `` chunk's bytes, and the data chunk's offset and length."""
    header = stream.read(12)
    if len(header) < 12 or header[:4] not in (b"RIFF", b"RF64") or header[8:12] != b"WAVE":
        what = "it is empty" if not header else "no RIFF/WAVE header"
        raise AudioDecodeError(f"{name} is not a WAV file ({what}); give PCM or float WAV files")
    if header[:4] == b"RF64":
        raise AudioDecodeError(f"{name}: RF64 (WAV over 4 GB) is not supported; split the recording")
    fmt = None
    position = 12
    while position + 8 <= size:
        stream.seek(position)
        chunk_id, length = struct.unpack("<4sI", stream.read(8))
        start = position + 8
        if chunk_id == b"fmt ":
            fmt = stream.read(length)
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioDecodeError(f"{name}: corrupt WAV header (data chunk before the fmt chunk)")
            if length == 0xFFFFFFFF:  # written by a stream that never came back to fill in the size
                length = size - start
            if start + length > size:
                raise AudioDecodeError(
                    f"{name}: truncated data chunk ({size - start} of {length} bytes present); the file is cut short"
                )
            return fmt, start, length
        position = start + length + (length & 1)  # chunks are padded to an even size (LIST, fact, cue, ...)
    if fmt is None:
        raise AudioDecodeError(f"{name}: corrupt or truncated WAV header (no fmt chunk)")
    raise AudioDecodeError(f"{name}: corrupt or truncated WAV file (no data chunk)")


def read_wav(source: str | Path | bytes) -> tuple[np.ndarray, WavInfo]:
    """Decode a WAV file into float32 samples in [-1, 1], shape (frames, channels), and its header facts.

    8-bit PCM is unsigned (centred on 128), 16/24/32-bit PCM signed; float samples beyond
    ±1 are clipped. Chunks other than ``fmt `` and ``data`` (LIST, fact, ...) are skipped.

    Args:
        source: A path or the file's bytes (an upload).

    Raises:
        AudioDecodeError: not a WAV file, no audio, a corrupt or truncated header or data
            chunk, a compressed codec (ADPCM, mu-law, ...) or an absurd sample rate.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except OSError as error:
        raise AudioDecodeError(f"cannot read {name}: {error.strerror or error}") from None
    with stream:
        size = stream.seek(0, io.SEEK_END)
        stream.seek(0)
        fmt, start, length = _chunks(stream, size, name)
        kind, codec, channels, rate, width = _parse_fmt(fmt, name)
        frames = length // (channels * width)
        if frames == 0:
            raise AudioDecodeError(f"{name} holds no audio (a data chunk of {length} bytes); re-record or remove it")
        stream.seek(start)
        raw = np.frombuffer(stream.read(frames * channels * width), np.uint8)
    if kind == "f":
        samples = raw.view(f"<f{width}").astype(np.float32)
        if not np.isfinite(samples).all():
            raise AudioDecodeError(f"{name}: float samples hold NaN or infinity; the file is corrupt")
        np.clip(samples, -1.0, 1.0, out=samples)
    elif width == 1:
        samples = (raw.astype(np.float32) - 128.0) / 128.0
    elif width == 3:  # little-endian 3-byte integers: placed in the top bytes of int32, which keeps the sign
        wide = np.zeros((raw.size // 3, 4), np.uint8)
        wide[:, 1:] = raw.reshape(-1, 3)
        samples = wide.view("<i4").reshape(-1).astype(np.float32) / 2.0**31
    else:
        samples = raw.view(f"<i{width}").astype(np.float32) / float(2 ** (8 * width - 1))
    return samples.reshape(frames, channels), WavInfo(rate, channels, frames, codec)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write float samples in [-1, 1] (shape (frames,) or (frames, channels)) as a 16-bit PCM WAV file.

    Samples are scaled by 32768 (the reader's divisor, so a round trip changes nothing but the rounding)
    and clipped to the 16-bit range: +1.0 is stored as 32767.
    """
    data = np.asarray(samples, dtype=np.float64)
    data = data[:, None] if data.ndim == 1 else data
    pcm = np.clip(np.round(data * 32768.0), -32768, 32767).astype("<i2")
    channels = data.shape[1]
    body = pcm.tobytes()
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        *(b"RIFF", 36 + len(body), b"WAVE", b"fmt ", 16, PCM, channels, sample_rate),
        *(sample_rate * channels * 2, channels * 2, 16, b"data", len(body)),
    )
    Path(path).write_bytes(header + body)


def _kernel(offsets: np.ndarray, taps: np.ndarray, cutoff: float, half_width: float) -> np.ndarray:
    """Windowed-sinc weights (len(offsets), len(taps)) for outputs at fractional positions ``offsets``."""
    distance = offsets[:, None] - taps[None, :]  # input samples between each output and each tap
    ratio = np.clip(distance / half_width, -1.0, 1.0)
    window = np.i0(KAISER_BETA * np.sqrt(1.0 - ratio**2)) / np.i0(KAISER_BETA)
    weights = cutoff * np.sinc(cutoff * distance) * window
    return weights / weights.sum(axis=1, keepdims=True)  # unit gain at DC for every phase


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Change the rate of a mono signal (frames,) with a band-limited Kaiser-windowed sinc filter.

    Output ``n`` sits at input position ``n * source_rate / target_rate``; its weights depend
    only on that position's fractional part, so they are computed once per distinct phase of
    the rational ratio (as a polyphase filter would store them). The cutoff is ``ROLLOFF`` times
    the lower Nyquist frequency, so downsampling removes what would alias. The signal is zero
    outside its ends. The output has ``ceil(frames * target_rate / source_rate)`` samples.
    """
    if source_rate == target_rate:
        return np.asarray(samples, dtype=np.float32)
    divisor = math.gcd(source_rate, target_rate)
    up, down = target_rate // divisor, source_rate // divisor
    cutoff = ROLLOFF * min(1.0, up / down)  # in cycles per input sample, times 2
    half_width = ZERO_CROSSINGS / min(1.0, up / down)  # in input samples
    reach = math.ceil(half_width)
    taps = np.arange(-reach, reach + 1)
    padded = np.concatenate([np.zeros(reach), np.asarray(samples, np.float64), np.zeros(reach + 1)])
    count = -(-len(samples) * up // down)
    out = np.empty(count, np.float32)
    block = max(1, GATHER // len(taps))
    for first in range(0, count, block):
        position = np.arange(first, min(first + block, count), dtype=np.int64) * down  # in units of 1/up input samples
        base, phase = position // up, position % up
        phases, which = np.unique(phase, return_inverse=True)
        weights = _kernel(phases / up, taps, cutoff, half_width)[which]  # (block, taps)
        window = padded[base[:, None] + reach + taps[None, :]]  # (block, taps)
        out[first : first + len(base)] = np.einsum("ij,ij->i", weights, window)
    return out


def fit_length(wave: np.ndarray, audio_format: AudioFormat) -> tuple[np.ndarray, str | None]:
    """Pad with zeros or crop a mono clip to ``audio_format.clip_samples``; says ``padded``/``cropped`` when it did."""
    length, target = len(wave), audio_format.clip_samples
    if length == target:
        return wave, None
    if length > target:
        start = (length - target) // 2 if audio_format.crop == "centre" else 0
        return wave[start : start + target], "cropped"
    before = (target - length) // 2 if audio_format.pad == "centre" else 0
    out = np.zeros(target, np.float32)
    out[before : before + length] = wave
    return out, "padded"


def to_mono(samples: np.ndarray, source_rate: int, audio_format: AudioFormat) -> np.ndarray:
    """Samples (frames, channels) to a mono float32 signal in [-1, 1] at the format's rate, of any length.

    A band-limited resampler rings past a full-scale step (Gibbs), so its output is clipped back to ±1.
    """
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    return np.clip(resample(mono, source_rate, audio_format.sample_rate), -1.0, 1.0)


def to_clip(source: str | Path | bytes, audio_format: AudioFormat) -> tuple[np.ndarray, str | None]:
    """Decode a WAV file into one model input: float32 (clip_samples,), and ``padded``/``cropped``/None.

    Example:
        >>> wave, change = to_clip("yes.wav", AudioFormat(16000, 16000))  # doctest: +SKIP
    """
    samples, info = read_wav(source)
    return fit_length(to_mono(samples, info.sample_rate, audio_format), audio_format)
