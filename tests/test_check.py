"""Dirty data: every bad file is found, named and skipped; odd but valid files are read; user files never change."""

import csv
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import draw_shape, run_cli
from PIL import Image

import cnnkit
from cnnkit.data import check
from cnnkit.data.check import scan_folder
from cnnkit.errors import CnnkitError
from cnnkit.training.prepare import class_weights, sampling_weights

BAD = {
    "train/circle/zero.jpg": "empty file (0 bytes)",
    "train/circle/cut.jpg": "truncated",
    "train/circle/cut.png": "cannot decode",
    "train/circle/page.jpg": "HTML/XML text",
    "train/circle/bomb.png": "decompression bomb",
    "train/square/outside.png": "symlink leaves the dataset root",
    "train/square/loop.jpg": "broken symlink or symlink loop",
    "train/square/loop2.jpg": "broken symlink or symlink loop",
}


# The bomb is expected: Pillow warns about it, then cnnkit refuses it.
pytestmark = [
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path / "cache" / "cnnkit"))


def encoded(image: Image.Image, format: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kwargs)
    return buffer.getvalue()


@pytest.fixture
def dirty_folder(tmp_path) -> Path:
    """train/ and test/ with two real classes plus every kind of file the issue lists."""
    rng = np.random.default_rng(0)
    root = tmp_path / "dirty"
    for split, count in (("train", 40), ("test", 6)):
        for shape in ("circle", "square"):
            (root / split / shape).mkdir(parents=True)
            for index in range(count):
                draw_shape(shape, (24, 24), rng).save(root / split / shape / f"{shape}{index}.png")
    circle, square = root / "train" / "circle", root / "train" / "square"
    photo = encoded(draw_shape("circle", (64, 64), rng), "JPEG", quality=90)
    (circle / "zero.jpg").write_bytes(b"")
    (circle / "cut.jpg").write_bytes(photo[: len(photo) // 2])
    whole_png = encoded(draw_shape("circle", (64, 64), rng), "PNG")
    (circle / "cut.png").write_bytes(whole_png[: len(whole_png) // 2])
    (circle / "page.jpg").write_text("<!DOCTYPE html><html><body>404 not found</body></html>")
    Image.new("1", (10_000, 10_000)).save(circle / "bomb.png")  # 100 Mpx in a few kB
    (circle / "png named.jpeg").write_bytes((circle / "circle1.png").read_bytes())
    base = draw_shape("circle", (30, 20), rng)
    base.convert("CMYK").save(circle / "cmyk.jpg")
    base.convert("P").save(circle / "palette.png")
    base.convert("1").save(circle / "one-bit.png")
    base.convert("LA").save(circle / "gray-alpha.png")
    base.convert("RGBA").save(circle / "rgba.png")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(circle / "deep16.png")
    exif = base.getexif()
    exif[0x0112] = 6
    base.save(circle / "rotated.jpg", exif=exif)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(square / "tiny.png")
    Image.new("RGB", (1, 10_000), (10, 200, 10)).save(square / "tall.png")
    draw_shape("square", (24, 24), rng).save(square / "ünïcödé 名前 'odd' #1;,.png")
    (square / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (square / "._square0.png").write_bytes(b"\0\5\26\7 AppleDouble")
    outside = tmp_path / "outside.png"
    draw_shape("square", (24, 24), rng).save(outside)
    (square / "outside.png").symlink_to(outside)
    (square / "loop.jpg").symlink_to(square / "loop2.jpg")
    (square / "loop2.jpg").symlink_to(square / "loop.jpg")
    (square / "back").symlink_to(root, target_is_directory=True)  # a folder loop
    (root / "train" / "triangle").mkdir()  # an empty class
    (root / "test" / "square" / "leaked.png").write_bytes((square / "square3.png").read_bytes())
    return root


def tree_fingerprint(root: Path) -> dict[str, str]:
    """Every entry's type and content (links by target), so any change, move or deletion shows."""
    prints = {}
    for folder, subfolders, names in os.walk(root):
        for name in subfolders + names:
            path = Path(folder, name)
            status = path.lstat()
            if path.is_symlink():
                prints[str(path)] = f"link:{os.readlink(path)}"
            elif path.is_file():
                prints[str(path)] = f"{status.st_mtime_ns}:{hashlib.sha256(path.read_bytes()).hexdigest()}"
            else:
                prints[str(path)] = "dir"
    return prints


def test_scan_finds_every_bad_file_with_its_reason_and_reads_the_odd_ones(dirty_folder):
    limit = Image.MAX_IMAGE_PIXELS
    report = scan_folder(dirty_folder)
    found = {item.path: item.reason for item in report.bad}
    assert set(found) == set(BAD)
    for path, reason in BAD.items():
        assert reason in found[path], (path, found[path])
    assert limit == Image.MAX_IMAGE_PIXELS  # the bomb was refused without touching Pillow's global limit
    assert report.hidden == 2 and report.files == 2 * 46 + 1 + 19
    warnings = "\n".join(report.warnings)
    assert "train/circle/png named.jpeg: PNG content named .jpeg; read by its content" in warnings
    assert "empty class folder (no readable images): train/triangle" in warnings
    assert "symlinked folder not followed: train/square/back" in warnings
    assert "across splits (leakage" in warnings and "test/square/leaked.png" in warnings


@pytest.mark.slow
def test_training_skips_and_lists_bad_files_and_leaves_user_files_untouched(dirty_folder, tmp_path, capsys):
    before = tree_fingerprint(dirty_folder)
    run = cnnkit.train(
        data=str(dirty_folder), img_size=16, epochs=1, batch_size=32, max_bad_share=0.1, out=str(tmp_path / "runs")
    )
    printed = capsys.readouterr().out
    with open(run.dir / "skipped.csv", newline="", encoding="utf-8") as stream:
        listed = {row["path"]: row["reason"] for row in csv.DictReader(stream)}
    assert set(listed) == set(BAD)
    assert f"skipped {len(BAD)} unreadable file(s)" in printed
    assert "test image(s) also in train (same pixels)" in printed
    sources = json.loads((run.dir / "split.json").read_text())
    everything = sources["train"] + sources["val"] + sources["test"]
    assert not set(BAD) & set(everything)
    assert "train/square/ünïcödé 名前 'odd' #1;,.png" in everything
    assert "train/circle/deep16.png" in everything and "train/square/tall.png" in everything
    assert tree_fingerprint(dirty_folder) == before


def test_too_many_bad_files_abort_with_a_summary(dirty_folder, tmp_path):
    before = tree_fingerprint(dirty_folder)
    with pytest.raises(CnnkitError, match=r"8 of \d+ files \(\d+\.\d%\).*over the --max-bad-share limit of 1\.0%"):
        cnnkit.train(data=str(dirty_folder), img_size=16, epochs=1, out=str(tmp_path / "runs"), verbose=False)
    assert (tmp_path / "runs" / "train" / "skipped.csv").exists()
    assert tree_fingerprint(dirty_folder) == before


@pytest.mark.slow
def test_check_command_reports_and_sets_the_exit_code(dirty_folder):
    result = run_cli("check", str(dirty_folder))
    assert result.returncode == 1, result.stderr
    assert "8 bad" in result.stdout and "bad: train/circle/page.jpg: not an image" in result.stdout
    assert run_cli("check", str(dirty_folder), "--max-bad-share", "0.5").returncode == 0


def test_scan_is_cached_by_file_list_sizes_and_times(dirty_folder, monkeypatch):
    first = scan_folder(dirty_folder)
    monkeypatch.setattr(check, "_check_file", lambda root, rel, decode: pytest.fail("rescanned an unchanged folder"))
    assert scan_folder(dirty_folder).bad == first.bad
    (dirty_folder / "train" / "circle" / "zero.jpg").write_bytes(
        (dirty_folder / "train/circle/circle0.png").read_bytes()
    )
    calls = []
    monkeypatch.setattr(check, "_check_file", lambda root, rel, decode: calls.append(rel) or (None, None, None))
    scan_folder(dirty_folder)
    assert calls  # a changed file means a new scan


@pytest.mark.slow
def test_heavy_imbalance_warns_and_balanced_options_even_it_out(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for shape, count in (("circle", 40), ("square", 3)):
        (tmp_path / "data" / shape).mkdir(parents=True)
        for index in range(count):
            draw_shape(shape, (16, 16), rng).save(tmp_path / "data" / shape / f"{index}.png")
    run = cnnkit.train(
        data=str(tmp_path / "data"),
        img_size=16,
        epochs=1,
        batch_size=8,
        class_weights="balanced",
        sampler="balanced",
        out=str(tmp_path / "runs"),
    )
    assert "heavy class imbalance" in capsys.readouterr().out and run.history
    labels = torch.tensor([0] * 90 + [1] * 10)
    assert class_weights(labels, 2).tolist() == pytest.approx([100 / 180, 100 / 20])
    draws = torch.multinomial(
        sampling_weights(labels), 10_000, replacement=True, generator=torch.Generator().manual_seed(0)
    )
    assert 0.45 < (labels[draws] == 1).double().mean().item() < 0.55


@pytest.mark.slow
def test_training_decodes_each_file_once(dirty_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(check, "load_image", lambda *_a, **_k: pytest.fail("the scan decoded a file again"))
    run = cnnkit.train(
        data=str(dirty_folder), img_size=16, epochs=1, workers=1, max_bad_share=0.9, out=str(tmp_path), verbose=False
    )
    skipped = (run.dir / "skipped.csv").read_text()
    assert "train/circle/page.jpg" in skipped  # HTML content: found by the reading scan
    assert "train/circle/cut.png" in skipped and "train/circle/bomb.png" in skipped  # found by the one decoding pass


@pytest.mark.slow
def test_scan_of_an_empty_folder_is_an_error_and_check_exits_2(tmp_path):
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(CnnkitError, match=r"no images found in .*empty \(1 subfolder\(s\), 0 other file\(s\)"):
        scan_folder(tmp_path / "empty")
    result = run_cli("check", str(tmp_path / "empty"))
    assert result.returncode == 2 and "no images found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def duplicated_folder(root: Path, sets: int) -> Path:
    """Two classes holding ``sets`` pairs of identical files between them, and one file copied ten times."""
    rng = np.random.default_rng(2)
    for shape in ("circle", "square"):
        (root / shape).mkdir(parents=True)
    for index in range(sets):
        shape = ("circle", "square")[index % 2]
        data = encoded(draw_shape(shape, (12, 12), rng), "PNG")
        (root / shape / f"{index}.png").write_bytes(data)
        (root / shape / f"{index} copy.png").write_bytes(data)
    data = encoded(draw_shape("square", (12, 12), rng), "PNG")
    for index in range(10):
        (root / "square" / f"same{index}.png").write_bytes(data)
    return root


@pytest.mark.slow
def test_many_duplicates_are_summarised_and_listed_in_full_in_a_file(tmp_path):
    report = scan_folder(duplicated_folder(tmp_path / "dupes", sets=300), workers=1)
    assert len(report.details) == 301 and len(report.warnings) <= check.SHOWN_PER_KIND + 1
    listed = Path(report.full_list).read_text(encoding="utf-8").splitlines()
    assert listed == report.details and "identical files duplicates: square/299 copy.png, square/299.png" in listed
    assert f"... and 299 more like these; every warning is in {report.full_list}" in report.warnings
    assert report.summary().endswith("0 bad, 301 warning(s); 0 hidden and 0 non-image file(s) ignored")
    Path(report.full_list).unlink()
    assert Path(scan_folder(tmp_path / "dupes").full_list).read_text(encoding="utf-8").splitlines() == listed


def test_a_large_set_of_identical_files_names_four_and_counts_the_rest(tmp_path):
    report = scan_folder(duplicated_folder(tmp_path / "dupes", sets=1), workers=1)
    copies = ", ".join(f"square/same{index}.png" for index in range(4))
    assert f"identical files duplicates (10 files): {copies} and 6 more" in report.warnings
    assert f"every warning in full: {report.full_list}" in report.warnings
    assert any(line.endswith("square/same9.png") for line in Path(report.full_list).read_text().splitlines())


@pytest.mark.slow
def test_check_command_prints_a_bounded_summary_of_many_duplicates(tmp_path):
    result = run_cli("check", str(duplicated_folder(tmp_path / "dupes", sets=300)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) <= 6 and "301 warning(s)" in lines[0]
    full_list = lines[-1].rpartition("every warning is in ")[2]
    assert len(Path(full_list).read_text(encoding="utf-8").splitlines()) == 301


def test_scan_leaves_out_cnnkit_output(shapes_folder):
    from test_data import fake_run_dir

    assert not scan_folder(shapes_folder).details
    fake_run_dir(shapes_folder / "runs" / "train")
    report = scan_folder(shapes_folder)  # the same images, but not the cached report: it says what was left out
    assert report.files == 36 and "ignored runs/: cnnkit output" in report.warnings
    assert not [w for w in report.details if "runs/train" in w or "empty class folder" in w]


def test_scan_warns_about_images_outside_any_class_folder(shapes_folder):
    draw_shape("circle", (16, 16), np.random.default_rng(3)).save(shapes_folder / "stray.png")
    warnings = "\n".join(scan_folder(shapes_folder).warnings)
    assert f"1 image(s) lie directly in {shapes_folder}, outside any class folder (e.g. stray.png)" in warnings


def test_imbalance_warnings_name_empty_and_tiny_classes_truthfully():
    assert check.imbalance_warnings({"a": 0, "b": 0}) == [
        "no training images for class(es) a, b: the model cannot learn them; "
        "add readable images to their folders or remove the folders"
    ]
    (empty,) = check.imbalance_warnings({"a": 0, "b": 5})  # no "a only 0": one class has none, the rest is fine
    assert empty.startswith("no training images for class(es) a:")
    assert check.imbalance_warnings({"a": 1, "b": 10})[0].startswith("heavy class imbalance: b has 10 training images")
    assert check.imbalance_warnings({"a": 2, "b": 10}) == [] and check.imbalance_warnings({"a": 3}) == []


def test_no_readable_training_images_is_one_error_that_claims_no_skipped_csv(tmp_path, capsys):
    for shape in ("circle", "square"):
        (tmp_path / "data" / shape).mkdir(parents=True)
        for index in range(3):
            (tmp_path / "data" / shape / f"{index}.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(CnnkitError, match=r"no readable training images: 6 file\(s\) could not be used, e\.g\. "):
        cnnkit.train(data=str(tmp_path / "data"), img_size=16, epochs=1, out=str(tmp_path / "runs"))
    assert "skipped.csv" not in capsys.readouterr().out and not (tmp_path / "runs").exists()
