"""The 1-D series classifiers: any length and channel count, one training step, the papers' layer shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.models import create_model, list_models, model_entry
from cnnkit.models.layers import conv
from cnnkit.models.series import InceptionModule, ResidualBlock
from cnnkit.understand.summary import count_multiply_adds, summarize_model

SERIES_MODELS = ["fcn", "inception_time", "resnet1d"]


def _conv_weights(model: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv1d)]


def test_series_models_are_registered_as_series():
    assert list_models(modality="series") == sorted([*SERIES_MODELS, "mlp1d"])  # mlp1d: tests/test_compare_signals.py
    assert all(model_entry(name).modality == "series" for name in SERIES_MODELS)
    assert not set(SERIES_MODELS) & set(list_models(modality="image"))


@pytest.mark.parametrize("name", SERIES_MODELS)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_series_model_maps_any_length_to_logits_and_embeddings(name, in_channels):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, in_channels=in_channels, img_size=30).eval()
    with torch.no_grad():
        for length in (9, 30):  # the model is built for 30 and takes any length: convolutions keep it, GAP ends it
            x = torch.randn(2, in_channels, length)
            features = model.forward_features(x)
            assert features.shape == (2, model.num_features, length)
            logits = model(x)
            assert logits.shape == (2, 4) and torch.allclose(model.forward_head(features), logits, atol=1e-6)
            assert model.forward_embedding(x).shape == (2, model.get_classifier().in_features) == (2, 128)


@pytest.mark.parametrize("name", SERIES_MODELS)
def test_series_model_trains_one_step(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_channels=2, img_size=24).train()
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(torch.randn(4, 2, 24)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_fcn_has_the_papers_layers():
    model = create_model("fcn", num_classes=2, in_channels=1, img_size=150)
    assert _conv_weights(model) == [(128, 1, 8), (256, 128, 5), (128, 256, 3)]  # Wang et al. 2017, Fig. 1
    convolutions = 128 * 1 * 8 + 256 * 128 * 5 + 128 * 256 * 3  # no bias: batch norm's shift replaces it
    norms = 2 * (128 + 256 + 128)
    assert sum(p.numel() for p in model.parameters()) == convolutions + norms + 128 * 2 + 2 == 264_450


def test_resnet1d_has_three_blocks_of_64_128_128():
    model = create_model("resnet1d", num_classes=2, in_channels=1, img_size=150)
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 3
    body = [(64, 1, 8), (64, 64, 5), (64, 64, 3), (128, 64, 8), (128, 128, 5), (128, 128, 3)]
    body += [(128, 128, 8), (128, 128, 5), (128, 128, 3)]
    shortcuts = [(64, 1, 1), (128, 64, 1)]  # the third block keeps 128 channels: its shortcut is batch norm alone
    assert [w for b in blocks for w in _conv_weights(b.body)] == body
    assert [w for b in blocks for w in _conv_weights(b.shortcut)] == shortcuts
    weights = sum(a * b * k for a, b, k in body + shortcuts)
    norms = 2 * (3 * 64 + 6 * 128) + 2 * (64 + 128 + 128)  # nine body norms, three shortcut norms
    assert sum(p.numel() for p in model.parameters()) == weights + norms + 128 * 2 + 2


def test_inception_time_has_six_modules_with_bottleneck_32_and_a_shortcut_every_three():
    model = create_model("inception_time", num_classes=2, in_channels=1, img_size=150)
    modules = [m for m in model.modules() if isinstance(m, InceptionModule)]
    assert len(modules) == 6 and all(m.out_channels == 128 for m in modules)
    assert isinstance(modules[0].bottleneck, nn.Identity)  # one input channel: no bottleneck, as the authors do
    assert [b.kernel_size[0] for b in modules[1].branches] == [40, 20, 10]
    assert tuple(modules[1].bottleneck.weight.shape) == (32, 128, 1)
    first = 32 * (40 + 20 + 10) + 32 + 2 * 128  # three wide convolutions on the input, the pool branch's 1x1, BN
    later = 128 * 32 + 32 * 32 * (40 + 20 + 10) + 128 * 32 + 2 * 128  # bottleneck, wide, pool branch, BN
    shortcuts = (1 * 128 + 2 * 128) + (128 * 128 + 2 * 128)  # after modules 3 and 6: 1x1 convolution and BN
    assert sum(p.numel() for p in model.parameters()) == first + 5 * later + shortcuts + 128 * 2 + 2 == 420_450


def test_same_padding_of_an_even_kernel_matches_keras():
    torch.manual_seed(0)
    layer = conv(2, 3, 8, padding="same", bias=False, rank=1)
    x = torch.randn(1, 2, 11)
    keras = F.conv1d(F.pad(x, (3, 4)), layer.weight)  # TensorFlow's "same": the odd step of padding on the right
    assert torch.allclose(layer(x), keras, atol=1e-6) and keras.shape[-1] == 11


def test_mlp_rank_1_flattens_series_and_keeps_images_as_they_were():
    series = create_model("mlp", num_classes=3, in_channels=2, img_size=40, rank=1)
    assert series.features[1].in_features == 80 and series(torch.randn(4, 2, 40)).shape == (4, 3)
    image = create_model("mlp", num_classes=3, in_channels=3, img_size=32)
    assert image.features[1].in_features == 3 * 32 * 32 and image(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("name", SERIES_MODELS)
def test_count_multiply_adds_of_series_models_matches_pytorch_flop_counter(name):
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(name, num_classes=5, in_channels=3, img_size=32).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32))
    assert count_multiply_adds(model, (3, 32)) == counter.get_total_flops() // 2 > 0


def test_summary_of_a_series_model_takes_channels_by_length():
    summary = summarize_model("fcn", img_size=50, channels=2, num_classes=4)
    assert summary.input_shape == [2, 50] and summary.layers[0].output_shape == [128, 50]


@pytest.mark.slow
def test_series_model_exports_to_onnx_with_a_dynamic_length(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = create_model("fcn", num_classes=3, in_channels=2, img_size=40, filters=(8, 16, 8)).eval()
    path = tmp_path / "fcn.onnx"
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("length", min=2)}
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(2, 2, 40),), path, dynamo=True, dynamic_shapes={"x": dims})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for length in (17, 40, 95):
        x = torch.randn(3, 2, length)
        (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            assert torch.allclose(torch.from_numpy(logits), model(x), atol=1e-4)
