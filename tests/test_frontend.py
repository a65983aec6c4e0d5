"""The log-mel front end against an independent NumPy reference, its two STFT kernels, ONNX Runtime and bf16."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnkit.errors import CnnkitError
from cnnkit.models.frontend import LogMel, dft_power

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: two threads only spin on a loaded machine


def numpy_logmel(wave: np.ndarray, sample_rate: int, n_fft: int, hop: int, n_mels: int, f_min: float, f_max: float):
    """(T,) -> (n_mels, frames): centred zero-padded frames, periodic Hann, rfft power, HTK triangles, log."""
    padded = np.pad(wave.astype(np.float64), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]  # (frames, n_fft)
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft + 1)[:-1], axis=1)) ** 2  # (frames, n_freq)
    mel_edges = np.linspace(2595 * np.log10(1 + f_min / 700), 2595 * np.log10(1 + f_max / 700), n_mels + 2)
    hz_edges = 700 * (10 ** (mel_edges / 2595) - 1)
    frequencies = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    filters = np.stack([np.interp(frequencies, hz_edges[m : m + 3], [0, 1, 0]) for m in range(n_mels)])
    return np.log(filters @ power.T + 1e-6)


@pytest.mark.parametrize(
    ("sample_rate", "n_fft", "hop", "n_mels", "f_min"), [(16000, 512, 160, 40, 20), (8000, 256, 80, 32, 0)]
)
def test_logmel_matches_a_numpy_reference(sample_rate, n_fft, hop, n_mels, f_min):
    rng = np.random.default_rng(0)
    time = np.arange(sample_rate) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * (200 + 2000 * time) * time) + 0.05 * rng.standard_normal(
        sample_rate
    )  # chirp + noise
    frontend = LogMel(sample_rate, n_fft, hop, n_mels, f_min=f_min, normalize=False)
    ours = frontend(torch.tensor(wave, dtype=torch.float32).view(1, 1, -1))[0, 0].double().numpy()
    reference = numpy_logmel(wave, sample_rate, n_fft, hop, n_mels, f_min, sample_rate / 2)
    assert ours.shape == reference.shape == (n_mels, 1 + sample_rate // hop)
    np.testing.assert_allclose(ours, reference, atol=2e-3)


def test_logmel_gives_one_frame_per_hop_for_any_clip_and_channel_count():
    frontend = LogMel()
    assert frontend(torch.randn(3, 1, 16000)).shape == (3, 1, 40, 101)  # 1 s at 16 kHz
    assert frontend(torch.randn(2, 1, 8000)).shape == (2, 1, 40, 51)  # 0.5 s
    stereo = torch.randn(2, 2, 4000)
    both = frontend.eval()(stereo)
    assert both.shape == (2, 2, 40, 26) and frontend.frames(4000) == 26
    torch.testing.assert_close(both[:, 1:], frontend(stereo[:, 1:]))  # each channel its own log-mel


def test_logmel_export_kernel_equals_torch_stft():
    frontend = LogMel()
    x = torch.randn(3, 12345)
    spectrum = torch.stft(x, 512, 160, window=torch.hann_window(512), pad_mode="constant", return_complex=True)
    expected = spectrum.abs().square()
    torch.testing.assert_close(dft_power(x, frontend.dft, 160), expected, rtol=1e-5, atol=1e-5 * expected.max().item())


def test_logmel_normalises_with_running_statistics_and_keeps_only_them():
    frontend = LogMel()
    assert list(frontend.state_dict()) == ["norm.running_mean", "norm.running_var", "norm.num_batches_tracked"]
    assert not list(frontend.parameters())  # fixed features: the models' parameter counts are the papers'
    loud = torch.randn(8, 1, 4000)
    for _ in range(50):
        frontend(loud)  # training mode: batch statistics, and the running ones move towards them
    normalised = frontend.eval()(loud)
    assert normalised.mean().abs() < 0.1 and (normalised.std() - 1).abs() < 0.1
    quiet = frontend(loud * 0.01)  # the running statistics keep the level: quiet input stays below
    assert quiet.mean() < normalised.mean() - 1


@pytest.mark.parametrize("clip_mean", ["level", "gain", "bands"])
def test_logmel_clip_mean_cancels_a_gain_and_ignores_the_padding(clip_mean):
    waves = torch.zeros(2, 1, 8000)
    waves[..., 2000:5000] = 0.1 * torch.randn(2, 1, 3000)  # a word in zero padding
    word = slice(30, 60)  # frames well inside it; the padding's floor (log_offset) cannot follow a gain
    plain = LogMel(8000, 256, 80, normalize=False)
    louder = plain(10 * waves) - plain(waves)  # 20 dB: every log-mel of the word + log(100)
    assert (louder[..., word] - math.log(100)).abs().max() < 0.01
    frontend = LogMel(8000, 256, 80, normalize=False, clip_mean=clip_mean)
    assert (frontend(10 * waves) - frontend(waves))[..., word].abs().max() < 0.01
    # the energy-weighted mean is the word's: a plain mean would count the padding's floor, about -13.8
    assert frontend(waves)[..., word].mean((-2, -1)).abs().max() < 1.5
    padding = (frontend(10 * waves) - frontend(waves))[..., :20].abs().max()
    assert padding < 0.01 if clip_mean == "gain" else padding > 4  # only "gain" moves the floor with the level


def test_logmel_computes_in_float32_under_bf16_autocast():
    frontend = LogMel().eval()
    x = torch.randn(2, 1, 8000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = frontend(x)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, frontend(x))


def test_logmel_refuses_filters_beyond_nyquist_and_unknown_clip_means():
    with pytest.raises(CnnkitError, match="need 0 <= f_min < f_max <= 4000"):
        LogMel(sample_rate=8000, f_max=6000)
    with pytest.raises(CnnkitError, match="n_mels=0"):
        LogMel(n_mels=0)
    with pytest.raises(CnnkitError, match="clip_mean='max': choose one of none, level, gain, bands"):
        LogMel(clip_mean="max")


def export_taking_waveforms(model: torch.nn.Module, path: Path) -> Path:
    """Export ``model`` as cnnkit exports (the dynamo exporter), its input ``waves`` (B, C, T) of any B and T."""
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.randn(2, 1, 16000),),
            str(path),
            input_names=["waves"],
            dynamic_shapes=({0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC},),
            dynamo=True,
            verbose=False,
        )
    return path


@pytest.mark.slow
def test_logmel_onnx_runtime_matches_pytorch_on_any_clip_length(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the deploy extra provides onnxruntime")
    frontend = LogMel()
    for _ in range(3):
        frontend(torch.randn(4, 1, 16000))  # running statistics away from 0 and 1
    frontend.eval()
    session = ort.InferenceSession(str(export_taking_waveforms(frontend, tmp_path / "logmel.onnx")))
    for length in (16000, 8000):
        waves = torch.randn(3, 1, length)
        exported = session.run(None, {"waves": waves.numpy()})[0]
        assert exported.shape == (3, 1, 40, 1 + length // 160)
        np.testing.assert_allclose(exported, frontend(waves).numpy(), atol=1e-4)
