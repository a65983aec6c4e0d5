"""Layers parametrized by rank: torch's own modules at rank 1 and 2, the 2-D ConvNet unchanged, a 1-D ConvNet."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.models import create_model
from cnnkit.models.layers import avg_pool, batch_norm, conv, conv_bn_relu, global_pool, max_pool


@pytest.mark.parametrize(
    ("rank", "kinds"),
    [
        (1, (nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveMaxPool1d, nn.BatchNorm1d)),
        (2, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.BatchNorm2d)),
    ],
)
def test_layers_are_torch_modules_of_the_rank(rank, kinds):
    made = (conv(2, 4, 3, rank=rank), max_pool(2, rank=rank), avg_pool(2, rank=rank))
    made += (global_pool("max", rank=rank), batch_norm(4, rank=rank))
    assert [type(module) for module in made] == list(kinds)
    x = torch.randn(3, 2, *(9,) * rank)
    assert conv_bn_relu(2, 4, pool=True, rank=rank)(x).shape == (3, 4, *(4,) * rank)


def test_layers_refuse_a_rank_they_do_not_have():
    with pytest.raises(CnnkitError, match="rank 3: cnnkit layers are 1-D"):
        conv(1, 4, 3, rank=3)


def _convnet_as_torch_layers(in_channels: int, hidden: int, num_classes: int) -> nn.Module:
    """The 28x28 ConvNet written out in plain torch.nn, as cnnkit 0.3 built it (checkpoints depend on it)."""

    def block(inputs: int, outputs: int) -> nn.Sequential:
        conv2d = nn.Conv2d(inputs, outputs, 3, padding=1, bias=False)
        return nn.Sequential(conv2d, nn.MaxPool2d(2), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True))

    reference = nn.Module()
    reference.features = nn.Sequential(block(in_channels, 16), block(16, 64), block(64, 128))  # 28 -> 14 -> 7 -> 3
    hidden_layer = nn.Sequential(nn.Linear(128 * 3 * 3, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(True))
    reference.head = nn.Sequential(nn.Flatten(), hidden_layer, nn.Dropout(0.0), nn.Linear(hidden, num_classes))
    return reference


def test_convnet_keeps_the_state_dict_and_outputs_of_plain_torch_layers():
    torch.manual_seed(0)
    model = create_model("convnet", num_classes=10, in_channels=1, img_size=28, hidden=256).eval()
    torch.manual_seed(0)
    reference = _convnet_as_torch_layers(1, 256, 10).eval()
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[key], theirs[key]) for key in theirs)
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(images), reference.head(reference.features(images)))


@pytest.mark.parametrize("stages", [3, 1])  # a flattening head, and a global-average-pooled one
def test_convnet_rank_1_trains_a_step_on_signals(stages):
    torch.manual_seed(0)
    model = create_model("convnet", num_classes=5, in_channels=2, img_size=100, rank=1, stages=stages)
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)) for m in model.modules())
    assert any(isinstance(m, nn.AdaptiveAvgPool1d) for m in model.head) == (stages == 1)
    signals, labels = torch.randn(4, 2, 100), torch.tensor([0, 1, 2, 4])  # (B, C, L)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model.train()(signals), labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert model.forward_features(signals).dim() == 3 and model.eval()(signals).shape == (4, 5)
