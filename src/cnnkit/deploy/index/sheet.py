"""Contact sheets: each query beside its nearest neighbours, with the cosine similarity under each."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from cnnkit.data.decode import ImageDecodeError, ImageSource, load_image

THUMB = 112  # pixels per picture side
CAPTION = 18  # pixels of text under each picture
GAP = 6  # pixels between pictures; the query is set apart by three of them
QUERY_FRAME = (230, 120, 0)


def _thumbnail(source: ImageSource) -> Image.Image:
    """The image scaled to fit THUMB x THUMB on grey (a file that no longer decodes shows as a grey square)."""
    tile = Image.new("RGB", (THUMB, THUMB), (128, 128, 128))
    try:
        image = load_image(source).convert("RGB")
    except ImageDecodeError:
        return tile
    image = ImageOps.contain(image, (THUMB, THUMB))  # small images are enlarged too, so every tile reads alike
    tile.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return tile


def draw_contact_sheet(
    rows: Sequence[tuple[ImageSource, Sequence[tuple[ImageSource, float]]]], out: str | Path
) -> Path:
    """Draw one row per query: the query (framed), a gap, then its neighbours with their scores; save as PNG.

    Args:
        rows: (query image, [(neighbour image, cosine similarity), ...]) per query, neighbours best first.
        out: The PNG file to write (its folder is created).

    Returns:
        The path written.
    """
    columns = max((len(neighbours) for _, neighbours in rows), default=0)
    cell_w, cell_h = THUMB + GAP, THUMB + CAPTION + GAP
    width = GAP + cell_w * (columns + 1) + 2 * GAP
    sheet = Image.new("RGB", (width, GAP + cell_h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, (query, neighbours) in enumerate(rows):
        top = GAP + row * cell_h
        sheet.paste(_thumbnail(query), (GAP, top))
        draw.rectangle((GAP - 2, top - 2, GAP + THUMB + 1, top + THUMB + 1), outline=QUERY_FRAME, width=2)
        draw.text((GAP, top + THUMB + 3), "query", fill=QUERY_FRAME)
        for column, (image, score) in enumerate(neighbours):
            left = 3 * GAP + cell_w * (column + 1)
            sheet.paste(_thumbnail(image), (left, top))
            draw.text((left, top + THUMB + 3), f"{score:.3f}", fill=(0, 0, 0))
    path = Path(out).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path
