"""Grad-CAM against the ``grad-cam`` package, feature maps against a forward pass, and ``cnnkit explain`` end to end."""

import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cnnkit.deploy.load import load
from cnnkit.errors import CnnkitError
from cnnkit.models import create_model, list_models
from cnnkit.understand.explain import class_activation_map, feature_maps, find_target_layer, saliency


@pytest.mark.parametrize(("method", "reference"), [("gradcam", GradCAM), ("gradcam++", GradCAMPlusPlus)])
@pytest.mark.parametrize(("in_channels", "img_size"), [(1, 8), (3, 20)])
def test_class_activation_map_matches_the_grad_cam_package(method, reference, in_channels, img_size):
    torch.manual_seed(0)
    model = create_model("convnet", num_classes=5, in_channels=in_channels, img_size=img_size).eval()
    inputs = torch.randn(4, in_channels, img_size, img_size)
    classes = torch.tensor([0, 1, 2, 4])
    layer = find_target_layer(model, inputs)
    ours = class_activation_map(model, inputs, classes, layer, method).numpy()
    theirs = reference(model, [dict(model.named_modules())[layer]])(
        inputs, [ClassifierOutputTarget(int(c)) for c in classes]
    )
    assert ours.shape == theirs.shape == (4, img_size, img_size)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert ours.max() == pytest.approx(1.0)


