"""Detection annotations: COCO, YOLO and VOC found and read into one pixel convention; every bad annotation named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnkit.data.annotations import load_detection
from cnnkit.data.boxes import from_voc
from cnnkit.errors import CnnkitError

SIZE = (64, 48)
# Every value below is exact in binary, so each format's conversion must give these pixels exactly.
BOX = (8.0, 12.0, 40.0, 36.0)
SMALL = (32.0, 4.0, 36.0, 10.0)


def write_image(path: Path, size: tuple[int, int] = SIZE, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, 80, 160)).save(path)


def write_coco(
    folder: Path, images: dict[str, list[tuple]], classes=("cat", "dog"), name="annotations.json", image_dir=None
) -> Path:
    """``images``: file name -> [(class, x1, y1, x2, y2)]; bbox written as [x, y, w, h]."""
    entries, annotations = [], []
    for image_id, (file_name, boxes) in enumerate(images.items(), start=1):
        write_image((image_dir or folder / "images") / file_name, shade=image_id)
        entries.append({"id": image_id, "file_name": file_name, "width": SIZE[0], "height": SIZE[1]})
        for cls, x1, y1, x2, y2 in boxes:
            bbox = [x1, y1, x2 - x1, y2 - y1]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": classes.index(cls) + 1, "bbox": bbox}
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return path


def write_yolo(folder: Path, images: dict[str, list[tuple]], classes=("cat", "dog"), names: bool = True) -> None:
    """``images``: file name -> [(class, x1, y1, x2, y2)]; each line ``class cx cy w h`` normalised."""
    width, height = SIZE
    for shade, (file_name, boxes) in enumerate(images.items()):
        write_image(folder / "images" / file_name, shade=shade)
        lines = [
            f"{classes.index(c)} {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} "
            f"{(x2 - x1) / width} {(y2 - y1) / height}"
            for c, x1, y1, x2, y2 in boxes
        ]
        label = folder / "labels" / Path(file_name).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(line + "\n" for line in lines))
    if names:
        (folder / "data.yaml").write_text(f"names: [{', '.join(classes)}]\n")


def voc_xml(boxes: list[tuple], difficult: tuple[int, ...] = ()) -> str:
    """1-based inclusive pixel indices: pixel box [x1, x2) covers columns x1 + 1 to x2."""
    objects = "".join(
        f"<object><name>{c}</name><difficult>{int(i in difficult)}</difficult><bndbox><xmin>{x1 + 1:g}</xmin>"
        f"<ymin>{y1 + 1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax></bndbox></object>"
        for i, (c, x1, y1, x2, y2) in enumerate(boxes)
    )
    return f"<annotation><size><width>{SIZE[0]}</width><height>{SIZE[1]}</height></size>{objects}</annotation>"


def write_voc(folder: Path, images: dict[str, list[tuple]], beside: bool = False) -> None:
    for shade, (file_name, boxes) in enumerate(images.items()):
        image_dir, xml_dir = (folder, folder) if beside else (folder / "JPEGImages", folder / "Annotations")
        write_image(image_dir / file_name, shade=shade)
        xml_dir.mkdir(parents=True, exist_ok=True)
        (xml_dir / Path(file_name).with_suffix(".xml")).write_text(voc_xml(boxes))


WRITERS = {"coco": write_coco, "yolo": write_yolo, "voc": write_voc}
TWO = {"a.png": [("cat", *BOX), ("dog", *SMALL)], "b.png": [("dog", *BOX)]}


def load_all(root: Path):
    """Every image in the training split: nothing carved."""
    return load_detection(root, val_split=0.0, test_split=0.0, workers=1)


def by_path(images) -> dict:
    return {image.path: image for image in images}


@pytest.mark.parametrize("format_name", sorted(WRITERS))
def test_load_detection_box_round_trips_to_identical_pixels(tmp_path: Path, format_name: str):
    WRITERS[format_name](tmp_path, TWO)
    splits = load_all(tmp_path)
    assert splits.format == format_name
    assert splits.classes == ["cat", "dog"]
    assert not splits.skipped
    images = {Path(image.path).name: image for image in splits.train}
    assert images["a.png"].size == SIZE
    assert images["a.png"].boxes.dtype == np.float32 and images["a.png"].boxes.shape == (2, 4)
    np.testing.assert_array_equal(images["a.png"].boxes, np.array([BOX, SMALL], dtype=np.float32))
    np.testing.assert_array_equal(images["a.png"].labels, [0, 1])
    np.testing.assert_array_equal(images["b.png"].boxes, np.array([BOX], dtype=np.float32))


def test_from_voc_full_image_box_is_the_image():
    assert from_voc(1, 1, 64, 48) == (0, 0, 64, 48)


def test_load_detection_coco_flags_negatives_and_category_order(tmp_path: Path):
    path = write_coco(tmp_path, {"a.png": [("cat", *BOX)], "neg.png": []})
    data = json.loads(path.read_text())
    data["annotations"][0]["iscrowd"] = 1
    data["categories"] = [{"id": 2, "name": "dog"}, {"id": 1, "name": "cat"}]  # listed out of id order
    path.write_text(json.dumps(data))
    images = by_path(load_all(tmp_path).train)
    assert load_all(tmp_path).classes == ["cat", "dog"]
    assert images["images/a.png"].crowd.tolist() == [True]
    assert images["images/neg.png"].boxes.shape == (0, 4)


def test_load_detection_coco_instances_files_name_the_splits(tmp_path: Path):
    for split in ("train2017", "val2017"):
        images = {f"{split}.png": [("cat", *BOX)]}
        write_coco(tmp_path / "annotations", images, name=f"instances_{split}.json", image_dir=tmp_path / split)
    splits = load_detection(tmp_path, test_split=0.0)
    assert [image.path for image in splits.train] == ["train2017/train2017.png"]
    assert [image.path for image in splits.val] == ["val2017/val2017.png"]


@pytest.mark.parametrize(
    ("file_name", "text"),
    [
        ("data.yaml", "names: [cat, dog]\n"),
        ("data.yaml", "names:\n  0: cat\n  1: dog\n"),
        ("classes.txt", "cat\ndog\n"),
        ("obj.names", "cat\ndog\n"),
    ],
)
def test_load_detection_yolo_names_from_each_file(tmp_path: Path, file_name: str, text: str):
    write_yolo(tmp_path, {"a.png": [("dog", *BOX)], "neg.png": []}, names=False)
    (tmp_path / file_name).write_text(text)
    splits = load_all(tmp_path)
    assert splits.classes == ["cat", "dog"]
    images = by_path(splits.train)
    assert images["images/a.png"].labels.tolist() == [1]
    assert images["images/neg.png"].boxes.shape == (0, 4)  # an empty .txt is a negative


def test_load_detection_yolo_without_names_file_says_what_to_add(tmp_path: Path):
    write_yolo(tmp_path, TWO, names=False)
    with pytest.raises(CnnkitError, match=r"data\.yaml"):
        load_all(tmp_path)


def test_load_detection_yolo_image_subfolders_are_splits(tmp_path: Path):
    for split in ("train", "valid"):
        write_yolo(tmp_path / "tmp", {f"{split}.png": [("cat", *BOX)]}, names=False)
        for kind in ("images", "labels"):
            (tmp_path / kind).mkdir(exist_ok=True)
            (tmp_path / "tmp" / kind).rename(tmp_path / kind / split)
    (tmp_path / "tmp").rmdir()
    (tmp_path / "data.yaml").write_text("names: [cat]\n")
    splits = load_detection(tmp_path, test_split=0.0)
    assert [image.path for image in splits.val] == ["images/valid/valid.png"]
    assert len(splits.train) == 1 and not splits.test


@pytest.mark.parametrize("beside", [False, True])
def test_load_detection_voc_reads_both_layouts_and_difficult(tmp_path: Path, beside: bool):
    write_voc(tmp_path, TWO, beside=beside)
    xml = tmp_path / ("a.xml" if beside else "Annotations/a.xml")
    xml.write_text(voc_xml(TWO["a.png"], difficult=(1,)))
    images = {Path(image.path).name: image for image in load_all(tmp_path).train}
    assert images["a.png"].difficult.tolist() == [False, True]


def test_load_detection_voc_imagesets_name_the_splits(tmp_path: Path):
    write_voc(tmp_path, {f"{i}.png": [("cat", *BOX)] for i in range(4)})
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "trainval.txt").write_text("0\n1\n")
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("2\n")
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text("3\n")
    splits = load_detection(tmp_path)
    assert sorted(image.path for image in splits.train) == ["JPEGImages/0.png", "JPEGImages/1.png"]
    assert [image.path for image in splits.val] == ["JPEGImages/2.png"]
    assert [image.path for image in splits.test] == ["JPEGImages/3.png"]


@pytest.mark.parametrize("format_name", sorted(WRITERS))
def test_load_detection_uses_split_folders(tmp_path: Path, format_name: str):
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        WRITERS[format_name](tmp_path / split, {f"{split}{i}.png": [("cat", *BOX)] for i in range(count)})
    splits = load_detection(tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 2, 1)
    assert splits.split_rule == "given folders"
    assert all(image.path.startswith("val/") for image in splits.val)


def test_load_detection_carves_a_deterministic_split(tmp_path: Path):
    write_yolo(tmp_path, {f"{i:02d}.png": [("cat", *BOX)] for i in range(20)})
    first = load_detection(tmp_path, val_split=0.2, test_split=0.2)
    again = load_detection(tmp_path, val_split=0.2, test_split=0.2)
    assert (len(first.train), len(first.val), len(first.test)) == (12, 4, 4)
    assert [image.path for image in first.val] == [image.path for image in again.val]
    write_yolo(tmp_path, {"new.png": [("cat", *BOX)]})
    grown = load_detection(tmp_path, val_split=0.2, test_split=0.2)
    # The parts keep their sizes, and the hash order holds: an old test image can only be pushed into val.
    assert {image.path for image in first.test} <= {image.path for image in grown.test + grown.val}


def test_load_detection_folder_without_annotations_lists_the_formats(tmp_path: Path):
    write_image(tmp_path / "cat" / "a.png")
    with pytest.raises(CnnkitError, match=r"COCO.*YOLO.*VOC"):
        load_detection(tmp_path)


def edit_coco(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_load_detection_reads_boxes_against_the_upright_image(tmp_path: Path):
    stored = Image.new("RGB", (SIZE[1], SIZE[0]))  # 48 x 64 pixels, shown turned a quarter (EXIF orientation 6)
    exif = stored.getexif()
    exif[0x0112] = 6
    write_yolo(tmp_path / "yolo", TWO)
    stored.save(tmp_path / "yolo" / "images" / "a.png", exif=exif)
    edit_coco(write_coco(tmp_path / "coco", TWO), lambda d: d["images"][0].update(width=SIZE[1], height=SIZE[0]))
    stored.save(tmp_path / "coco" / "images" / "a.png", exif=exif)
    yolo_image = by_path(load_all(tmp_path / "yolo").train)["images/a.png"]
    assert yolo_image.size == SIZE
    np.testing.assert_array_equal(yolo_image.boxes[0], np.array(BOX, dtype=np.float32))
    warnings = load_all(tmp_path / "coco").warnings
    assert any("image id 1 declares 48x64 but images/a.png is 64x48 upright" in line for line in warnings)


def test_load_detection_yolo_names_inside_labels_and_byte_order_marks(tmp_path: Path):
    write_yolo(tmp_path, TWO, names=False)
    (tmp_path / "labels" / "classes.txt").write_text("\ufeffcat\ndog\n", encoding="utf-8")  # as LabelImg writes it
    (tmp_path / "labels" / "a.txt").write_text("\ufeff0 0.375 0.5 0.5 0.5\n", encoding="utf-8")
    splits = load_all(tmp_path)
    assert splits.classes == ["cat", "dog"] and not splits.skipped
    np.testing.assert_array_equal(by_path(splits.train)["images/a.png"].boxes, np.array([BOX], dtype=np.float32))


def test_load_detection_finds_roboflow_coco_files_with_images_beside(tmp_path: Path):
    for split in ("train", "valid"):
        folder = tmp_path / split
        write_coco(folder, {f"{split}.png": [("cat", *BOX)]}, name="_annotations.coco.json", image_dir=folder)
    splits = load_detection(tmp_path, test_split=0.0)
    assert [image.path for image in splits.val] == ["valid/valid.png"]
    assert [image.path for image in splits.train] == ["train/train.png"] and not splits.skipped
