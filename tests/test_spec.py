"""Networks from layer specs: parsing, shape checks with clear messages, files, 1-D layers, training."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from cnnkit.errors import CnnkitError
from cnnkit.models import create_model
from cnnkit.models.spec import parse_spec, parse_token, resolve_model


def test_parse_token_reads_numbers_and_options():
    assert parse_token("conv64k5s2p1d1g2", 1) == {
        "type": "conv",
        "out_channels": 64,
        "kernel_size": 5,
        "stride": 2,
        "padding": 1,
        "dilation": 1,
        "groups": 2,
    }
    assert parse_token("dropout0.25", 1) == {"type": "dropout", "p": 0.25}
    assert parse_token("conv1d8k7", 1) == {"type": "conv1d", "out_channels": 8, "kernel_size": 7}
    assert parse_token("fc", 1) == {"type": "fc"}


def test_spec_string_builds_the_layers_it_names():
    model = create_model("spec", 10, 1, 28, layers="conv32k3 relu pool2 conv64k3 relu pool2 flatten fc128 relu fc")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 32, (3, 3), (1, 1)),
        (32, 64, (3, 3), (1, 1)),
    ]
    assert model.features[-2].in_features == 64 * 7 * 7 and model.classifier.out_features == 10
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("conv8 pool2 pool2 pool2 pool2 gap fc", "layer 5 (pool kernel_size=2) received shape (8, 1, 1)"),
        ("flatten fc", "layer 1 (flatten) received shape (1, 8, 8): flatten before any convolution"),
        ("conv8 relu wobble fc", "layer 3 'wobble': unknown layer"),
        ("conv8 relu gap fcx", "layer 4 'fcx': unknown layer"),
        ("conv8q3 gap fc", "layer 1 'conv8q3': unknown option 'q'"),
        ("conv8 gap dropout1.5 fc", "layer 3 (dropout p=1.5) received shape (8,)"),
        ("conv8 fc", "layer 2 (fc) received shape (8, 8, 8): a fully connected layer needs flat features"),
        ("conv8 gap fc32", "gives shape (32,); a classifier must end with fc"),
        ("conv1d8 gap fc", "layer 1 (conv1d out_channels=8) received shape (1, 8, 8): conv1d expects"),
        ("conv6g4 gap fc", "groups=4 must divide"),
    ],
)
def test_spec_mistakes_name_the_layer_position_and_shape(spec, message):
    with pytest.raises(CnnkitError) as caught:
        create_model("spec", 10, 1, 8, layers=spec)
    assert message in str(caught.value)


def test_one_dimensional_layers_take_signals():
    model = create_model("spec", 4, layers="conv1d8k5 relu pool1d2 bn conv1d16 avgpool1d2 gap fc", input=[2, 100])
    assert model(torch.zeros(3, 2, 100)).shape == (3, 4)


def test_yaml_and_json_spec_files(tmp_path):
    layers = ["conv16k3", {"type": "relu"}, {"type": "pool", "kernel_size": 2}, "gap", {"type": "fc"}]
    json_file = tmp_path / "net.json"
    json_file.write_text(json.dumps({"input": [1, 8, 8], "layers": layers}))
    yaml_file = tmp_path / "net.yaml"
    yaml_file.write_text("layers:\n  - conv16k3\n  - type: relu\n  - {type: pool, kernel_size: 2}\n  - gap\n  - fc\n")
    for path in (json_file, yaml_file):
        name, kwargs = resolve_model(str(path))
        assert name == "spec" and kwargs["layers"][2] == {"type": "pool", "kernel_size": 2}
        assert create_model(name, 10, 1, 8, **kwargs)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: [conv8, {type: conv, filters: 3}]\n")
    with pytest.raises(CnnkitError, match="layer 2 conv: unknown option"):
        parse_spec(str(bad))


def test_unknown_model_name_lists_the_choices():
    hint = r"unknown model 'resnet-18' \(did you mean 'resnet18'\?\); choose one of: alexnet"
    with pytest.raises(CnnkitError, match=hint):
        resolve_model("resnet-18")  # not resnet19: as close to resnet1d as to resnet18


@pytest.mark.slow
def test_cli_trains_a_spec_string_and_reloads_it(tmp_path):
    spec = "conv16k3 bn relu pool2 conv32k3 relu gap dropout0.1 fc"
    result = run_cli("train", "--model", spec, "--epochs", "1", "--out", str(tmp_path), "--name", "spec")
    assert result.returncode == 0, result.stderr
    predicted = run_cli("summary", str(tmp_path / "spec"), "--json")
    summary = json.loads(predicted.stdout)
    assert summary["input_shape"] == [1, 8, 8] and summary["layers"][0]["output_shape"] == [16, 8, 8]
    broken = run_cli("train", "--model", "conv8 pool2 pool2 pool2 pool2 gap fc", "--out", str(tmp_path))
    assert broken.returncode == 2 and "layer 5 (pool kernel_size=2) received shape (8, 1, 1)" in broken.stderr
    assert "Traceback" not in broken.stderr
