"""The decoded-image cache: decode once, same pixels as prediction, rebuilt on change, never half-written."""

from __future__ import annotations

import errno
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_shapes_folder
from PIL import Image

from cnnkit.data import cache as cache_module
from cnnkit.data import load_data
from cnnkit.data.cache import decode_cached
from cnnkit.data.decode import decode_image
from cnnkit.errors import CnnkitError


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_rows_match_the_prediction_path_pixel_for_pixel(shapes_folder: Path, tmp_path: Path):
    files = _files(shapes_folder)
    decoded = decode_cached(shapes_folder, files, 24, None, "crop", workers=2, cache=tmp_path)
    assert decoded.images.shape == (len(files), 3, 24, 24)
    assert decoded.kept == list(range(len(files))) and not decoded.failures
    for row, rel in enumerate(files):
        expected = torch.tensor(decode_image(shapes_folder / rel, 24, 3, "crop"))
        assert torch.equal(decoded.images[row], expected), rel


def test_a_second_call_decodes_nothing(shapes_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    files = _files(shapes_folder)
    first = decode_cached(shapes_folder, files, 16, None, "crop", workers=1, cache=tmp_path)

    def refuse(*_args, **_kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_module, "decode_resized", refuse)
    second = decode_cached(shapes_folder, files, 16, None, "crop", workers=1, cache=tmp_path)
    assert torch.equal(first.images, second.images)


def test_a_changed_file_builds_a_new_entry(shapes_folder: Path, tmp_path: Path):
    files = _files(shapes_folder)
    before = decode_cached(shapes_folder, files, 16, None, "crop", workers=1, cache=tmp_path)
    changed = next(i for i, rel in enumerate(files) if rel.endswith(".png"))
    Image.new("RGB", (40, 40), (255, 0, 0)).save(shapes_folder / files[changed])
    after = decode_cached(shapes_folder, files, 16, None, "crop", workers=1, cache=tmp_path)
    assert not torch.equal(before.images[changed], after.images[changed])
    assert torch.equal(after.images[changed, :, 8, 8], torch.tensor([255, 0, 0], dtype=torch.uint8))
    assert len([p for p in (tmp_path / "images").iterdir() if p.is_dir()]) == 2


def test_bad_files_are_reported_and_left_out(shapes_folder: Path, tmp_path: Path):
    (shapes_folder / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    files = _files(shapes_folder)
    bad = files.index("circle/broken.jpg")
    decoded = decode_cached(shapes_folder, files, 16, None, "crop", workers=2, cache=tmp_path)
    assert [row for row, _ in decoded.failures] == [bad]
    assert "cannot" in decoded.failures[0][1] or "not an image" in decoded.failures[0][1]
    assert decoded.kept == [i for i in range(len(files)) if i != bad]
    last = torch.tensor(decode_image(shapes_folder / files[-1], 16, 3, "crop"))
    assert torch.equal(decoded.images[-1], last)  # rows after the bad one moved up, intact


def test_an_interrupted_build_is_never_used(shapes_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    files = _files(shapes_folder)

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "_compact", crash)
    with pytest.raises(KeyboardInterrupt):
        decode_cached(shapes_folder, files, 16, None, "crop", workers=1, cache=tmp_path)
    assert not [p for p in (tmp_path / "images").iterdir() if p.is_dir()]  # nothing published, staging removed
    monkeypatch.undo()
    decoded = decode_cached(shapes_folder, files, 16, None, "crop", workers=1, cache=tmp_path)
    assert len(decoded.images) == len(files)


def _build_in_child(args):
    root, files, cache = args
    decoded = decode_cached(Path(root), files, 16, None, "crop", workers=1, cache=Path(cache))
    return decoded.images.numpy().tobytes()


@pytest.mark.slow
def test_two_runs_starting_at_once_share_one_whole_entry(shapes_folder: Path, tmp_path: Path):
    files = _files(shapes_folder)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_build_in_child, [(str(shapes_folder), files, str(tmp_path))] * 2)
    assert results[0] == results[1]
    entries = list((tmp_path / "images").iterdir())
    assert len([p for p in entries if p.is_dir()]) == 1  # one entry, no staging left behind


def test_writing_to_the_tensor_never_changes_the_entry(shapes_folder: Path, tmp_path: Path):
    files = _files(shapes_folder)
    decoded = decode_cached(shapes_folder, files, 16, None, "crop", workers=1, cache=tmp_path)
    original = decoded.images[0].clone()
    decoded.images[0].fill_(7)
    again = decode_cached(shapes_folder, files, 16, None, "crop", workers=1, cache=tmp_path)
    assert torch.equal(again.images[0], original)


def test_grayscale_folders_store_one_channel(tmp_path: Path):
    root = tmp_path / "gray"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(np.full((20, 30), 40 * index, np.uint8)).save(root / name / f"{index}.png")
    decoded = decode_cached(root, _files(root), 8, None, "crop", workers=1, cache=tmp_path / "cache")
    assert decoded.images.shape == (6, 1, 8, 8) and decoded.all_gray


def test_folder_splits_are_views_of_one_cache_entry(tmp_path: Path):
    root = make_shapes_folder(tmp_path / "shapes", per_class=20)
    splits = load_data(str(root), img_size=16, workers=1)
    storages = {split.images.untyped_storage().data_ptr() for split in (splits.train, splits.val, splits.test)}
    assert len(storages) == 1  # slices of the same memory map: nothing copied
    assert len(splits.train) + len(splits.val) + len(splits.test) == 60
    assert set(splits.train.sources).isdisjoint(splits.val.sources + splits.test.sources)
    again = load_data(str(root), img_size=16, workers=1)
    assert again.train.sources == splits.train.sources and torch.equal(again.val.images, splits.val.images)


def test_cache_location_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path / "here"))
    assert cache_module.cache_root() == tmp_path / "here"
    monkeypatch.delenv("CNNKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_module.cache_root() == Path(os.fspath(tmp_path / "xdg")) / "cnnkit"


def _full_disk(*_args) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _killed(*_args) -> None:
    os._exit(1)  # as SIGBUS or the OOM killer would end a worker


def _left_in(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


def test_a_build_that_would_not_fit_is_refused_before_writing(
    shapes_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    files = _files(shapes_folder)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda _: usage._replace(free=10 << 20))
    with pytest.raises(CnnkitError) as error:
        decode_cached(shapes_folder, files, 1024, None, "crop", workers=1, cache=tmp_path / "cache")
    message = str(error.value)
    needed = f"{len(files) * 1024 * 1024 * 3 / 1e6:.1f} MB"  # N x H x W x C bytes
    assert needed in message and "10.5 MB free" in message and str(tmp_path / "cache" / "images") in message
    assert "--img-size 1024" in message and "$CNNKIT_CACHE_DIR" in message and "\n" not in message
    assert _left_in(tmp_path / "cache") == ["images"]  # no entry, no staging, no lock


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_disk_during_the_build_is_one_line_and_leaves_nothing(
    shapes_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
):
    files = _files(shapes_folder)
    monkeypatch.setattr(cache_module, "CHUNK", 8)  # several chunks, so two workers really run in a pool
    monkeypatch.setattr(cache_module, "_decode_chunk", _full_disk)
    with pytest.raises(CnnkitError, match=r"building the image cache in .* failed: the disk is full \(.* needed"):
        decode_cached(shapes_folder, files, 16, None, "crop", workers=workers, cache=tmp_path / "cache")
    assert _left_in(tmp_path / "cache") == ["images"]


def test_a_killed_decoding_process_is_one_line_and_leaves_nothing(
    shapes_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("the patched worker reaches the pool only through fork")
    files = _files(shapes_folder)
    monkeypatch.setattr(cache_module, "CHUNK", 8)
    monkeypatch.setattr(cache_module, "_decode_chunk", _killed)
    with pytest.raises(CnnkitError, match=r"failed: a decoding process was killed, by a lack of memory or a full disk"):
        decode_cached(shapes_folder, files, 16, None, "crop", workers=2, cache=tmp_path / "cache")
    assert _left_in(tmp_path / "cache") == ["images"]
    monkeypatch.undo()
    assert len(decode_cached(shapes_folder, files, 16, None, "crop", workers=2, cache=tmp_path / "cache").kept) == 36


def test_pillow_warnings_are_kept_per_file_not_printed(
    shapes_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
):
    files = _files(shapes_folder)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # every 40x40 image is "large": Pillow warns for each
    decoded = decode_cached(shapes_folder, files, 16, None, "crop", workers=2, cache=tmp_path)
    assert sorted({row for row, _ in decoded.notes}) == list(range(len(files)))
    assert all("DecompressionBombWarning" in note for _, note in decoded.notes)
    assert "DecompressionBombWarning" not in capfd.readouterr().err  # nothing leaked from the workers
