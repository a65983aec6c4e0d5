"""Detections drawn on the images they came from: ``cnnkit predict ... --draw DIR``.

Each image is decoded upright at its original size (:func:`cnnkit.data.decode.load_image`,
the orientation the boxes are in), and its boxes are drawn with their label and score, one
colour per class, and written as ``DIR/<name>.boxes.png``. PNG, so the drawing adds no
compression artefacts; the suffix keeps an input image from ever being overwritten.
No PyTorch: an ONNX export draws with Pillow alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from cnnkit.data.decode import ImageSource, load_image
from cnnkit.errors import CnnkitError
from cnnkit.tasks.detect.records import BoxPrediction

SUFFIX = ".boxes.png"
# matplotlib's tab10, which the run's gallery uses: distinct for the first ten classes, then repeating
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def colour_of(label: str, classes: Sequence[str]) -> str:
    """The colour a class's boxes are drawn in (the page of ``cnnkit serve`` uses the same palette)."""
    return PALETTE[classes.index(label) % len(PALETTE)] if label in classes else PALETTE[-1]


def draw_boxes(source: ImageSource, prediction: BoxPrediction, classes: Sequence[str]) -> Image.Image:
    """The upright original image (RGB) with ``prediction``'s boxes, labels and scores drawn on it."""
    image = load_image(source).convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(1, round(max(image.size) / 300))  # about 1 px per 300 px of image: visible, not covering
    for label, score, (x1, y1, x2, y2) in zip(prediction.labels, prediction.scores, prediction.boxes):
        colour = colour_of(label, classes)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        text = f"{label} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        lift = min(bottom - top + 2, y1)  # above the box, inside the image
        draw.rectangle((left, top - lift, right + 2, bottom - lift), fill=colour)
        draw.text((x1 + 1, y1 - lift), text, fill="white")
    return image


def drawn_names(sources: Sequence[str]) -> list[str]:
    """One file name per image, ``<stem>.boxes.png``; a stem met again gets ``.2``, ``.3``, ... before the suffix."""
    seen: dict[str, int] = {}
    names = []
    for source in sources:
        stem = Path(source).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}{'' if seen[stem] == 1 else f'.{seen[stem]}'}{SUFFIX}")
    return names


def write_drawings(predictions: Sequence[BoxPrediction], classes: Sequence[str], folder: str | Path) -> list[Path]:
    """Draw each prediction on its image file and write it to ``folder`` (created); the written paths.

    Earlier drawings of the same name are replaced; an input image is never written over.

    Example:
        >>> predictions, _ = load_detector("runs/train").predict_files(["shelf.jpg"])
        >>> write_drawings(predictions, ["bottle"], "drawn")
        [PosixPath('drawn/shelf.boxes.png')]
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise CnnkitError(f"--draw {folder} is a file; give a folder for the drawn images")
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {Path(prediction.source).resolve() for prediction in predictions}
    written = []
    for prediction, name in zip(predictions, drawn_names([p.source for p in predictions])):
        target = folder / name
        if target.resolve() in inputs:
            raise CnnkitError(f"--draw {folder} would write over the input {target}; give another folder")
        draw_boxes(prediction.source, prediction, classes).save(target)
        written.append(target)
    return written
