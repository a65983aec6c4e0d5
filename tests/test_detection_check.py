"""cnnkit check for detection data: each box problem measured and named, duplicates and sizes reported."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from PIL import Image
from test_annotations import BOX, SIZE, TWO, voc_xml, write_coco, write_image, write_voc, write_yolo

from cnnkit.data.detection_check import scan_detection, size_bin


def lines(report, kind: str) -> list[str]:
    return report.problems.get(kind, [])


def test_scan_detection_measures_each_box_problem(tmp_path: Path):
    boxes = [("cat", *BOX), ("cat", 50, 40, 74, 48), ("cat", 20, 20, 20, 30), ("cat", 30, 20, 10, 30)]
    write_voc(tmp_path, {"a.png": boxes})
    report = scan_detection(tmp_path, workers=1)
    assert lines(report, "outside") == [
        "Annotations/a.xml: object 2: box [50, 40, 74, 48] reaches 10.0 px past the 64x48 image (clipped)"
    ]
    assert lines(report, "zero-area") == ["Annotations/a.xml: object 3: zero-area box [20, 20, 20, 30]"]
    assert lines(report, "inverted") == [
        "Annotations/a.xml: object 4: inverted box [30, 20, 10, 30]: x2 < x1 or y2 < y1"
    ]
    assert report.class_counts == {"all": {"cat": 2}}


def test_scan_detection_reports_unknown_classes_unannotated_images_and_leaks(tmp_path: Path):
    write_voc(tmp_path / "train", TWO, beside=True)
    write_voc(tmp_path / "val", {"c.png": [("truck", *BOX)]}, beside=True)
    write_image(tmp_path / "train" / "lone.png")
    write_image(tmp_path / "val" / "c.png", shade=99)  # its own pixels: only a.png is copied across splits
    shutil.copy(tmp_path / "train" / "a.png", tmp_path / "val" / "a.png")
    shutil.copy(tmp_path / "train" / "a.xml", tmp_path / "val" / "a.xml")
    report = scan_detection(tmp_path, workers=1)
    assert lines(report, "unknown-class") == ["val/c.xml: object 1: class 'truck' is not among the training classes"]
    assert lines(report, "unannotated")[0].startswith("train/lone.png: no annotation file train/lone.xml")
    assert lines(report, "leak") == [
        "identical files across splits (leakage: test scores will be optimistic): train/a.png, val/a.png"
    ]
    assert any(line.startswith("class-name mismatch: val") for line in report.warnings)
    assert report.class_counts["val"] == {"cat": 1, "dog": 1}


def test_scan_detection_names_missing_images_and_label_problems(tmp_path: Path):
    write_yolo(tmp_path, TWO)
    (tmp_path / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (tmp_path / "labels" / "b.txt").write_text("5 0.5 0.5 0.1 0.1\n0 40 30 10 10\n0 1 2\n")
    report = scan_detection(tmp_path, workers=1)
    assert lines(report, "missing-image")[0].startswith("labels/ghost.txt: label file for a missing image")
    assert lines(report, "unknown-class")[0].startswith("labels/b.txt: line 1: class id 5")
    assert lines(report, "convention")[0].startswith("labels/b.txt: line 2: values 40 30 10 10 exceed 1")
    assert lines(report, "malformed")[0].startswith("labels/b.txt: line 3: expected 5 values")
    assert report.negatives == {"all": 0} and report.images == {"all": 2}


def test_scan_detection_counts_box_sizes_and_calls_out_small_boxes(tmp_path: Path):
    write_yolo(tmp_path, {"a.png": [("cat", 0, 0, 30, 30), ("cat", 0, 0, 32, 32), ("dog", 0, 0, 64, 48)]})
    report = scan_detection(tmp_path, workers=1)
    assert report.size_histogram[size_bin(30)] == 2
    assert report.size_histogram[size_bin(55.4)] == 1
    assert sum(report.size_histogram.values()) == 3
    assert any(line.startswith("2 of 3 box(es) are small (20-40 px") for line in report.warnings)


def test_size_bin_edges():
    assert [size_bin(side) for side in (0, 19.9, 20, 40, 319, 320, 5000)] == [
        "0-20",
        "0-20",
        "20-40",
        "40-80",
        "160-320",
        ">=320",
        ">=320",
    ]


def test_scan_detection_finds_unreadable_and_undecodable_images(tmp_path: Path):
    write_coco(tmp_path, {**TWO, "cut.png": [], "junk.png": []})
    buffer = io.BytesIO()
    Image.effect_noise(SIZE, 64).convert("RGB").save(buffer, "PNG")
    (tmp_path / "images" / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "images" / "junk.png").write_bytes(b"junk")
    report = scan_detection(tmp_path, workers=1)
    assert [item.path for item in report.bad] == ["images/cut.png"]  # its header reads; its pixels do not
    assert lines(report, "unreadable-image")[0].startswith("images/junk.png: not an image Pillow can read")
    assert report.negatives == {"all": 1}


def test_scan_detection_report_is_json_with_a_one_line_summary(tmp_path: Path):
    write_coco(tmp_path, TWO)
    report = scan_detection(tmp_path, workers=1)
    values = json.loads(json.dumps(report.to_dict()))
    assert values["format"] == "coco" and values["class_counts"] == {"all": {"cat": 1, "dog": 2}}
    assert report.summary().endswith(
        "coco annotations, 2 image(s), 3 box(es) in 2 class(es); 0 unreadable image(s); no problems"
    )


def test_scan_detection_leaves_files_untouched(tmp_path: Path):
    write_voc(tmp_path, TWO)
    (tmp_path / "Annotations" / "bad.xml").write_text(voc_xml([("cat", 70, 0, 80, 10)]))
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in tmp_path.rglob("*") if path.is_file()}
    scan_detection(tmp_path, workers=1)
    after = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in tmp_path.rglob("*") if path.is_file()}
    assert after == before


def test_scan_detection_reports_an_image_listed_in_two_splits(tmp_path: Path):
    write_coco(tmp_path / "annotations", TWO, name="instances_train.json", image_dir=tmp_path / "images")
    write_coco(tmp_path / "annotations", TWO, name="instances_val.json", image_dir=tmp_path / "images")
    report = scan_detection(tmp_path, workers=1)
    assert lines(report, "leak") == [
        f"images/{name} is in both train and val (leakage: test scores will be optimistic); list it in one split only"
        for name in TWO
    ]
