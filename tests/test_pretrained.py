"""ImageNet weights: offline EfficientNet-Lite0 on real photos, torchvision's download path, local files, errors."""

from __future__ import annotations

import hashlib

import pytest
import safetensors.torch
import torch
from conftest import run_cli
from PIL import Image
from sklearn.datasets import load_sample_image

from cnnkit.deploy.load import load
from cnnkit.errors import CnnkitError
from cnnkit.models import create_model
from cnnkit.models import pretrained as pretrained_module
from cnnkit.models.pretrained import adapt_input_conv, create_pretrained


@pytest.fixture(scope="module")
def lite0():
    return load("efficientnet_lite0", device="cpu", pretrained=True)


@pytest.fixture
def photo(tmp_path):
    """A real photo of a Chinese palace, shipped with scikit-learn."""
    path = tmp_path / "china.jpg"
    Image.fromarray(load_sample_image("china.jpg")).save(path)
    return path


def test_efficientnet_lite0_recognises_real_photos(lite0):
    china, flower = (Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg"))
    palace, daisy = lite0.predict([china, flower], top_k=3)
    assert palace.label == "palace"
    assert "daisy" in daisy.labels
    assert lite0.preprocessing.mean == (127 / 255,) * 3 and lite0.preprocessing.img_size == 224


@pytest.mark.slow
def test_cli_predicts_imagenet_names(photo):
    result = run_cli("predict", "efficientnet_lite0", "--pretrained", str(photo), "--top-k", "2", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1] == "palace"


def test_grayscale_first_layer_sums_the_rgb_filters():
    model = create_model("resnet18", num_classes=10)
    rgb = model.conv1.weight.detach().clone()
    adapt_input_conv(model, 1)
    assert torch.allclose(model.conv1.weight, rgb.sum(1, keepdim=True))
    gray = torch.rand(1, 1, 32, 32)
    rgb_model = create_model("resnet18", num_classes=10)
    rgb_model.conv1.weight.data = rgb
    assert torch.allclose(model.conv1(gray), rgb_model.conv1(gray.expand(-1, 3, -1, -1)), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "googlenet"])
def test_grayscale_builder_uses_the_same_adapter_as_pretrained_weights(name):
    torch.manual_seed(0)
    rgb = create_model(name, num_classes=10, img_size=32)
    torch.manual_seed(0)
    gray = create_model(name, num_classes=10, in_channels=1, img_size=32)
    first = [next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)) for model in (rgb, gray)]
    assert first[1].in_channels == 1 and torch.equal(first[1].weight, first[0].weight.sum(1, keepdim=True))
    image = torch.rand(2, 1, 32, 32)
    with torch.no_grad():  # summed filters respond to a gray image as the RGB ones do to its three equal channels
        torch.testing.assert_close(first[1](image), first[0](image.expand(-1, 3, -1, -1)), atol=1e-5, rtol=1e-5)


def _fake_official_file(tmp_path, name: str):
    """A state dict of ``name`` saved under a torchvision-style file name whose hash prefix is real."""
    state = create_model(name, 1000, img_size=224).state_dict()
    staging = tmp_path / "staging.pth"
    torch.save(state, staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()[:8]
    target = tmp_path / "server" / f"{name}-{digest}.pth"
    target.parent.mkdir()
    staging.rename(target)
    return target, state


def test_torchvision_weights_download_into_the_hub_cache(tmp_path, monkeypatch):
    served, state = _fake_official_file(tmp_path, "mobilenet_v3_small")
    monkeypatch.setattr(pretrained_module, "weights_url", lambda name: served.as_uri())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    model = create_pretrained("mobilenet_v3_small", num_classes=4, in_channels=1, img_size=32)
    assert (tmp_path / "hub" / "checkpoints" / served.name).is_file()
    assert torch.equal(model.features[1].block[0][0].weight, state["features.1.block.0.0.weight"])
    assert model.classifier[-1].out_features == 4 and model.features[0][0].in_channels == 1


def test_missing_weights_offline_say_how_to_supply_them(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained_module, "weights_url", lambda name: (tmp_path / "nowhere" / "resnet18.pth").as_uri())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CnnkitError, match="pass --weights PATH"):
        create_pretrained("resnet18", num_classes=10)


def test_local_weights_file_in_safetensors(tmp_path):
    state = create_model("mobilenet_v2", 1000, img_size=224).state_dict()
    path = tmp_path / "mobilenet_v2.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = create_pretrained("mobilenet_v2", num_classes=1000, weights=path)
    assert torch.equal(model.classifier[1].weight, state["classifier.1.weight"])
    with pytest.raises(CnnkitError, match="not ImageNet weights of resnet18"):
        create_pretrained("resnet18", num_classes=10, weights=path)


def test_architectures_without_imagenet_weights_are_refused():
    with pytest.raises(CnnkitError, match="no ImageNet weights for lenet5"):
        create_pretrained("lenet5", num_classes=10)
