"""Every registered model carries its facts: classifier, layer groups, pretrained source, data-dependent arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.models import create_model, kwargs_for_data, list_models, model_entry, registry
from cnnkit.models.network import Network
from cnnkit.models.pretrained import pretrained_preprocessing, weight_source

# The architectures with ImageNet weights before their sources moved into the registry.
IMAGENET_MODELS = ["alexnet", "efficientnet_lite0", "googlenet", "inception_v3", "mobilenet_v2", "mobilenet_v3_large"]
IMAGENET_MODELS += ["mobilenet_v3_small", "resnet18", "resnet50", "vgg11", "vgg16"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_registered_model_has_a_classifier_and_layer_groups_covering_every_parameter_once(name):
    model = create_model(name, num_classes=3, in_channels=1, img_size=28, **kwargs_for_data(name, 54_000))
    assert isinstance(model, Network)
    classifier = model.get_classifier()
    assert isinstance(classifier, nn.Linear) and classifier.out_features == 3
    assert any(module is classifier for module in model.modules())
    early, late, head = model.layer_groups()
    assert early and [id(p) for p in head] == [id(p) for p in classifier.parameters()]
    grouped = [id(p) for group in (early, late, head) for p in group]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters()) and len(set(grouped)) == len(grouped)
    model.reset_classifier(5)  # test_models checks the logits; here, that the new layer is what the model reports
    assert model.get_classifier().out_features == 5 and model.get_classifier() is not classifier


@pytest.mark.parametrize("name", list_models(pretrained=True))
def test_pretrained_model_declares_complete_preprocessing(name):
    rgb = pretrained_preprocessing(name)
    assert rgb.img_size >= 224 and rgb.channels == 3 and rgb.resize == "crop"
    assert len(rgb.mean) == len(rgb.std) == 3
    assert all(0 <= m <= 1 for m in rgb.mean) and all(0 < s <= 1 for s in rgb.std)
    gray = pretrained_preprocessing(name, img_size=32, channels=1)
    assert gray.img_size == 32 and gray.mean == pytest.approx((sum(rgb.mean) / 3,))
    assert callable(weight_source(name).locate) and callable(weight_source(name).convert)


def test_registry_lists_the_imagenet_models_and_their_input_statistics():
    assert list_models(pretrained=True) == IMAGENET_MODELS
    assert pretrained_preprocessing("googlenet").mean == (0.5,) * 3  # trained in TensorFlow on (x - 0.5) / 0.5
    assert pretrained_preprocessing("efficientnet_lite0").std == (128 / 255,) * 3
    assert pretrained_preprocessing("resnet18").mean == pytest.approx((0.485, 0.456, 0.406))
    with pytest.raises(CnnkitError, match="no ImageNet weights for convnet"):
        weight_source("convnet")


def test_kwargs_for_data_come_from_the_registry():
    assert kwargs_for_data("convnet", 54_000) == {"hidden": 256} and kwargs_for_data("convnet", 999) == {"hidden": 0}
    assert all(kwargs_for_data(name, 54_000) == {} for name in list_models() if name != "convnet")
    with pytest.raises(CnnkitError, match="unknown model 'nonet'"):
        kwargs_for_data("nonet", 10)


def test_register_model_records_facts_given_bare_or_with_arguments(monkeypatch):
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))  # keep the real registry as it was

    @registry.register_model
    def tiny(num_classes: int, in_channels: int = 3, img_size: int = 32) -> nn.Module:
        return create_model("mlp", num_classes, in_channels, img_size, hidden=(4,))

    @registry.register_model(kwargs_for_data=lambda images: {"hidden": (images,)})
    def sized(num_classes: int, in_channels: int = 3, img_size: int = 32, hidden=(8,)) -> nn.Module:
        return create_model("mlp", num_classes, in_channels, img_size, hidden=hidden)

    assert model_entry("tiny").builder is tiny and model_entry("tiny").pretrained is None
    assert kwargs_for_data("sized", 6) == {"hidden": (6,)}
    assert create_model("sized", 2, 1, 4, **kwargs_for_data("sized", 6)).get_classifier().in_features == 6
    assert "tiny" in list_models() and "tiny" not in list_models(pretrained=True)


def test_register_model_records_the_modality_and_list_models_filters_by_it(monkeypatch):
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))

    @registry.register_model(modality="audio")
    def earful(num_classes: int, in_channels: int = 1, img_size: int = 32) -> nn.Module:
        return create_model("mlp", num_classes, in_channels, img_size, hidden=(4,))

    assert model_entry("earful").modality == "audio" and model_entry("convnet").modality == "image"
    assert "earful" in list_models(modality="audio") and "earful" not in list_models(modality="image")
    assert "convnet" in list_models(modality="image") and "convnet" not in list_models(modality="audio")
    with pytest.raises(ValueError, match="modality 'photo'"):
        registry.register_model(modality="photo")


class _EmbeddingNet(Network):
    """A classifier followed, in registration order, by another linear layer (an embedding projection)."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.classifier, self.embed = nn.Linear(4, 4), nn.Linear(4, 3), nn.Linear(4, 2)
        self.num_features = 4

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def get_classifier(self) -> nn.Linear:
        return self.classifier


def test_finetune_head_is_the_models_classifier_not_its_last_linear_layer():
    from cnnkit.training.optim import body_parameters, head_parameters

    model = _EmbeddingNet()
    assert head_parameters(model) == list(model.classifier.parameters())
    assert body_parameters(model) == [*model.body.parameters(), *model.embed.parameters()]
