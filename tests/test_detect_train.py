"""Detection training end to end (training/detect*.py, tasks/detect/, data/boxset.py): train, evaluate, predict."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_shapes_folder, run_cli
from PIL import Image, ImageDraw

import cnnkit
from cnnkit.checkpoint import load_model, read_checkpoint
from cnnkit.data.annotations import has_annotations, load_detection
from cnnkit.data.boxes import BoxedImage
from cnnkit.data.boxset import BoxedSet, Placement, decode_detection
from cnnkit.data.decode import resize_image
from cnnkit.errors import CnnkitError
from cnnkit.models import create_model
from cnnkit.models.detector import BoxNet
from cnnkit.tasks.detect.evaluate import evaluate_boxes, evaluate_run, to_original
from cnnkit.tasks.detect.records import rank_boxes

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "detect_train.py"
COLOURS = ("red", "blue")  # the benchmark set's classes
RUN_FILES = (
    "config.yaml",
    "split.json",
    "environment.json",
    "metrics.csv",
    "steps.csv",
    "best.safetensors",
    "last.safetensors",
    "state.safetensors",
    "results.json",
    "curves.png",
    "pr_curves.png",
    "predictions.png",
    "skipped.csv",
)


def load_benchmark():
    """``benchmarks/detect_train.py`` as a module: its synthetic set is the one these tests train on."""
    spec = importlib.util.spec_from_file_location("detect_train_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_squares_folder = load_benchmark().make_squares_folder


TRAIN_ARGS = ("--img-size", "64", "--epochs", "3", "--batch-size", "4", "--val-split", "0.25")


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 images of 1-2 squares; the first label file also names an unknown class, which training must skip."""
    folder = make_squares_folder(tmp_path_factory.mktemp("detection") / "squares")
    with open(folder / "labels" / "img000.txt", "a") as stream:
        stream.write("7 0.5 0.5 0.2 0.2\n")
    return folder


