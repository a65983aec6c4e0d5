"""Deploying a detector (deploy/detect_export.py, onnx_detector.py, detector.py, drawing.py): export, predict, draw."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from test_detect_train import TRAIN_ARGS, make_squares_folder
from test_export import WITHOUT_TORCH

import cnnkit
from cnnkit.deploy.detect_export import BOX_ATOL, SCORE_ATOL, check_box_parity, tracing_example, write_detector_onnx
from cnnkit.deploy.detector import ImageDetector
from cnnkit.deploy.drawing import drawn_names
from cnnkit.deploy.load import load_detector
from cnnkit.deploy.onnx_detector import OnnxDetector, nms
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo, ModelSpec, Preprocessing

pytest.importorskip("onnxruntime", reason="the deploy extra (pip install -e '.[test]') provides onnxruntime")

PREDICT_ARGS = ("--json", "--threshold", "0.1", "--max-boxes", "5")


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_squares_folder(tmp_path_factory.mktemp("detection") / "squares")


@pytest.fixture(scope="module")
def detection_run(squares: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A boxnet run trained once for this module through the real CLI (test_detect_train's set and settings)."""
    out = tmp_path_factory.mktemp("runs")
    result = run_cli("train", "--task", "detect", "--data", str(squares), *TRAIN_ARGS, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out / "train"


@pytest.fixture(scope="module")
def detection_export(detection_run: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """``cnnkit export`` of the run to a named .onnx file, and the command's output."""
    path = detection_run.parent / "exports" / "boxnet.onnx"
    result = run_cli("export", str(detection_run), "--out", str(path))
    assert result.returncode == 0, result.stderr
    return path, result


@pytest.fixture(scope="module")
def photos(squares: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three of the set's images: one as it is, one stretched to 96x64, one to 50x80 (the map back is exercised)."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for index, size in enumerate([None, (96, 64), (50, 80)]):
        image = Image.open(squares / "images" / f"img{index:03d}.png")
        image = image if size is None else image.resize(size, Image.Resampling.BILINEAR)
        image.save(folder / f"photo{index}.png")
        paths.append(str(folder / f"photo{index}.png"))
    return paths


def _records(result: subprocess.CompletedProcess) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and text in result.stderr, result.stderr


def test_onnx_nms_keeps_what_torchvision_keeps():
    from torchvision.ops import batched_nms

    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 60, (300, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(4, 30, (300, 2))], 1).astype(np.float32)
    scores = rng.permutation(300).astype(np.float32) / 300  # distinct, so the order is defined
    labels = rng.integers(0, 3, 300)
    shift = (labels * (boxes.max() + 1.0))[:, None]
    ours = nms(boxes + shift, scores, 0.6)
    theirs = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.6).numpy()
    assert 10 < len(ours) < 300 and np.array_equal(ours, theirs)
    assert np.array_equal(nms(boxes + shift, scores, 0.6, limit=5), theirs[:5])  # the best 5 are final once found


class _Shifted(ImageDetector):
    """A detector that returns fixed detections moved by ``shift`` px (to test the parity check)."""

    def __init__(self, shift: float) -> None:
        super().__init__(
            CheckpointInfo(ModelSpec("boxnet", 1, 3, 8), ["a"], Preprocessing(8, 3, (0,) * 3, (1,) * 3), {})
        )
        self.shift = shift

    def detect(self, pixels: np.ndarray) -> list[dict[str, np.ndarray]]:
        box = np.array([[1.0, 1.0, 5.0, 5.0]], np.float32) + self.shift
        return [{"boxes": box, "scores": np.array([0.9], np.float32), "labels": np.array([0])} for _ in pixels]


def test_box_parity_fails_on_a_box_half_a_pixel_off_or_missing():
    pixels = np.zeros((2, 3, 8, 8), np.uint8)
    same = check_box_parity(_Shifted(0.0), _Shifted(0.0), pixels, floor=0.06)
    off = check_box_parity(_Shifted(0.0), _Shifted(0.5), pixels, floor=0.06)
    elsewhere = check_box_parity(_Shifted(0.0), _Shifted(3.0), pixels, floor=0.06)  # IoU 1/31: no counterpart
    assert same.passed and (same.boxes, same.matched, same.max_box_diff) == (2, 2, 0.0)
    assert not off.passed and off.matched == 2 and off.max_box_diff == pytest.approx(0.5)
    assert not elsewhere.passed and (elsewhere.boxes, elsewhere.matched) == (2, 0)


class _Session:
    """An ONNX Runtime session stand-in that returns fixed outputs and counts the images it is fed."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        self.outputs, self.fed = outputs, []

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.fed.append(next(iter(feeds.values())).shape)
        return self.outputs[: len(names)]


def _export_info(detection: dict) -> CheckpointInfo:
    prep = Preprocessing(8, 3, (0,) * 3, (1,) * 3)
    return CheckpointInfo(ModelSpec("fcos", 2, 3, 8), ["a", "b"], prep, {"task": "detect", "detection": detection})


def test_onnx_detector_selects_where_the_export_metadata_says():
    box = np.array([[1.0, 1.0, 5.0, 5.0]], np.float32)
    final = _Session([box, np.array([0.9], np.float32), np.array([1], np.int32)])
    in_graph = OnnxDetector("x.onnx", opened=(final, _export_info({"selection": "graph", "score_threshold": 0.05})))
    found = in_graph.detect(np.zeros((2, 3, 8, 8), np.uint8))
    assert final.fed == [(1, 3, 8, 8)] * 2 and found[1]["labels"].dtype == np.int64 and found[1]["labels"][0] == 1
    # no "selection" key: an export written before it existed, boxnet's decoded maps (one cell, two classes)
    settings = {"candidates": 10, "score_threshold": 0.05, "nms_threshold": 0.6, "max_detections": 5}
    maps = _Session([box[None].repeat(2, 0), np.array([[[0.2, 0.7]]] * 2, np.float32)])
    found = OnnxDetector("x.onnx", opened=(maps, _export_info(settings))).detect(np.zeros((2, 3, 8, 8), np.uint8))
    assert maps.fed == [(2, 3, 8, 8)] and list(found[0]["labels"]) == [1, 0]
    with pytest.raises(CnnkitError, match="selects its boxes by 'somewhere'"):
        OnnxDetector("x.onnx", opened=(maps, _export_info({**settings, "selection": "somewhere"})))


def test_tracing_example_refuses_a_detector_that_finds_nothing():
    class _Blind(_Shifted):
        def detect(self, pixels: np.ndarray) -> list[dict[str, np.ndarray]]:
            return [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)} for _ in pixels]

    pixels = np.arange(2 * 3 * 8 * 8, dtype=np.uint8).reshape(2, 3, 8, 8)
    assert np.array_equal(tracing_example(_Shifted(0.0), pixels), pixels[0])
    with pytest.raises(CnnkitError, match="found no box above its score threshold on any of the run's 2"):
        tracing_example(_Blind(0.0), pixels)


@pytest.mark.slow
def test_torchvision_detector_export_selects_boxes_in_the_graph_as_pytorch_does(tmp_path: Path):
    from cnnkit.deploy.torch_runtime import TorchDetector
    from cnnkit.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("ssdlite", num_classes=2, img_size=64).eval()
    for module in model.detector.head.classification_head.modules():  # spread the untrained scores: no ties to break
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.3)
    prep = Preprocessing(64, 3, (0.5,) * 3, (0.25,) * 3)
    info = CheckpointInfo(ModelSpec("ssdlite", 2, 3, 64), ["a", "b"], prep, {"task": "detect"})
    reference = TorchDetector(model, info, torch.device("cpu"))
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    write_detector_onnx(model, info, tmp_path / "model.onnx", tracing_example(reference, pixels))
    exported = load_detector(tmp_path / "model.onnx")
    assert exported.settings == {"selection": "graph", "score_threshold": 0.05, "max_detections": 100}
    parity = check_box_parity(reference, exported, pixels, floor=0.06)
    assert parity.passed and parity.boxes > 100, parity.format()
    [record] = exported.predict(np.ascontiguousarray(pixels[0].transpose(1, 2, 0)), threshold=0.06)  # (H, W, C)
    assert 0 < len(record.to_dict()["boxes"]) <= 100


def test_drawn_names_number_a_repeated_stem():
    assert drawn_names(["a/x.jpg", "b/x.png", "y.png"]) == ["x.boxes.png", "x.2.boxes.png", "y.boxes.png"]


@pytest.mark.slow
def test_detect_export_prints_and_records_box_parity_with_pytorch(detection_export):
    path, result = detection_export
    assert "PyTorch boxes matched" in result.stdout
    parity = json.loads(path.with_name("boxnet.export.json").read_text())["parity"]
    assert parity["passed"] and parity["images"] == 8  # the run's validation split (0.25 of 32)
    assert parity["boxes"] > 0 and parity["matched"] == parity["boxes"]
    assert parity["max_box_diff"] <= BOX_ATOL and parity["max_score_diff"] <= SCORE_ATOL


@pytest.mark.slow
def test_detect_predict_json_is_the_same_for_the_run_and_its_export(detection_run, detection_export, photos):
    run = _records(run_cli("predict", str(detection_run), *photos, *PREDICT_ARGS))
    onnx = _records(run_cli("predict", str(detection_export[0]), *photos, *PREDICT_ARGS))
    assert [r["path"] for r in run] == [r["path"] for r in onnx] == photos
    for ours, theirs, size in zip(run, onnx, [(64, 64), (96, 64), (50, 80)]):
        assert 0 < len(ours["boxes"]) <= 5 and len(ours["boxes"]) == len(theirs["boxes"])
        for a, b in zip(ours["boxes"], theirs["boxes"]):
            assert a["label"] == b["label"] and abs(a["score"] - b["score"]) <= SCORE_ATOL and a["score"] >= 0.1
            assert np.abs(np.subtract(a["box"], b["box"])).max() <= 0.02  # rounded to 0.01 px
            assert 0 <= a["box"][0] < a["box"][2] <= size[0] and 0 <= a["box"][1] < a["box"][3] <= size[1]


@pytest.mark.slow
def test_detect_predict_with_onnx_runs_without_pytorch(detection_export, photos):
    command = [sys.executable, "-c", WITHOUT_TORCH, "predict", str(detection_export[0]), *photos, *PREDICT_ARGS]
    blocked = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert blocked.returncode == 0, blocked.stderr
    expected = [p.to_dict() for p in load_detector(detection_export[0]).predict_files(photos, 0.1, 5)[0]]
    assert [json.loads(line) for line in blocked.stdout.splitlines()] == expected


@pytest.mark.slow
def test_detect_predict_draw_writes_each_image_with_its_boxes(detection_run, detection_export, photos, tmp_path):
    for model, folder in ((detection_run, tmp_path / "run"), (detection_export[0], tmp_path / "onnx")):
        result = run_cli("predict", str(model), *photos, "--threshold", "0.1", "--draw", str(folder))
        assert result.returncode == 0, result.stderr
        for photo in photos:
            drawn, original = Image.open(folder / f"{Path(photo).stem}.boxes.png"), Image.open(photo).convert("RGB")
            assert drawn.size == original.size
            assert np.abs(np.asarray(drawn, np.int16) - np.asarray(original, np.int16)).max() > 0


@pytest.mark.slow
def test_detect_deploy_bad_input_is_one_line(detection_run, detection_export, photos, tmp_path):
    path = detection_export[0]
    (tmp_path / "file").write_text("")
    _one_line_error(run_cli("predict", str(path), *photos, "--draw", str(tmp_path / "file")), "is a file")
    _one_line_error(run_cli("export", str(detection_run), "--int8", "--out", str(tmp_path / "x.onnx")), "--int8")
    _one_line_error(run_cli("export", str(detection_run), "--out", str(path)), "already exists")
    _one_line_error(run_cli("explain", str(path), photos[0]), "is a detector's export")
    with pytest.raises(CnnkitError, match=r"is a detector's export \(boxnet\)"):
        cnnkit.load(path)


@pytest.fixture(scope="module")
def detection_clients(detection_run, detection_export):
    """Test clients of the detection service on the run (PyTorch) and on its export (ONNX Runtime)."""
    pytest.importorskip("fastapi", reason="the deploy extra (pip install -e '.[test]') provides fastapi")
    pytest.importorskip("httpx", reason="the test extra provides httpx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # starlette 1.x suggests httpx2
        from fastapi.testclient import TestClient

    from cnnkit.deploy.serve.detect import create_detection_app

    return [
        TestClient(create_detection_app(load_detector(model, device="cpu"), max_upload_bytes=100_000))
        for model in (detection_run, detection_export[0])
    ]


@pytest.mark.slow
def test_detect_serve_returns_the_boxes_predict_prints(detection_clients, detection_export, photos):
    data = Path(photos[1]).read_bytes()  # 96x64: boxes in the upload's own pixels
    answers = [
        client.post("/predict?threshold=0.1&max_boxes=5", files={"file": ("a.png", data, "image/png")})
        for client in detection_clients
    ]
    assert [answer.status_code for answer in answers] == [200, 200]
    run, onnx = (answer.json() for answer in answers)
    [expected] = _records(run_cli("predict", str(detection_export[0]), photos[1], *PREDICT_ARGS))
    assert (onnx["width"], onnx["height"]) == (96, 64) and onnx["boxes"] == expected["boxes"]
    assert 0 < len(run["boxes"]) == len(onnx["boxes"]) <= 5
    for a, b in zip(run["boxes"], onnx["boxes"]):
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) <= SCORE_ATOL
        assert np.abs(np.subtract(a["box"], b["box"])).max() <= 0.02


@pytest.mark.slow
def test_detect_serve_page_health_and_bad_uploads(detection_clients):
    client = detection_clients[1]
    health = client.get("/health").json()
    assert health["task"] == "detect" and health["runtime"] == "onnxruntime" and health["classes"] == ["red", "blue"]
    page = client.get("/").text
    assert 'id="drawing"' in page and "strokeRect" in page and '["red", "blue"]' in page and "$" not in page
    assert client.post("/predict", content=b"").status_code == 400
    assert client.post("/predict", content=b"not an image").status_code == 415
    assert client.post("/predict?threshold=2", content=b"x").status_code == 422
    assert client.post("/predict", content=b"x" * 100_001).status_code == 413


@pytest.mark.slow  # the digits run and its export (session fixtures)
def test_detector_only_flags_and_loader_refuse_a_classifier_in_one_line(digits_export, photos):
    model = digits_export / "model.onnx"
    _one_line_error(run_cli("predict", str(model), photos[0], "--draw", "drawn"), "are for detectors")
    with pytest.raises(CnnkitError, match="is a classifier's export"):
        load_detector(model)
