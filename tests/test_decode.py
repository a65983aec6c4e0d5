import io

import numpy as np
import pytest
from PIL import Image

from cnnkit.data import decode
from cnnkit.data.decode import ImageDecodeError, decode_image, load_image, resize_image


def save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_load_image_applies_exif_orientation(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    path = save(image, tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = np.asarray(load_image(path))
    assert upright.shape == (40, 20, 3)
    assert upright[:20].mean() > 200 and upright[20:].mean() < 50  # white half is now on top


def test_load_image_composites_transparency_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image = load_image(save(rgba, tmp_path / "clear.png"))
    assert image.mode == "RGB"
    assert np.asarray(image)[0, 0].tolist() == [255, 255, 255]
    la = Image.new("LA", (4, 4), (0, 255))
    assert load_image(save(la, tmp_path / "la.png")).mode == "L"


def test_load_image_scales_16bit_instead_of_saturating(tmp_path):
    pixels = np.full((8, 8), 32768, np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    value = np.asarray(load_image(path))[0, 0]
    assert 125 <= value <= 130


@pytest.mark.parametrize("mode", ["CMYK", "P", "1", "L", "RGB"])
def test_decode_image_converts_every_mode_to_requested_channels(tmp_path, mode):
    image = Image.new("RGB", (10, 6), (10, 200, 30)).convert(mode)
    path = save(image, tmp_path / ("x.tif" if mode == "CMYK" else "x.png"))
    assert decode_image(path, 8, 3).shape == (3, 8, 8)
    assert decode_image(path, 8, 1).shape == (1, 8, 8)


@pytest.mark.parametrize("rule", ["crop", "squash", "pad"])
def test_resize_image_gives_square_output(rule):
    assert resize_image(Image.new("RGB", (1, 10000)), 16, rule).size == (16, 16)


def test_resize_pad_keeps_aspect_with_black_borders():
    padded = np.asarray(resize_image(Image.new("L", (20, 10), 255), 10, "pad"))
    assert padded[0].max() == 0 and padded[5].min() == 255


def test_decode_image_accepts_bytes_pil_and_arrays_identically(tmp_path):
    image = Image.new("RGB", (12, 12), (50, 100, 150))
    path = save(image, tmp_path / "x.png")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    expected = decode_image(path, 8, 3)
    for source in (buffer.getvalue(), image, np.asarray(image), np.asarray(image).transpose(2, 0, 1)):
        np.testing.assert_array_equal(decode_image(source, 8, 3), expected)


def test_load_image_rejects_non_images_with_the_file_name(tmp_path):
    fake = tmp_path / "page.jpg"
    fake.write_text("<html>not an image</html>")
    with pytest.raises(ImageDecodeError, match=r"page\.jpg"):
        load_image(fake)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.png"):
        load_image(empty)


def test_load_image_rejects_truncated_files(tmp_path):
    path = save(Image.new("RGB", (64, 64), (1, 2, 3)), tmp_path / "whole.png")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ImageDecodeError, match=r"cut\.png"):
        load_image(truncated)


def test_load_image_refuses_decompression_bombs_before_decoding(tmp_path, monkeypatch):
    path = save(Image.new("L", (100, 100)), tmp_path / "big.png")
    monkeypatch.setattr(decode, "MAX_PIXELS", 9_999)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_image(path)
    assert Image.MAX_IMAGE_PIXELS != 9_999  # Pillow's process-wide limit is untouched


def test_capture_warnings_files_each_threads_warnings_under_its_own_image(tmp_path, monkeypatch, recwarn):
    from concurrent.futures import ThreadPoolExecutor

    paths = [save(Image.new("RGB", (30 + i, 10)), tmp_path / f"{i}.png") for i in range(8)]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # Pillow warns about every one of them (refuses over 400)
    notes: dict[int, list[str]] = {i: [] for i in range(8)}
    with decode.capture_warnings(), ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: load_image(paths[i], notes=notes[i]), range(8)))
    for i in range(8):
        assert notes[i] == [
            f"DecompressionBombWarning: Image size ({(30 + i) * 10} pixels) exceeds limit of 200 pixels, "
            "could be decompression bomb DOS attack."
        ]
    assert not recwarn.list  # none reached the console
    load_image(paths[0])  # outside capture_warnings, a warning is shown as before, never swallowed
    assert [w.category.__name__ for w in recwarn.list] == ["DecompressionBombWarning"]
