"""The keyword-spotting networks: 1 s and 0.5 s clips, training, the papers' sizes, the shared interface, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_frontend import export_taking_waveforms
from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.models import create_model, list_models, model_entry
from cnnkit.models.fold import fold_pooled_batch_norms
from cnnkit.models.network import Network

AUDIO_MODELS = ["bcresnet", "m5"]

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: two threads only spin on a loaded machine


def test_kws_models_are_registered_for_audio():
    assert list_models(modality="audio") == [*AUDIO_MODELS, "mlp_logmel"]  # the MLP baseline (models/mlp.py)
    assert all(model_entry(name).modality == "audio" for name in AUDIO_MODELS)
    assert not set(AUDIO_MODELS) & set(list_models(modality="image"))


@pytest.mark.parametrize("name", AUDIO_MODELS)
@pytest.mark.parametrize("samples", [16000, 8000])  # 1 s and 0.5 s at 16 kHz
def test_kws_model_classifies_waveforms_and_trains(name, samples):
    torch.manual_seed(0)
    model = create_model(name, num_classes=12, in_channels=1, img_size=samples)
    waves, labels = 0.1 * torch.randn(4, 1, samples), torch.tensor([0, 3, 7, 11])
    logits = model(waves)
    assert logits.shape == (4, 12)
    nn.functional.cross_entropy(logits, labels).backward()
    trained = [p for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(trained) == len(list(model.parameters()))  # every weight gets a gradient


def test_bcresnet_1_has_the_papers_parameter_count():
    model = create_model("bcresnet", num_classes=12, in_channels=1, img_size=16000)  # Speech Commands' 12 classes
    count = sum(p.numel() for p in model.parameters())
    assert count == 9_232 and round(count, -2) == 9_200  # Kim et al. 2021: BC-ResNet-1, 9.2k
    wider = create_model("bcresnet", num_classes=12, in_channels=1, img_size=16000, width=8)
    assert round(sum(p.numel() for p in wider.parameters()), -3) == 321_000  # BC-ResNet-8, 321k


def test_m5_has_the_papers_parameter_count():
    model = create_model("m5", num_classes=10, in_channels=1, img_size=32000)  # UrbanSound8k's 10 classes
    count = sum(p.numel() for p in model.parameters())
    assert 500_000 <= count < 600_000  # Dai et al. 2017: M5, "0.5M"; its layers give 0.56M with batch norm


def test_bcresnet_runs_frequency_in_2d_and_time_in_1d():
    model = create_model("bcresnet", num_classes=12, in_channels=1, img_size=16000)
    block = model.features[3]
    assert {type(m) for m in block.f2.modules()} >= {nn.Conv2d} and nn.Conv1d not in {
        type(m) for m in block.f2.modules()
    }
    assert {type(m) for m in block.f1.modules()} >= {nn.Conv1d, nn.BatchNorm1d}
    dilations = [m.dilation[0] for m in model.modules() if isinstance(m, nn.Conv1d) and m.kernel_size == (3,)]
    assert dilations == [1] * 2 + [2] * 2 + [4] * 4 + [8] * 4  # time dilation per stage


@pytest.mark.parametrize("name", AUDIO_MODELS)
def test_kws_model_shares_the_network_interface(name):
    model = create_model(name, num_classes=5, in_channels=1, img_size=8000).eval()
    assert isinstance(model, Network)
    waves = torch.randn(3, 1, 8000)
    with torch.no_grad():
        features = model.forward_features(waves)
        assert features.shape[1] == model.num_features
        torch.testing.assert_close(model.forward_head(features), model(waves))
        assert model.forward_embedding(waves).shape == (3, model.get_classifier().in_features)
    early, late, head = model.layer_groups()
    assert early and late and [id(p) for p in head] == [id(p) for p in model.get_classifier().parameters()]
    model.reset_classifier(7)
    assert model(waves).shape == (3, 7)


def test_kws_models_keep_their_outputs_through_batch_norm_folding():
    model = create_model("m5", num_classes=4, in_channels=1, img_size=8000)
    for _ in range(2):
        model(torch.randn(8, 1, 8000))  # running statistics away from their initial values
    waves = torch.randn(2, 1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(fold_pooled_batch_norms(model)(waves), model.eval()(waves), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", AUDIO_MODELS)
def test_kws_model_exports_to_onnx_taking_waveforms(name, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the deploy extra provides onnxruntime")
    torch.manual_seed(0)
    model = create_model(name, num_classes=12, in_channels=1, img_size=16000)
    for norm in (module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)):
        norm.momentum = None  # running statistics: the plain average of the batches below, as after training
    with torch.no_grad():
        for scale in (0.01, 0.1, 1.0):
            model(scale * torch.randn(8, 1, 16000))
    model.eval()
    session = ort.InferenceSession(str(export_taking_waveforms(model, tmp_path / f"{name}.onnx")))
    for length in (16000, 8000):  # the window a spotter slides need not be the training clip's
        waves = torch.randn(3, 1, length) * torch.tensor([0.01, 0.1, 1.0])[:, None, None]  # distinct spectra
        exported = session.run(None, {"waves": waves.numpy()})[0]
        with torch.no_grad():
            expected = model(waves).numpy()
        assert np.abs(expected[0] - expected[2]).max() > 1e-3  # the check can tell the clips apart
        np.testing.assert_allclose(exported, expected, atol=1e-4, rtol=1e-4)


def test_summary_takes_a_waveform_for_audio_models():
    from cnnkit.understand.summary import summarize_model

    summary = summarize_model("bcresnet", num_classes=12)  # one second of mono 16 kHz audio by default
    rows = {row.name: row for row in summary.layers}
    assert summary.parameters == 9_232 and rows["features.0"].output_shape == [16, 20, 101]  # the stem on 40x101
    m5 = summarize_model("m5", img_size=8000, num_classes=10)
    assert m5.layers[0].output_shape == [128, 2000] and m5.parameters == 558_090  # stride 4


def test_kws_models_refuse_input_they_cannot_take_in_one_line():
    m5 = create_model("m5", num_classes=3, in_channels=1, img_size=8000).eval()
    with pytest.raises(CnnkitError, match="at least 256 samples; got 255"):
        m5(torch.zeros(1, 1, 255))
    assert m5(torch.zeros(1, 1, 256)).shape == (1, 3)
    with pytest.raises(CnnkitError, match=r"takes waveforms \(batch, channels, samples\), not \[2, 16000\]"):
        create_model("bcresnet", num_classes=3, in_channels=1, img_size=16000)(torch.zeros(2, 16000))


@pytest.mark.parametrize(
    ("frontend", "groups"),
    [({"n_mels": 32}, {1}), ({"n_mels": 80}, {5}), ({"sample_rate": 8000, "n_fft": 256, "hop_length": 80}, {5})],
)
def test_bcresnet_takes_other_front_ends(frontend, groups):
    model = create_model("bcresnet", num_classes=4, in_channels=1, img_size=8000, **frontend)
    assert model(torch.randn(2, 1, 8000)).shape == (2, 4) and model.frontend.n_mels == frontend.get("n_mels", 40)
    # 5 frequency groups where the bands divide (40 mels: 20, 10, 5), else plain batch norm (32 mels: 16, 8, 4)
    assert {m.sub_bands for m in model.modules() if type(m).__name__ == "SubSpectralNorm"} == groups
