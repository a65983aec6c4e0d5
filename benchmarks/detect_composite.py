"""A detection set with exact boxes: public-domain drawings alpha-matted onto real photographs, as COCO JSON.

Real annotated photos that install offline are rare, so the set is composed: each image
is a random 320 px crop of a real photograph with one to six drawings from Debian's
``openclipart-png`` (public domain) pasted on it, each scaled so its longer side is 20 to
120 px (log-uniform, so about 40% are the issue's small 20-40 px objects). A box is the
bounding box of the pasted drawing's visible pixels (alpha > ``ALPHA_VISIBLE``), so it is
exact; drawings never overlap. Six classes, each an openclipart category folder.

Nothing leaks between splits: the drawings of every class and the photographs are each
divided train/val/test by a seeded shuffle, so the test split shows **drawings and
backgrounds no other split has**; it is meant to be read once, for the final number.

Photographs (all free licences, see each package's ``copyright``): scikit-image's colour
sample photos (installed with it), ``mate-backgrounds`` (nature/, GPL-2+),
``lomiri-wallpapers-16.04`` (CC-BY/CC-BY-SA/CC0) and ``plasma-workspace-wallpapers``
(the photographs among them, GPL-2+). Install them with

    apt-get install openclipart-png mate-backgrounds lomiri-wallpapers-16.04 plasma-workspace-wallpapers

Layout (what ``cnnkit train --task detect`` reads): ``ROOT/{train,val,test}/annotations.json``
and ``ROOT/{split}/images/*.jpg``; the same seed and sizes write the same files.

    python benchmarks/detect_composite.py /tmp/composite --train 1200 --val 200 --test 300
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLIPART = Path("/usr/share/openclipart/png")
CLASSES = {  # class name -> openclipart folder (drawings in subfolders included)
    "fruit": "food/fruit",
    "mammal": "animals/mammals",
    "bird": "animals/birds",
    "bug": "animals/bugs",
    "roadsign": "transportation/roadsigns",
    "smiley": "people/smilies",
}
PHOTOS = [  # real photographs only: the packages' illustrations and abstract art are left out
    *(f"/usr/share/backgrounds/mate/nature/{name}.jpg" for name in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")),
    *(f"/usr/share/backgrounds/{name}.jpg" for name in (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
        "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "analogpattern_by_Peter_Nerlich",
        "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
        "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt",
        "sunset_by_Aitzol_Berasategi")),
    *(f"/usr/share/wallpapers/{name}/contents/images/1920x1080.jpg" for name in (
        "BytheWater", "ColdRipple", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite", "OneStandsOut",
        "Path", "summer_1am")),
    "/usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg",
    *(f"skimage:{name}" for name in (
        "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")),
]  # fmt: skip
PACKAGES = "openclipart-png mate-backgrounds lomiri-wallpapers-16.04 plasma-workspace-wallpapers"
SHARES = {"train": 0.65, "val": 0.15, "test": 0.2}  # of each class's drawings and of the photographs
IMG_SIZE = 320  # px, square: boxnet's and fasterrcnn_mobilenet_v3_large_320_fpn's input size
SIDES = (20, 120)  # px, longer side of a pasted drawing, log-uniform
OBJECTS = (1, 6)  # drawings per image, uniform
ALPHA_VISIBLE = 32  # alpha above which a drawing's pixel counts as part of the object (0-255)
MAX_PIXELS = 4_000_000  # drawings larger than this (a few 600-megapixel road signs) are left out: too slow to read
CACHE_SIDE = 128  # px, longer side each drawing is read down to once (the largest paste is 120 px)


@dataclass
class Drawing:
    """One openclipart drawing, cropped to its visible pixels and read down to ``CACHE_SIDE``: RGBA uint8 (h, w, 4)."""

    path: str
    label: int
    rgba: np.ndarray


def _photo_path(name: str) -> Path:
    if name.startswith("skimage:"):  # the sample photos shipped inside scikit-image's data folder
        from skimage import data

        return Path(data.__file__).parent / name.removeprefix("skimage:")
    return Path(name)


def _missing() -> list[str]:
    photos = [name for name in PHOTOS if not _photo_path(name).is_file()]
    return ([str(CLIPART)] if not CLIPART.is_dir() else []) + photos


def read_drawing(path: Path, label: int) -> Drawing | None:
    """The drawing cut to its visible pixels, or None when it has no transparency to matte with or is too big."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        return None
    with image:
        if image.width * image.height > MAX_PIXELS:
            return None
        rgba = image.convert("RGBA")
    alpha = np.asarray(rgba)[..., 3]
    visible = alpha > ALPHA_VISIBLE
    if visible.all() or not visible.any() or (alpha < 10).mean() < 0.05:  # opaque rectangles are no drawings
        return None
    rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
    rgba = rgba.crop((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    scale = CACHE_SIDE / max(rgba.size)
    if scale < 1:
        rgba = rgba.resize((max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale))), Image.LANCZOS)
    return Drawing(str(path), label, np.asarray(rgba))


def read_photo(name: str) -> Image.Image:
    """A background photograph as RGB, read down to at most 1280 px on its longer side."""
    image = Image.open(_photo_path(name))
    image.draft("RGB", (1280, 1280))  # JPEG: decode at a reduced scale
    image = image.convert("RGB")
    image.thumbnail((1280, 1280), Image.LANCZOS)
    return image


