"""Every registered architecture: small grayscale inputs, one training step, the shared interface."""

from __future__ import annotations

import pytest
import torch

from cnnkit.models import create_model, list_models
from cnnkit.models.convnet import convnet_kwargs_for
from cnnkit.models.fold import ChannelSign, fold_pooled_batch_norms


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models(modality="image"))  # series models: tests/test_series_models.py
def test_model_trains_one_step_and_predicts_on_28x28_grayscale(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_channels=1, img_size=28)
    images, labels = torch.randn(2, 1, 28, 28), torch.tensor([0, 2])
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)  # plain SGD: no optimizer state for 130M-weight VGGs
    model.train()
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    model.eval()
    with torch.no_grad():
        features = model.forward_features(images)
        logits = model(images)
        assert logits.shape == (2, 3)
        assert torch.allclose(model.forward_head(features), logits, atol=1e-5)
    assert features.shape[1] == model.num_features
    model.reset_classifier(5)
    assert model.forward_head(features).shape == (2, 5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet", "vgg11", "googlenet", "inception_v3", "lenet5", "resnet18"])
def test_model_keeps_a_feature_map_on_8x8_digits(name):
    model = create_model(name, num_classes=10, in_channels=1, img_size=8).eval()
    with torch.no_grad():
        features = model.forward_features(torch.zeros(1, 1, 8, 8))
    assert features.shape[-1] >= 1 and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_large_inputs_keep_the_original_stems():
    resnet = create_model("resnet18", num_classes=10, img_size=224)
    assert resnet.conv1.stride == (2, 2) and isinstance(resnet.maxpool, torch.nn.MaxPool2d)
    small = create_model("resnet18", num_classes=10, img_size=28)
    assert small.conv1.stride == (1, 1)


@pytest.mark.slow
def test_torchvision_architectures_keep_torchvision_parameter_names():
    import torchvision

    ours = create_model("resnet50", num_classes=1000, img_size=224).state_dict()
    theirs = torchvision.models.resnet50().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in theirs)


def test_convnet_head_gets_a_hidden_layer_with_enough_training_images():
    assert convnet_kwargs_for(9_999) == {"hidden": 0}
    assert convnet_kwargs_for(54_000) == {"hidden": 256}
    images = torch.randn(4, 1, 28, 28)
    with_hidden = create_model("convnet", num_classes=10, in_channels=1, img_size=28, **convnet_kwargs_for(54_000))
    without = create_model("convnet", num_classes=10, in_channels=1, img_size=28)
    assert with_hidden.head[-1].in_features == 256 and isinstance(with_hidden.head[1][1], torch.nn.BatchNorm1d)
    assert without.head[-1].in_features == 128 * 3 * 3
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in without.modules())
    assert with_hidden(images).shape == without(images).shape == (4, 10)


@pytest.mark.parametrize("negative_scales", [False, True])
def test_folding_batch_norm_across_max_pooling_keeps_the_function(negative_scales):
    torch.manual_seed(0)
    model = create_model("convnet", num_classes=10, in_channels=1, img_size=28, hidden=256)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):  # the head's too
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.bias.data.uniform_(-1, 1)
        norm.weight.data.uniform_(-1 if negative_scales else 0.1, 1)
    images = torch.randn(8, 1, 28, 28)
    folded = fold_pooled_batch_norms(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, ChannelSign) for m in folded.modules()) == negative_scales
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model.eval()(images), atol=1e-4, rtol=1e-4)