def test_class_activation_map_of_a_trained_model_matches_the_reference(digits_run):
    classifier = load(digits_run, device="cpu")
    images, _ = classifier.labelled_images(None, "test")
    inputs = classifier.preprocessing.normalize(images.images[:16])
    predicted = classifier.model(inputs).argmax(1)
    layer = find_target_layer(classifier.model, inputs)
    assert layer == "features.2.0"  # the last of three convolutions (the first block pools 8x8 digits to 4x4)
    ours = class_activation_map(classifier.model, inputs, predicted, layer).numpy()
    theirs = GradCAM(classifier.model, [dict(classifier.model.named_modules())[layer]])(
        inputs, [ClassifierOutputTarget(int(c)) for c in predicted]
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def _image_model_or_skip(name):
    model = create_model(name, num_classes=4, in_channels=3, img_size=32).eval()
    inputs = torch.randn(2, 3, 32, 32)
    try:
        with torch.no_grad():
            model(inputs)
    except (RuntimeError, ValueError):
        pytest.skip(f"{name} does not take 3x32x32 images")
    return model, inputs


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models(modality="image"))
def test_every_registered_model_gets_a_target_layer_or_a_clear_error(name):
    model, inputs = _image_model_or_skip(name)
    convolutions = [n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    if not convolutions:
        with pytest.raises(CnnkitError, match="no convolution"):
            find_target_layer(model, inputs)
    else:
        layer = find_target_layer(model, inputs)
        assert layer in convolutions
        heatmaps = class_activation_map(model, inputs, torch.tensor([0, 1]), layer)
        assert heatmaps.shape == (2, 32, 32) and heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert saliency(model, inputs, torch.tensor([0, 1])).shape == (2, 32, 32)


def test_feature_map_shapes_match_a_forward_pass():
    model = create_model("convnet", num_classes=3, in_channels=1, img_size=28).eval()
    inputs = torch.randn(2, 1, 28, 28)
    expected, x = [], inputs
    with torch.no_grad():
        for block in model.features:  # an independent walk: conv-BN-ReLU blocks and pools, one at a time
            if isinstance(block, torch.nn.Sequential):
                expected.append(tuple(block[0](x).shape))
            x = block(x)
    maps = feature_maps(model, inputs)
    assert [tuple(m.shape) for m in maps.values()] == expected
    assert expected[0] == (2, 16, 28, 28) and expected[-1] == (2, 128, 7, 7)


def test_unknown_layer_names_the_convolutions():
    model = create_model("convnet", num_classes=3, in_channels=1, img_size=8)
    with pytest.raises(CnnkitError, match=r"features\.0\.0"):
        class_activation_map(model, torch.randn(1, 1, 8, 8), torch.tensor([0]), "nope")


@pytest.mark.slow
def test_explain_cli_writes_heatmaps_feature_maps_and_a_page(digits_run, tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for index in range(2):
        paths.append(tmp_path / f"digit{index}.png")
        Image.fromarray((digits.images[index] * 255 / 16).astype(np.uint8)).save(paths[-1])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    result = run_cli("explain", str(digits_run), *map(str, paths), str(broken), "--top-k", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "broken.png" in result.stderr
    folder = out / "explain"
    record = json.loads((folder / "explain.json").read_text())
    assert record["layer"] == "features.2.0" and len(record["images"]) == 2
    assert [len(image["explained"]) for image in record["images"]] == [2, 2]
    classifier = load(digits_run, device="cpu")
    inputs = classifier.preprocess([str(p) for p in paths])
    forward = feature_maps(classifier.model, classifier.preprocessing.normalize(inputs))
    assert record["images"][0]["feature_map_shapes"] == {n: list(m.shape[1:]) for n, m in forward.items()}
    page = (folder / "index.html").read_text()
    for name in ("filters.png", "image0_heatmaps.png", "image1_features.png"):
        assert (folder / name).stat().st_size > 1000 and name in page

    chosen = run_cli(
        "explain", str(digits_run), str(paths[0]), "--class", "3", "--layer", "features.2.0", "--out", str(out)
    )
    assert chosen.returncode == 0, chosen.stderr
    record = json.loads((out / "explain2" / "explain.json").read_text())
    assert record["layer"] == "features.2.0" and record["images"][0]["explained"][0]["label"] == "3"

    wrong = run_cli("explain", str(digits_run), str(paths[0]), "--layer", "head", "--out", str(out))
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr and "features.0.0" in wrong.stderr


@pytest.mark.slow
def test_explain_shows_the_probabilities_predict_gives_with_the_runs_flip(tmp_path):
    from cnnkit.deploy.torch_runtime import Classifier
    from cnnkit.modelinfo import CheckpointInfo, ModelSpec, Preprocessing
    from cnnkit.understand.explain import explain_images

    torch.manual_seed(0)
    model = create_model("convnet", num_classes=3, in_channels=1, img_size=12).eval()
    info = CheckpointInfo(ModelSpec("convnet", 3, 1, 12), ["a", "b", "c"], Preprocessing(12, 1, (0.5,), (0.25,)), {})
    info.extra["tta"] = "flip"
    classifier = Classifier(model, info, torch.device("cpu"))
    paths = []
    for index in range(2):  # lopsided images, so a view and its mirror image get different predictions
        pixels = np.zeros((12, 12), np.uint8)
        pixels[:, : 3 + 4 * index] = 255
        paths.append(tmp_path / f"left{index}.png")
        Image.fromarray(pixels).save(paths[-1])
    (tmp_path / "out").mkdir()
    explanation = explain_images(classifier, paths, tmp_path / "out", top_k=3)
    for record, prediction in zip(explanation.images, classifier.predict(paths, top_k=3)):
        assert [p["label"] for p in record["explained"]] == prediction.labels
        shown = [p["probability"] for p in record["explained"]]
        np.testing.assert_allclose(shown, prediction.probabilities, rtol=1e-5, atol=1e-6)


def test_explain_of_an_onnx_export_is_refused_in_one_line(tmp_path):
    from cnnkit.deploy.classifier import ImageClassifier
    from cnnkit.modelinfo import CheckpointInfo, ModelSpec, Preprocessing
    from cnnkit.understand.explain import explain_images

    export = ImageClassifier(
        CheckpointInfo(ModelSpec("convnet", 2, 1, 8), ["a", "b"], Preprocessing(8, 1, (0.5,), (0.5,)), {})
    )
    with pytest.raises(CnnkitError, match=r"explain needs PyTorch weights.*not a \.onnx"):
        explain_images(export, [tmp_path / "image.png"], tmp_path)