@pytest.fixture(scope="module")
def trained(squares: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A boxnet run trained through the real CLI (3 epochs of 8 steps on 64 px images), and its output."""
    out = tmp_path_factory.mktemp("runs")
    result = run_cli("train", "--task", "detect", "--data", str(squares), *TRAIN_ARGS, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out / "train", result


@pytest.mark.parametrize("rule", ["crop", "squash", "pad"])
@pytest.mark.parametrize("size", [(200, 100), (100, 200), (37, 53), (64, 64)])
def test_placement_puts_a_box_where_resize_image_puts_its_pixels(rule: str, size: tuple[int, int]):
    width, height = size
    box = (round(width * 0.3), round(height * 0.35), round(width * 0.7), round(height * 0.65))
    image = Image.new("L", size, 0)
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=255)  # pixels [x1, x2)
    ys, xs = np.nonzero(np.asarray(resize_image(image, 64, rule)) > 127)
    placement = Placement.of(size, 64, rule)
    moved = placement.to_input(np.array([box]))[0]
    assert np.abs(moved - [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).max() <= 1.0  # bilinear edges
    assert np.allclose(placement.to_original(moved[None])[0], box, atol=1e-3)


def test_detections_go_back_to_original_pixels_ranked_and_capped():
    placement = Placement.of((200, 100), 64, "pad")  # scale 0.32, image rows 16-48 of the input
    detection = {
        "boxes": np.array([[0.0, 16.0, 32.0, 32.0], [32.0, 0.0, 64.0, 64.0], [1.0, 1.0, 2.0, 2.0]], np.float32),
        "scores": np.array([0.5, 0.9, 0.1], np.float32),
        "labels": np.array([0, 1, 1]),
    }
    moved = to_original(detection, placement, (200, 100))
    record = rank_boxes(moved, ["red", "blue"], "a.png", threshold=0.2, max_boxes=5).to_dict()
    assert record["path"] == "a.png"
    assert [b["label"] for b in record["boxes"]] == ["blue", "red"]  # best first; 0.1 is under the threshold
    assert record["boxes"][0]["box"] == [100.0, 0.0, 200.0, 100.0]  # the padding above and below clipped away
    assert record["boxes"][1]["box"] == [0.0, 0.0, 100.0, 50.0]
    assert len(rank_boxes(moved, ["red", "blue"], "a.png", 0.0, 1).boxes) == 1


def test_boxed_set_targets_are_in_input_pixels_without_crowd_boxes():
    item = BoxedImage(
        "a.png",
        (128, 64),
        np.array([[0, 0, 64, 32], [64, 0, 128, 64]], np.float32),
        np.array([1, 0]),
        np.array([False, True]),  # the second box is a COCO crowd
        np.array([False, False]),
    )
    placement = Placement.of(item.size, 32, "squash")
    boxed = BoxedSet(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), [item], [placement], ["a", "b"])
    (target,) = boxed.targets([0])
    assert target["boxes"].tolist() == [[0.0, 0.0, 16.0, 16.0]] and target["labels"].tolist() == [1]
    assert boxed.index_set().labels.tolist() == [0] and boxed.sources == ["a.png"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "boxnet"}, "is a detector"),
        ({"task": "detect", "model": "convnet"}, "is not a detector"),
        ({"task": "detect", "pretrained": True}, "boxnet has no pretrained backbone"),
        ({"task": "detect", "class_weights": "balanced"}, "--class-weights: not supported with --task detect"),
    ],
)
def test_detect_train_refuses_what_it_cannot_do_before_reading_data(tmp_path: Path, overrides: dict, message: str):
    with pytest.raises(CnnkitError, match=message):
        cnnkit.train(data=str(tmp_path / "absent"), out=str(tmp_path / "runs"), verbose=False, **overrides)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_detect_train_writes_the_run_directory(trained: tuple[Path, object], squares: Path):
    run_dir, result = trained
    assert all((run_dir / name).is_file() for name in RUN_FILES), sorted(p.name for p in run_dir.iterdir())
    assert "skipped 1 annotation" in result.stdout and "class id 7" in (run_dir / "skipped.csv").read_text()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["task"] == "detect" and config["model"] == "boxnet"
    with open(run_dir / "metrics.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert {"train_loss", "train_classification", "train_box_regression", "val_map", "val_map50"} <= set(rows[0])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == "detect" and 1 <= results["best_epoch"] <= 3
    assert set(results["test"]["per_class"]) == set(COLOURS)
    assert 0 <= results["test"]["map"] <= 1 and 0 <= results["test"]["map50"] <= 1
    best = max(rows, key=lambda row: (float(row["val_map"]), float(row["val_map50"])))
    assert int(best["epoch"]) == results["best_epoch"]  # the best epoch is the one of highest val mAP


@pytest.mark.slow
def test_detect_checkpoint_rebuilds_and_evaluate_json_gives_the_results_map(trained: tuple[Path, object], squares):
    run_dir, _ = trained
    model, info = load_model(run_dir)
    assert isinstance(model, BoxNet) and info.classes == list(COLOURS) and info.preprocessing.img_size == 64
    assert read_checkpoint(run_dir / "best.safetensors")[1].extra["task"] == "detect"
    result = run_cli("evaluate", str(run_dir), "--data", str(squares), "--json")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout)
    test = json.loads((run_dir / "results.json").read_text())["test"]
    assert evaluated["map"] == pytest.approx(test["map"], abs=1e-9)
    assert evaluated["map50"] == pytest.approx(test["map50"], abs=1e-9)
    for name, values in test["per_class"].items():
        assert evaluated["per_class"][name]["ap"] == pytest.approx(values["ap"], abs=1e-9)


@pytest.mark.slow
def test_detect_evaluate_refuses_data_with_classes_the_model_does_not_know(trained, tmp_path: Path):
    run_dir, _ = trained
    other = make_squares_folder(tmp_path / "other", count=6)
    (other / "data.yaml").write_text("names: [red, green]\n")
    with pytest.raises(CnnkitError, match=r"class\(es\) green that the model does not know"):
        evaluate_run(run_dir, str(other), "train", "cpu")


@pytest.mark.slow
def test_detection_run_is_refused_in_one_line_by_commands_that_need_a_classifier(trained: tuple[Path, object]):
    run_dir, _ = trained
    from cnnkit.deploy.index.embedder import load_embedder

    with pytest.raises(CnnkitError, match=r"is a detector \(boxnet\).*need a classifier"):
        cnnkit.load(run_dir)
    with pytest.raises(CnnkitError, match=r"is a detector \(boxnet\): index and search embed images with a classifier"):
        load_embedder(run_dir)  # what cnnkit index builds with
    result = run_cli("explain", str(run_dir), str(run_dir / "curves.png"), "--out", str(run_dir.parent / "explained"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "is a detector" in result.stderr


@pytest.mark.slow
def test_detect_trained_model_beats_the_untrained_one_on_validation(trained: tuple[Path, object], squares: Path):
    run_dir, _ = trained
    model, info = load_model(run_dir)
    prep = info.preprocessing
    val = decode_detection(load_detection(squares, 0.25, 0.2), 64, prep.channels, prep.resize, 1).val
    assert val.sources == json.loads((run_dir / "split.json").read_text())["val"]
    torch.manual_seed(0)
    untrained = create_model("boxnet", 2, 3, 64)
    cpu = torch.device("cpu")
    assert evaluate_boxes(model, val, prep, cpu).map50 > evaluate_boxes(untrained, val, prep, cpu).map50
    with open(run_dir / "metrics.csv") as stream:
        losses = [float(row["train_loss"]) for row in csv.DictReader(stream)]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_detect_predict_json_gives_capped_ranked_boxes_inside_the_image(trained: tuple[Path, object], tmp_path):
    run_dir, _ = trained
    wide = Image.new("RGB", (96, 48), (20, 20, 20))  # neither the training size nor square
    ImageDraw.Draw(wide).rectangle([10, 10, 35, 35], fill=(230, 40, 40))
    wide.save(tmp_path / "wide.png")
    image = str(tmp_path / "wide.png")
    result = run_cli("predict", str(run_dir), image, "--json", "--threshold", "0", "--max-boxes", "3")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["path"] == image and 1 <= len(record["boxes"]) <= 3
    scores = [box["score"] for box in record["boxes"]]
    assert scores == sorted(scores, reverse=True) and {box["label"] for box in record["boxes"]} <= set(COLOURS)
    assert all(0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 48 for x1, y1, x2, y2 in (b["box"] for b in record["boxes"]))


def test_has_annotations_tells_detection_data_from_an_image_folder(tmp_path: Path):
    assert has_annotations(make_squares_folder(tmp_path / "squares", count=2))
    assert not has_annotations(make_shapes_folder(tmp_path / "shapes", per_class=1))
    assert not has_annotations(tmp_path / "absent")


@pytest.mark.slow
def test_check_on_detection_data_names_the_bad_annotation(squares: Path):
    result = run_cli("check", str(squares))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{squares}: yolo annotations, 32 image(s)")
    assert "labels/img000.txt: line 2: class id 7" in result.stdout


@pytest.mark.slow
def test_detect_train_on_a_folder_without_annotations_says_so_in_one_line(tmp_path: Path):
    folder = make_shapes_folder(tmp_path / "shapes", per_class=2)
    result = run_cli("train", "--task", "detect", "--data", str(folder), "--out", str(tmp_path / "runs"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("cnnkit: error: no detection annotations found")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_detect_run_stopped_mid_epoch_resumes_bit_for_bit(squares: Path, tmp_path: Path, one_thread):
    settings = {"task": "detect", "data": str(squares), "img_size": 64, "epochs": 2, "batch_size": 4}
    settings |= {"save_every": 3, "verbose": False}
    whole = cnnkit.train(out=str(tmp_path), name="whole", **settings)

    class StopInTheSecondEpoch:  # at its first state saved by --save-every, part-way through the epoch's batches
        def on_checkpoint(self, run_dir: Path, path: Path, epoch: int, step: int) -> None:
            if path.name == "state.safetensors" and epoch == 2:
                raise KeyboardInterrupt

    stopped = cnnkit.train(out=str(tmp_path), name="parts", callbacks=[StopInTheSecondEpoch()], **settings)
    assert stopped.interrupted and len(stopped.history) == 1
    resumed = cnnkit.train(resume=stopped.dir, verbose=False)
    assert not resumed.interrupted and len(resumed.history) == 2
    steps = [(tmp_path / name / "steps.csv").read_text() for name in ("whole", "parts")]
    assert steps[0] == steps[1] and len(steps[0].splitlines()) > 3
    for key in ("train_loss", "val_map", "val_map50"):  # the loss parts' means cover the resumed steps only
        assert [row[key] for row in resumed.history] == [row[key] for row in whole.history]


@pytest.mark.slow
def test_detect_train_benchmark_runs_on_tiny_settings():
    command = [sys.executable, str(BENCHMARK), "--models", "boxnet", "--epochs", "1", "--images", "12", "--seeds", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["model"] == "boxnet" and 0 <= record["map50"] <= 1


@pytest.mark.slow
@pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(), reason="the CPU has no bf16 instructions")
def test_detect_train_under_bf16_autocast_records_it_and_evaluates_to_a_finite_map(tmp_path: Path):
    from cnnkit.training.runlog import recorded_precision

    data = make_squares_folder(tmp_path / "squares", count=16)  # a few steps: 10 training images, batches of 4
    settings = {"img_size": 64, "epochs": 1, "batch_size": 4, "precision": "bf16", "verbose": False}
    result = cnnkit.train(task="detect", data=str(data), out=str(tmp_path / "runs"), **settings)
    assert recorded_precision(result.dir) == "bf16"
    test = json.loads((result.dir / "results.json").read_text())["test"]
    assert 0 <= test["map"] <= 1 and 0 <= test["map50"] <= 1 and np.isfinite(result.history[-1]["train_loss"])


def test_load_data_of_annotated_images_suggests_the_detect_task(squares: Path):
    with pytest.raises(
        CnnkitError, match=r"holds box annotations, not class folders: train a detector with --task detect"
    ):
        cnnkit.data.load_data(str(squares))


def test_detect_run_trains_at_the_tasks_batch_size_unless_one_is_given(tmp_path: Path):
    from cnnkit.tasks.detect import DEFAULT_BATCH_SIZE

    data = make_squares_folder(tmp_path / "squares", count=16)

    class Started(Exception):
        pass

    class RecordBatchSize:  # stops the run once its settings are final, before any step
        def on_fit_start(self, run_dir: Path, config) -> None:
            seen.append(config.batch_size)
            raise Started

    seen = []
    for given in ({}, {"batch_size": 4}):
        with pytest.raises(Started):
            settings = {"img_size": 64, "epochs": 1, "verbose": False, "callbacks": [RecordBatchSize()], **given}
            cnnkit.train(task="detect", data=str(data), out=str(tmp_path / "runs"), **settings)
    assert seen == [DEFAULT_BATCH_SIZE, 4] and DEFAULT_BATCH_SIZE != 64
