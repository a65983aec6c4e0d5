"""ONNX export, int8 and ONNX Runtime prediction, checked against the PyTorch checkpoint they came from."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

import cnnkit
from cnnkit.data import decode_image, load_data

onnx = pytest.importorskip("onnx", reason="the deploy extra (pip install -e '.[test]') provides onnx")


@pytest.mark.slow
def test_export_matches_pytorch_on_validation_images(digits_run, digits_export):
    report = json.loads((digits_export / "export.json").read_text())
    assert report["parity"]["passed"] and report["parity"]["images"] == 179
    assert report["parity"]["max_abs_diff"] < 1e-4 and report["parity"]["top1_agreement"] == 1.0
    reference, exported = cnnkit.load(digits_run), cnnkit.load(digits_export / "model.onnx")
    images = load_data("digits").test.images
    for batch in (images[:1], images[:7], images):  # the batch axis is dynamic
        np.testing.assert_allclose(exported.logits(batch).numpy(), reference.logits(batch).numpy(), atol=1e-4)


@pytest.mark.slow
def test_export_metadata_holds_classes_and_exact_preprocessing(digits_run, digits_export):
    reference = cnnkit.load(digits_run)
    props = {p.key: p.value for p in onnx.load(digits_export / "model.onnx").metadata_props}
    assert json.loads(props["classes"]) == reference.classes
    preprocessing = json.loads(props["preprocessing"])
    assert {k: preprocessing[k] for k in ("img_size", "channels", "resize")} == {
        "img_size": 8,
        "channels": 1,
        "resize": "crop",
    }
    assert preprocessing["mean"] == list(reference.preprocessing.mean) and "uint8" in preprocessing["input"]
    exported = cnnkit.load(digits_export / "model.onnx")
    assert exported.preprocessing == reference.preprocessing and exported.classes == reference.classes


@pytest.mark.slow
def test_int8_export_is_judged_on_validation_and_test_images(digits_run, digits_export, tmp_path):
    from cnnkit.deploy.export import export_onnx

    int8 = json.loads((digits_export / "export.json").read_text())["int8"]
    assert int8["images"] == 179 + 359 and int8["calibration_images"] > 100
    assert int8["decision"] in ("accepted", "not enough images to tell")  # never refused for noise
    assert (digits_export / "model.int8.onnx").is_file()
    assert int8["drop_lower_bound"] <= int8["accuracy_drop"] <= int8["drop_upper_bound"]
    changed = round((1 - int8["top1_agreement"]) * int8["images"])  # images whose predicted class changed
    assert changed >= int8["fp32_only"] + int8["int8_only"]
    scored = [cnnkit.load(digits_export / "model.int8.onnx").evaluate(split=split)[0] for split in ("val", "test")]
    assert int8["accuracy_int8"] == pytest.approx(sum(r.accuracy * r.count for r in scored) / int8["images"])
    # Any drop is beyond -50 points with 95% confidence: the int8 model must be refused and removed.
    with pytest.raises(cnnkit.CnnkitError, match="int8 quantization is not a success: accuracy drop"):
        export_onnx(digits_run, out=tmp_path, name="strict", int8=True, max_accuracy_drop=-50, verbose=False)
    assert not (tmp_path / "strict" / "model.int8.onnx").exists() and (tmp_path / "strict" / "model.onnx").exists()
    assert json.loads((tmp_path / "strict" / "export.json").read_text())["int8"]["decision"] == "rejected"


@pytest.mark.parametrize(
    ("images", "fp32_only", "int8_only", "decision"),
    [
        (5000, 3, 2, "accepted"),  # clearly fine: 0.02 points, at most 0.12
        (539, 0, 5, "accepted"),  # int8 better
        (539, 20, 0, "rejected"),  # clearly bad: 3.7 points, at least 2.6
        (10, 10, 0, "rejected"),
        (20, 0, 0, "not enough images to tell"),  # no change, but 20 images bound the drop only to 12 points
        (179, 1, 0, "not enough images to tell"),  # the one image of 179 that failed the old fixed threshold
        (539, 3, 0, "not enough images to tell"),
    ],
)
def test_accuracy_drop_decides_on_constructed_counts(images, fp32_only, int8_only, decision):
    from cnnkit.deploy.quantize import AccuracyDrop

    drop = AccuracyDrop(images, fp32_only, int8_only, max_drop=0.5)
    assert drop.decision == decision and drop.to_dict()["passed"] == (decision == "accepted")
    assert drop.lower_bound <= drop.drop <= drop.upper_bound
    assert f"{images} images" in drop.format() and f"{drop.drop:.2f} points" in drop.format()


def test_paired_bound_matches_closed_form_and_covers_the_true_drop():
    from cnnkit.deploy.quantize import paired_bound

    z2 = 1.6448536269514722**2  # the one-sided 95% normal quantile, squared
    for images in (20, 539, 10_000):  # no image changed: Tango's bound is z^2 / (n + z^2)
        assert paired_bound(images, 0, 0) == pytest.approx(z2 / (images + z2))
    rng = np.random.default_rng(0)
    for images, losses, gains in ((500, 0.01, 0.005), (200, 0.02, 0.0), (100, 0.05, 0.05)):
        counts = rng.multinomial(images, [losses, gains, 1 - losses - gains], size=400)
        covered = np.mean([paired_bound(images, b, c) >= losses - gains for b, c, _ in counts])
        assert covered >= 0.92  # nominal 0.95; 400 draws put the estimate within about 0.02


@pytest.mark.slow
def test_export_out_ending_in_onnx_names_the_file(digits_run, tmp_path):
    target = tmp_path / "deploy" / "digits.onnx"
    result = run_cli("export", str(digits_run), "--int8", "--out", str(target))
    assert result.returncode == 0, result.stderr
    written = sorted(path.name for path in target.parent.iterdir())
    assert written == ["digits.export.json", "digits.int8.onnx", "digits.onnx"] and target.is_file()
    report = json.loads((target.parent / "digits.export.json").read_text())
    assert report["model"] == str(target) and report["int8"]["model"] == str(target.parent / "digits.int8.onnx")
    again = run_cli("export", str(digits_run), "--out", str(target))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_export_paths_refuse_a_name_with_an_onnx_out(tmp_path):
    from cnnkit.deploy.export import export_paths

    with pytest.raises(cnnkit.CnnkitError, match="leave out --name"):
        export_paths(tmp_path / "model.onnx", "x")
    assert export_paths(tmp_path / "a" / "m.ONNX", None) == tuple(
        tmp_path / "a" / name for name in ("m.ONNX", "m.int8.onnx", "m.export.json")
    )
    assert export_paths(tmp_path / "runs", None)[0] == tmp_path / "runs" / "export" / "model.onnx"
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.slow
def test_export_above_tolerance_is_an_error(digits_run, tmp_path):
    result = run_cli("export", str(digits_run), "--atol", "0", "--out", str(tmp_path), "--name", "x")
    assert result.returncode == 2 and "ONNX Runtime disagrees with PyTorch" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x" / "model.onnx").exists()


@pytest.mark.slow
def test_predict_cli_with_onnx_gives_the_checkpoints_answers(digits_run, digits_export, tmp_path):
    for index, image in enumerate(load_data("digits").test.images[:3]):
        Image.fromarray(image[0].numpy()).save(tmp_path / f"{index}.png")
    answers = {}
    for model in (digits_run, digits_export / "model.onnx"):
        result = run_cli("predict", str(model), *sorted(map(str, tmp_path.glob("*.png"))), "--json")
        assert result.returncode == 0, result.stderr
        answers[model] = [json.loads(line) for line in result.stdout.splitlines()]
    checkpoint, exported = answers.values()
    assert [a["labels"] for a in checkpoint] == [a["labels"] for a in exported]
    np.testing.assert_allclose([a["probabilities"] for a in checkpoint], [a["probabilities"] for a in exported], 1e-5)


def exif_rotated(tmp_path):
    """A real photo saved upright, and saved as rotated pixels plus an EXIF tag saying how to turn them back."""
    from sklearn.datasets import load_sample_image

    upright = Image.fromarray(load_sample_image("china.jpg")).crop((40, 20, 340, 220))  # 300x200, not square
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.png", exif=exif)
    upright.save(tmp_path / "upright.png")
    return tmp_path / "upright.png", tmp_path / "rotated.png"


@pytest.mark.slow  # shares the digits ONNX export fixture (5 s to build)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # starlette's TestClient suggests httpx2
def test_exif_rotated_photo_gives_the_same_answer_everywhere(digits_run, digits_export, tmp_path):
    from fastapi.testclient import TestClient

    from cnnkit.deploy.serve.app import create_app

    upright, rotated = exif_rotated(tmp_path)
    np.testing.assert_array_equal(decode_image(rotated, 8, 1), decode_image(upright, 8, 1))
    ignoring_exif = np.asarray(Image.open(rotated).convert("L"))  # what a decoder without EXIF handling sees
    assert not np.array_equal(decode_image(ignoring_exif, 8, 1), decode_image(upright, 8, 1))
    checkpoint, exported = cnnkit.load(digits_run), cnnkit.load(digits_export / "model.onnx")
    expected = checkpoint.predict_proba(str(upright))
    np.testing.assert_array_equal(checkpoint.predict_proba(str(rotated)), expected)
    np.testing.assert_allclose(exported.predict_proba(str(rotated)), expected, atol=1e-5)
    served = TestClient(create_app(exported)).post("/predict?top_k=10", content=rotated.read_bytes()).json()
    ranked = np.argsort(-expected[0], kind="stable")
    assert served["labels"] == [checkpoint.classes[i] for i in ranked]
    np.testing.assert_allclose(served["probabilities"], expected[0][ranked], atol=1e-5)


@pytest.mark.slow  # shares the digits ONNX export fixture (5 s to build)
def test_onnx_evaluate_matches_checkpoint(digits_run, digits_export):
    reference, _ = cnnkit.load(digits_run).evaluate()
    exported, _ = cnnkit.load(digits_export / "model.onnx").evaluate()
    assert exported.count == reference.count == 359
    assert exported.confusion == reference.confusion


@pytest.mark.slow  # shares the digits ONNX export fixture (5 s to build)
def test_benchmark_times_every_runtime(digits_export):
    from cnnkit.deploy.benchmark import benchmark

    rows = benchmark(digits_export / "model.onnx", seconds=0.05)
    assert [row["runtime"] for row in rows] == ["onnxruntime", "onnxruntime int8"]
    for row in rows:
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["images_per_s"] > 0 and row["accuracy"] > 0.9


def test_not_an_onnx_model_is_refused(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(cnnkit.CnnkitError, match="not a cnnkit ONNX model"):
        cnnkit.load(tmp_path / "model.onnx")


# A Python that cannot import PyTorch, running the real command line.
WITHOUT_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} is blocked: ONNX prediction must not need it")
sys.meta_path.insert(0, NoTorch())
from cnnkit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_predict_with_onnx_runs_without_pytorch(digits_run, digits_export, tmp_path):
    for index, image in enumerate(load_data("digits").test.images[:3]):
        Image.fromarray(image[0].numpy()).save(tmp_path / f"{index}.png")
    images = sorted(map(str, tmp_path.glob("*.png")))
    command = [sys.executable, "-c", WITHOUT_TORCH, "predict", str(digits_export / "model.onnx"), *images, "--json"]
    blocked = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert blocked.returncode == 0, blocked.stderr
    with_torch = run_cli("predict", str(digits_run), *images, "--json")
    labels = [[json.loads(line)["labels"] for line in result.stdout.splitlines()] for result in (blocked, with_torch)]
    assert len(labels[0]) == 3 and labels[0] == labels[1]


@pytest.mark.slow
def test_export_folds_the_heads_hidden_layer_and_keeps_the_function(tmp_path):
    import torch

    from cnnkit.deploy.export import write_onnx
    from cnnkit.modelinfo import CheckpointInfo, ModelSpec, Preprocessing
    from cnnkit.models import build

    spec = ModelSpec("convnet", 10, 1, 28, {"hidden": 256})
    torch.manual_seed(0)
    model = build(spec).eval()
    norm = model.head[1][1]
    norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2), norm.weight.data.uniform_(-1, 1)
    preprocessing = Preprocessing(28, 1, (0.3,), (0.35,))
    write_onnx(model, CheckpointInfo(spec, [str(k) for k in range(10)], preprocessing, {}), tmp_path / "m.onnx")
    graph = onnx.load(tmp_path / "m.onnx").graph
    assert not any(node.op_type == "BatchNormalization" for node in graph.node)
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(preprocessing.normalize(images))
    exported = cnnkit.load(tmp_path / "m.onnx").logits(images)
    np.testing.assert_allclose(np.asarray(exported), expected.numpy(), atol=1e-4)
