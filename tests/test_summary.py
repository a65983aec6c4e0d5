"""cnnkit summary against figures worked out by hand for a small network."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from cnnkit.models import create_model, list_models
from cnnkit.understand.summary import count_multiply_adds, summarize_model

FAST_MODELS = {"convnet", "lenet5", "mlp", "efficientnet_lite0", "mobilenet_v3_small", "resnet18"}


def test_summary_matches_hand_computed_figures():
    summary = summarize_model("conv8k3 relu pool2 conv16k5 relu gap fc", img_size=28, channels=1, num_classes=10)
    rows = {row.name: row for row in summary.layers}
    conv1, pool, conv2, fc = rows["features.0"], rows["features.2"], rows["features.3"], rows["classifier"]
    assert conv1.output_shape == [8, 28, 28] and conv1.parameters == 8 * 1 * 3 * 3 + 8
    assert conv1.mult_adds == 8 * 28 * 28 * (1 * 3 * 3)
    # a dense layer from 1x28x28 to 8x28x28: 784 * 6272 weights + 6272 biases
    assert conv1.fc_equivalent_parameters == 784 * 6272 + 6272
    assert pool.output_shape == [8, 14, 14] and pool.parameters == 0
    assert conv2.parameters == 16 * 8 * 5 * 5 + 16 and conv2.mult_adds == 16 * 14 * 14 * (8 * 5 * 5)
    assert fc.parameters == 16 * 10 + 10 and fc.mult_adds == 160
    # receptive fields: 3; pool 3 + 1 = 4 (jump 2); conv 5 at jump 2: 4 + 4 * 2 = 12;
    # the global pool spans the 14x14 map at jump 2: 12 + 13 * 2 = 38 (more than the 28-pixel image, padding included)
    assert [conv1.receptive_field, pool.receptive_field, conv2.receptive_field] == [3, 4, 12]
    assert rows["features.5.0"].receptive_field == 38 and fc.receptive_field == 38
    assert summary.parameters == 80 + 3216 + 170 and summary.mult_adds == 56448 + 627200 + 160


def test_summary_receptive_field_through_residual_blocks():
    summary = summarize_model("resnet18", img_size=224)
    by_name = {row.name: row for row in summary.layers}
    # conv1 7x7/2 -> 7; maxpool 3x3/2 at jump 2 -> 11; layer1.0.conv1 3x3 at jump 4 -> 19
    assert by_name["conv1"].receptive_field == 7 and by_name["maxpool"].receptive_field == 11
    assert by_name["layer1.0.conv1"].receptive_field == 19
    assert summary.parameters == 11_181_642


@pytest.mark.slow
def test_summary_cli_json_and_checkpoint(digits_run):
    result = run_cli("summary", "lenet5", "--img-size", "28", "--channels", "1", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["parameters"] == 61_706 and data["layers"][0]["output_shape"] == [6, 28, 28]
    text = run_cli("summary", str(digits_run))
    assert text.returncode == 0 and "input 1x8x8" in text.stdout and "as FC" in text.stdout


@pytest.mark.slow
def test_summary_of_a_checkpoint_refuses_architecture_flags(digits_run):
    result = run_cli("summary", str(digits_run), "--img-size", "64")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--img-size describe an architecture" in result.stderr and "1x8x8 input, 10 classes" in result.stderr


@pytest.mark.parametrize(
    "name",
    [
        name if name in FAST_MODELS else pytest.param(name, marks=pytest.mark.slow)
        for name in list_models(modality="image")  # series models: tests/test_series_models.py
    ],
)
def test_count_multiply_adds_matches_pytorch_flop_counter(name):
    """The hook counter against an independent reference: PyTorch's FlopCounterMode counts 2 FLOPs per mult-add."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(name, num_classes=10, in_channels=3, img_size=32).train()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    model.train()
    assert count_multiply_adds(model, (3, 32, 32)) == counter.get_total_flops() // 2 > 0
    assert model.training  # counting leaves the model's mode as it was
