"""Bad detection annotations: each one named with its file and line, index or object; the rest kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_annotations import (
    BOX,
    SMALL,
    TWO,
    WRITERS,
    by_path,
    edit_coco,
    load_all,
    voc_xml,
    write_coco,
    write_image,
    write_voc,
    write_yolo,
)

from cnnkit.data.annotations import load_detection
from cnnkit.errors import CnnkitError


def reasons(splits) -> list[str]:
    return [f"{item.path}: {item.reason}" for item in splits.skipped]


def named(splits, start: str) -> bool:
    return any(line.startswith(start) for line in reasons(splits))


def test_load_detection_malformed_json_is_named_and_other_splits_kept(tmp_path: Path):
    write_coco(tmp_path / "train", TWO)
    write_coco(tmp_path / "val", TWO)
    (tmp_path / "val" / "annotations.json").write_text('{"images": [')
    splits = load_detection(tmp_path, test_split=0.0)
    assert len(splits.train) == 2 and not splits.val
    assert named(splits, "val/annotations.json: malformed COCO JSON")


def test_load_detection_malformed_xml_is_named_and_other_files_kept(tmp_path: Path):
    write_voc(tmp_path, TWO)
    (tmp_path / "Annotations" / "a.xml").write_text("<annotation><object>")
    splits = load_all(tmp_path)
    assert [image.path for image in splits.train] == ["JPEGImages/b.png"]
    assert named(splits, "Annotations/a.xml: malformed XML")


def test_load_detection_malformed_txt_lines_are_named_and_other_lines_kept(tmp_path: Path):
    write_yolo(tmp_path, TWO)
    with (tmp_path / "labels" / "a.txt").open("a") as file:
        file.write("0 0.5 0.5\nx 0.5 0.5 0.1 0.1\n\n0 0.5 0.5 0.1 0.1 0.2 0.2\n")
    splits = load_all(tmp_path)
    assert len(by_path(splits.train)["images/a.png"]) == 2
    assert named(splits, "labels/a.txt: line 3: expected 5 values `class cx cy w h`, got 3")
    assert named(splits, "labels/a.txt: line 4: 'x 0.5 0.5 0.1 0.1' is not five numbers")
    assert named(splits, "labels/a.txt: line 6: expected 5 values `class cx cy w h`, got 7 (polygon")


def _orphan_coco(root: Path) -> None:
    edit_coco(root / "annotations.json", lambda d: d["images"].append({"id": 9, "file_name": "ghost.png"}))


ORPHANS = {
    "coco": (_orphan_coco, "annotations.json: image id 9: file ghost.png not found in images"),
    "yolo": (lambda root: (root / "labels" / "ghost.txt").write_text(""), "labels/ghost.txt: label file for a missing"),
    "voc": (lambda root: (root / "Annotations" / "ghost.xml").write_text(voc_xml([])), "Annotations/ghost.xml: anno"),
}
UNANNOTATED = {
    "coco": "images/lone.png: not listed in annotations.json: skipped",
    "yolo": "images/lone.png: no label file labels/lone.txt: skipped, not used as a negative",
    "voc": "JPEGImages/lone.png: no annotation file Annotations/lone.xml: skipped",
}


@pytest.mark.parametrize("format_name", sorted(WRITERS))
def test_load_detection_names_labels_without_image_and_images_without_labels(tmp_path: Path, format_name: str):
    WRITERS[format_name](tmp_path, TWO)
    make_orphan, orphan_line = ORPHANS[format_name]
    make_orphan(tmp_path)
    write_image(tmp_path / ("JPEGImages" if format_name == "voc" else "images") / "lone.png")
    splits = load_all(tmp_path)
    assert len(splits.train) == 2
    assert named(splits, orphan_line)
    assert named(splits, UNANNOTATED[format_name])


def test_load_detection_coco_normalised_bbox_is_reported(tmp_path: Path):
    edit_coco(write_coco(tmp_path, TWO), lambda d: d["annotations"][0].update(bbox=[0.1, 0.2, 0.3, 0.3]))
    splits = load_all(tmp_path)
    assert len(by_path(splits.train)["images/a.png"]) == 1
    assert named(splits, "annotations.json: annotations[0] (id 1): bbox [0.1, 0.2, 0.3, 0.3] looks normalised")


def test_load_detection_voc_normalised_bndbox_is_reported(tmp_path: Path):
    write_voc(tmp_path, TWO)
    xml = (tmp_path / "Annotations" / "a.xml").read_text()
    (tmp_path / "Annotations" / "a.xml").write_text(
        xml.replace("<xmin>9</xmin><ymin>13</ymin>", "<xmin>0.1</xmin><ymin>0.2</ymin>").replace(
            "<xmax>40</xmax><ymax>36</ymax>", "<xmax>0.5</xmax><ymax>0.6</ymax>"
        )
    )
    splits = load_all(tmp_path)
    assert len(by_path(splits.train)["JPEGImages/a.png"]) == 1
    assert named(splits, "Annotations/a.xml: object 1 (cat): bndbox [0.1, 0.2, 0.5, 0.6] looks normalised")


def test_load_detection_yolo_pixel_values_are_reported(tmp_path: Path):
    write_yolo(tmp_path, TWO)
    (tmp_path / "labels" / "b.txt").write_text("1 24 24 32 24\n0 0.5 0.5 0.25 0.25\n")
    splits = load_all(tmp_path)
    assert by_path(splits.train)["images/b.png"].labels.tolist() == [0]
    assert named(splits, "labels/b.txt: line 1: values 24 24 32 24 exceed 1: they look like pixels")


def test_load_detection_unknown_class_ids_are_reported(tmp_path: Path):
    write_yolo(tmp_path / "yolo", TWO)
    (tmp_path / "yolo" / "labels" / "b.txt").write_text("7 0.5 0.5 0.25 0.25\n")
    edit_coco(write_coco(tmp_path / "coco", TWO), lambda d: d["annotations"][0].update(category_id=99))
    yolo_splits, coco_splits = load_all(tmp_path / "yolo"), load_all(tmp_path / "coco")
    assert named(yolo_splits, "labels/b.txt: line 1: class id 7 is not among the 2 names (0-1)")
    assert named(coco_splits, "annotations.json: annotations[0] (id 1): unknown category_id 99")
    assert len(by_path(coco_splits.train)["images/a.png"]) == 1


def test_load_detection_class_mismatch_between_splits_is_reported(tmp_path: Path):
    write_coco(tmp_path / "train", TWO)
    write_coco(tmp_path / "val", {"c.png": [("truck", *BOX), ("cat", *SMALL)]}, classes=("cat", "dog", "truck"))
    splits = load_detection(tmp_path, test_split=0.0)
    assert splits.classes == ["cat", "dog"]
    assert splits.val[0].labels.tolist() == [0]
    assert any(
        line.startswith("class-name mismatch: val (val/annotations.json) has class(es) truck")
        for line in splits.warnings
    )
    assert named(splits, "val/annotations.json: annotations[0] (id 1): unknown class 'truck' (classes: cat, dog)")


def test_load_detection_yolo_split_names_in_another_order_match_by_name(tmp_path: Path):
    write_yolo(tmp_path / "train", TWO)
    write_yolo(tmp_path / "val", {"c.png": [("dog", *BOX)]}, classes=("dog", "cat"))
    splits = load_detection(tmp_path, test_split=0.0)
    assert splits.val[0].labels.tolist() == [1]  # dog is class 1 of the training split's names
    assert any("another order" in line for line in splits.warnings)


def test_load_detection_box_rules_skip_unusable_boxes_and_clip_the_rest(tmp_path: Path):
    boxes = {"a.png": [("cat", *BOX), ("cat", 20, 20, 10, 30), ("cat", 20, 20, 20, 30), ("cat", 50, 40, 80, 50)]}
    write_coco(tmp_path, boxes)
    splits = load_all(tmp_path)
    image = splits.train[0]
    np.testing.assert_array_equal(image.boxes, np.array([BOX, (50, 40, 64, 48)], dtype=np.float32))
    assert named(splits, "annotations.json: annotations[1] (id 2): inverted box [20, 20, 10, 30]")
    assert named(splits, "annotations.json: annotations[2] (id 3): zero-area box [20, 20, 20, 30]")
    assert any("reaching up to 16.0 px past the image" in line for line in splits.warnings)


def test_load_detection_coco_bad_entries_are_named(tmp_path: Path):
    def spoil(data: dict) -> None:
        data["annotations"][0]["bbox"] = [1, 2, "3"]
        data["annotations"].append("box")
        data["images"].append({"file_name": "x.png"})

    edit_coco(write_coco(tmp_path, TWO), spoil)
    splits = load_all(tmp_path)
    assert named(splits, "annotations.json: annotations[0] (id 1): bbox must be four numbers")
    assert named(splits, "annotations.json: annotations[3]: not an object")
    assert named(splits, "annotations.json: images[2]: needs an id and a file_name")
    assert len(splits.train) == 2


@pytest.mark.parametrize("format_name", sorted(WRITERS))
def test_load_detection_leaves_files_untouched(tmp_path: Path, format_name: str):
    WRITERS[format_name](tmp_path, TWO)
    (tmp_path / "images" if format_name != "voc" else tmp_path / "JPEGImages").joinpath("z.png").write_bytes(b"junk")
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in tmp_path.rglob("*") if path.is_file()}
    load_all(tmp_path)
    after = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in tmp_path.rglob("*") if path.is_file()}
    assert after == before


def test_load_detection_image_whose_every_box_is_skipped_is_not_a_negative(tmp_path: Path):
    write_yolo(tmp_path, {**TWO, "neg.png": []})
    (tmp_path / "labels" / "b.txt").write_text("9 0.5 0.5 0.25 0.25\n0 0.5 0.5 0.25\n")
    splits = load_all(tmp_path)
    assert sorted(by_path(splits.train)) == ["images/a.png", "images/neg.png"]
    assert named(splits, "images/b.png: every annotation of this image was skipped")


def test_load_detection_coco_file_without_annotations_list_is_not_all_negatives(tmp_path: Path):
    write_coco(tmp_path / "train", TWO)
    edit_coco(write_coco(tmp_path / "val", TWO), lambda d: d.pop("annotations"))
    splits = load_detection(tmp_path, test_split=0.0)
    assert not splits.val
    assert named(splits, "val/annotations.json: not a COCO instances file")


def test_load_detection_repeated_class_name_is_one_error(tmp_path: Path):
    write_yolo(tmp_path, TWO)
    (tmp_path / "data.yaml").write_text("names: [cat, dog, cat]\n")
    with pytest.raises(CnnkitError, match=r"data\.yaml names class\(es\) cat more than once"):
        load_all(tmp_path)


def test_load_detection_refuses_mixed_formats_across_split_folders(tmp_path: Path):
    write_coco(tmp_path / "train", TWO)
    write_voc(tmp_path / "val", TWO)
    with pytest.raises(CnnkitError, match=r"val holds voc annotations, but .*train holds coco; use one format in all"):
        load_detection(tmp_path)


def test_load_detection_image_listed_in_two_splits_is_a_leak(tmp_path: Path):
    write_voc(tmp_path, {f"{i}.png": [("cat", *BOX)] for i in range(3)})
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("0\n1\n")
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("1\n2\n")
    splits = load_detection(tmp_path, test_split=0.0)
    assert splits.warnings == [
        "JPEGImages/1.png is in both train and val (leakage: test scores will be optimistic); list it in one split only"
    ]