def divide(items: list, rng: np.random.Generator) -> dict[str, list]:
    """Items shuffled and cut into the ``SHARES`` splits; each split gets at least one."""
    order = [items[i] for i in rng.permutation(len(items))]
    val = max(1, round(SHARES["val"] * len(order)))
    test = max(1, round(SHARES["test"] * len(order)))
    return {"test": order[:test], "val": order[test : test + val], "train": order[test + val :]}


def background(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random square crop (30-100% of the photo's shorter side) resized to ``IMG_SIZE``, mirrored half the time."""
    side = int(min(photo.size) * rng.uniform(0.3, 1.0))
    x, y = int(rng.integers(0, photo.width - side + 1)), int(rng.integers(0, photo.height - side + 1))
    crop = photo.crop((x, y, x + side, y + side)).resize((IMG_SIZE, IMG_SIZE), Image.BILINEAR)
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def paste(canvas: Image.Image, drawing: Drawing, placed: list[list[float]], rng: np.random.Generator) -> list | None:
    """Paste the drawing at a random size and free place; its exact box [x1, y1, x2, y2] px, or None if none fits."""
    low, high = SIDES
    longer = math.exp(rng.uniform(math.log(low), math.log(high)))
    h, w = drawing.rgba.shape[:2]
    scale = longer / max(h, w)
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    sprite = Image.fromarray(drawing.rgba).resize(size, Image.LANCZOS)
    if rng.random() < 0.5:
        sprite = sprite.transpose(Image.FLIP_LEFT_RIGHT)
    visible = np.asarray(sprite)[..., 3] > ALPHA_VISIBLE
    if not visible.any():
        return None
    rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
    for _ in range(30):  # a place overlapping no drawing already there
        x, y = int(rng.integers(0, IMG_SIZE - size[0] + 1)), int(rng.integers(0, IMG_SIZE - size[1] + 1))
        box = [x + cols[0], y + rows[0], x + cols[-1] + 1, y + rows[-1] + 1]
        if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in placed):
            canvas.paste(sprite, (x, y), sprite)
            return [float(v) for v in box]
    return None


def write_split(folder: Path, count: int, drawings: list[Drawing], photos: list[Image.Image], seed: int) -> dict:
    """``count`` composed images and their ``annotations.json`` in ``folder``; returns counts for the summary."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations, small = [], [], 0
    for index in range(count):
        canvas = background(photos[int(rng.integers(len(photos)))], rng)
        placed: list[list[float]] = []
        for _ in range(int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))):
            drawing = drawings[int(rng.integers(len(drawings)))]
            if (box := paste(canvas, drawing, placed, rng)) is None:
                continue
            placed.append(box)
            w, h = box[2] - box[0], box[3] - box[1]
            small += max(w, h) <= 40
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": drawing.label + 1,
                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0,
            })  # fmt: skip
        name = f"{folder.name}{index:05d}.jpg"
        canvas.save(folder / "images" / name, quality=92)
        images.append({"id": index + 1, "file_name": name, "width": IMG_SIZE, "height": IMG_SIZE})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "annotations.json").write_text(json.dumps(coco))
    return {"images": count, "boxes": len(annotations), "small_20_40px": small}


def build_composite(root: str | Path, train: int, val: int, test: int, seed: int = 0) -> dict:
    """Write the composed set under ``root`` (see the module docstring) unless the same one is there already.

    Returns:
        The summary written to ``root/composite.json``: settings, drawings and photographs per split, counts.
    """
    root = Path(root)
    if missing := _missing():
        raise SystemExit(f"missing {', '.join(missing[:3])}...: apt-get install {PACKAGES}")
    settings = {"train": train, "val": val, "test": test, "seed": seed, "img_size": IMG_SIZE, "sides": SIDES}
    key = hashlib.sha256(json.dumps([settings, CLASSES, PHOTOS]).encode()).hexdigest()[:16]
    summary_path = root / "composite.json"
    if summary_path.is_file() and json.loads(summary_path.read_text()).get("key") == key:
        return json.loads(summary_path.read_text())
    rng = np.random.default_rng(seed)
    drawings: dict[str, list[Drawing]] = {"train": [], "val": [], "test": []}
    for label, folder in enumerate(CLASSES.values()):
        found = [d for p in sorted((CLIPART / folder).rglob("*.png")) if (d := read_drawing(p, label)) is not None]
        for split, part in divide(found, rng).items():
            drawings[split] += part
    photo_names = divide(PHOTOS, rng)
    counts = {"train": train, "val": val, "test": test}
    summary = {"key": key, "settings": settings, "classes": list(CLASSES), "splits": {}}
    for offset, split in enumerate(("train", "val", "test")):
        photos = [read_photo(name) for name in photo_names[split]]
        written = write_split(root / split, counts[split], drawings[split], photos, seed * 1000 + offset)
        summary["splits"][split] = {
            **written, "drawings": len(drawings[split]), "photos": photo_names[split],
        }  # fmt: skip
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder to write train/, val/ and test/ into")
    parser.add_argument("--train", type=int, default=1200, help="training images (default 1200)")
    parser.add_argument("--val", type=int, default=200, help="validation images (default 200)")
    parser.add_argument("--test", type=int, default=300, help="final test images (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = build_composite(args.root, args.train, args.val, args.test, args.seed)
    for split, counts in summary["splits"].items():
        print(split, {key: value for key, value in counts.items() if key != "photos"}, len(counts["photos"]), "photos")


if __name__ == "__main__":
    main()
