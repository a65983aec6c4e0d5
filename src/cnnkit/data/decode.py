"""One image-decoding path for training, evaluation, prediction and serving.

Every image, whether a file, bytes, a PIL image or an array, goes through
:func:`load_image` (EXIF orientation, transparency, 16-bit depth, colour mode) and then
:func:`resize_image` (one resize rule), so the model sees the same tensor everywhere.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnkit.errors import CnnkitError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

# Transparent pixels are composited on white: scanned documents, icons and product
# photos with cut-out backgrounds all read naturally that way.
TRANSPARENCY_BACKGROUND = (255, 255, 255)

# Images with more pixels than this are refused before their pixels are decoded
# (decompression bombs), without touching Pillow's process-wide limit.
MAX_PIXELS = 89_478_485

# The largest model input side a dataset is decoded at: 4096 x 4096 RGB is already 48 MiB per
# image, far past what a CNN trains on; larger sides only exhaust memory or the cache disk.
MAX_IMG_SIZE = 4096

# Pillow warns about tolerable oddities (palette transparency, corrupt EXIF, images near the bomb
# limit) through the warnings module. Inside capture_warnings() a decoding thread's warnings go to
# the list it passed as ``notes`` instead of the console, so they can be reported per file.
_decoding = threading.local()

ImageSource = str | Path | bytes | Image.Image | np.ndarray


class ImageDecodeError(CnnkitError):
    """An image that cannot be decoded; the message names the file and the reason."""


def _open(source: ImageSource) -> tuple[Image.Image, str, io.IOBase | None]:
    """The image (not yet decoded), its name for messages, and the stream opened for it (None for images, arrays)."""
    if isinstance(source, Image.Image):
        return source, "<image>", None
    if isinstance(source, np.ndarray):
        return _array_to_image(source), "<array>", None
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except OSError as error:
        raise ImageDecodeError(f"cannot read {name}: {error.strerror or error}") from None
    try:
        image = Image.open(stream)
    except UnidentifiedImageError:
        stream.close()
        raise ImageDecodeError(f"{name} is not an image Pillow can read (empty, truncated or another format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        stream.close()
        raise ImageDecodeError(f"cannot open {name}: {error}") from None
    return image, name, stream


def _array_to_image(array: np.ndarray) -> Image.Image:
    """Accept (H, W), (H, W, C) or (C, H, W) arrays of uint8 or floats in [0, 1]."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        scale = 255.0 if float(array.max(initial=0)) <= 1.0 else 1.0
        array = np.clip(array.astype(np.float64) * scale, 0, 255).round().astype(np.uint8)
    if array.ndim not in (2, 3):
        raise ImageDecodeError(f"an image array must be (H, W), (H, W, C) or (C, H, W); got shape {array.shape}")
    return Image.fromarray(array)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16- and 32-bit grayscale to 8 bits instead of letting Pillow clip it to white."""
    pixels = np.asarray(image)
    if image.mode.startswith("I;16") or (image.mode == "I" and pixels.max(initial=0) > 255):
        pixels = pixels.astype(np.float64) / 257.0
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="L")


def _normalize_mode(image: Image.Image) -> Image.Image:
    """Return an 'L' or 'RGB' image, with transparency composited on the background."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return _to_8bit(image)
    if image.mode == "1":
        return image.convert("L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENCY_BACKGROUND, 255))
        composite = Image.alpha_composite(background, rgba)
        gray_source = image.mode in ("LA", "La") or (image.mode == "P" and _palette_is_gray(image))
        return composite.convert("L" if gray_source else "RGB")
    if image.mode == "P" and _palette_is_gray(image):
        return image.convert("L")
    return image.convert("RGB")


def _palette_is_gray(image: Image.Image) -> bool:
    palette = np.asarray(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    return bool(len(palette)) and bool((palette == palette[:, :1]).all())


@contextlib.contextmanager
def capture_warnings() -> Iterator[None]:
    """Send the warnings raised while decoding to each call's ``notes`` list instead of the console.

    Enter it once, in the thread that starts the decoding threads, around all of them: it
    swaps the process-wide warning hook, which is not safe to do from several threads at once.
    Warnings raised outside a :func:`load_image` call that passed ``notes`` are shown as before.
    """
    with warnings.catch_warnings():
        previous = warnings.showwarning
        # Every file's warning, not only the first from each line of Pillow.
        warnings.filterwarnings("always", module=r"PIL\.")
        warnings.filterwarnings("always", module=__name__)

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            notes = getattr(_decoding, "notes", None)
            if notes is None:
                previous(message, category, filename, lineno, file, line)
            else:
                notes.append(f"{category.__name__}: {message}")

        warnings.showwarning = show
        yield


def load_image(source: ImageSource, min_side: int | None = None, notes: list[str] | None = None) -> Image.Image:
    """Decode an image into an upright 'L' (grayscale) or 'RGB' PIL image.

    EXIF orientation is applied, transparency is composited on white, 16-bit images are
    scaled to 8 bits, and images larger than :data:`MAX_PIXELS` are refused before decoding.
    With ``min_side``, a JPEG may be decoded at a power-of-two reduced scale (its DCT
    "draft" mode) that still leaves both sides at least ``min_side``: several times faster
    for photos far larger than the model input.

    Args:
        source: A path, encoded bytes, a PIL image or an array.
        min_side: Smallest side the caller needs, allowing JPEG draft decoding. Defaults to None.
        notes: Receives Pillow's warnings about this image (inside :func:`capture_warnings`),
            so a scan can report them per file. Defaults to None (warnings are shown).

    Raises:
        ImageDecodeError: the source is not a readable image.
    """
    _decoding.notes = notes
    try:
        return _load(source, min_side)
    finally:
        _decoding.notes = None


def _load(source: ImageSource, min_side: int | None) -> Image.Image:
    image, name, stream = _open(source)
    try:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageDecodeError(
                f"{name} is {width}x{height} pixels, over the {MAX_PIXELS:,}-pixel limit (possible decompression bomb)"
            )
        if min_side is not None and image.format == "JPEG":
            image.draft(image.mode, (min_side, min_side))
        image.load()
        image = ImageOps.exif_transpose(image)
        return _normalize_mode(image)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"cannot decode {name}: {error}") from None
    finally:
        if stream is not None:  # the pixels are loaded; an open file would wait for the garbage collector
            stream.close()


def resize_image(image: Image.Image, img_size: int, resize: str = "crop") -> Image.Image:
    """Resize to a square ``img_size`` by one rule: ``crop``, ``squash`` or ``pad``."""
    width, height = image.size
    if width == height == img_size:
        return image
    if resize == "squash":
        return image.resize((img_size, img_size), Image.Resampling.BILINEAR)
    if resize == "crop":
        scale = img_size / min(width, height)
        new_size = (max(img_size, round(width * scale)), max(img_size, round(height * scale)))
        scaled = image.resize(new_size, Image.Resampling.BILINEAR)
        left, top = (new_size[0] - img_size) // 2, (new_size[1] - img_size) // 2
        return scaled.crop((left, top, left + img_size, top + img_size))
    if resize == "pad":
        scale = img_size / max(width, height)
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        canvas = Image.new(image.mode, (img_size, img_size))
        canvas.paste(
            image.resize(new_size, Image.Resampling.BILINEAR),
            ((img_size - new_size[0]) // 2, (img_size - new_size[1]) // 2),
        )
        return canvas
    raise CnnkitError(f"unknown resize rule {resize!r}; use crop, squash or pad")


def to_array(image: Image.Image, channels: int) -> np.ndarray:
    """Convert an 'L' or 'RGB' image to a uint8 array of shape (C, H, W)."""
    converted = image.convert("L" if channels == 1 else "RGB")
    pixels = np.asarray(converted, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def decode_resized(
    source: ImageSource, img_size: int, resize: str = "crop", notes: list[str] | None = None
) -> Image.Image:
    """Decode, orient and resize one image; still 'L' or 'RGB' as the file was (``notes`` as in :func:`load_image`)."""
    return resize_image(load_image(source, min_side=img_size, notes=notes), img_size, resize)


def decode_image(source: ImageSource, img_size: int, channels: int, resize: str = "crop") -> np.ndarray:
    """Decode, orient, convert and resize one image into a uint8 array (C, H, W).

    Training (through the image cache), evaluation, prediction, export checks and the
    service all call this, so one file gives one tensor everywhere.
    """
    return to_array(decode_resized(source, img_size, resize), channels)


def decode_batches(
    paths: Sequence[str | Path], img_size: int, channels: int, resize: str = "crop", batch_size: int = 256
) -> Iterator[tuple[np.ndarray | None, list[str], list[tuple[str, str]]]]:
    """Decode files ``batch_size`` at a time, skipping those that cannot be decoded (prediction, search queries).

    Yields:
        Per batch: its decoded images (B, C, H, W) uint8, or None when none decoded; their paths;
        and (path, reason) for each file of the batch that could not be decoded.
    """
    for start in range(0, len(paths), batch_size):
        arrays, names, failures = [], [], []
        for path in paths[start : start + batch_size]:
            try:
                arrays.append(decode_image(path, img_size, channels, resize))
                names.append(str(path))
            except ImageDecodeError as error:
                failures.append((str(path), str(error)))
        yield (np.stack(arrays) if arrays else None), names, failures
