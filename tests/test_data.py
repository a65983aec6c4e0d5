import dataclasses
import gzip
import shutil
import struct

import numpy as np
import pytest
import torch
from conftest import make_shapes_folder
from PIL import Image

from cnnkit.data import builtin, load_data
from cnnkit.data.imageset import stratified_split
from cnnkit.errors import CnnkitError


def test_folder_split_is_deterministic_and_stratified(shapes_folder):
    first = load_data(str(shapes_folder), img_size=16, val_split=0.25, test_split=0.25)
    second = load_data(str(shapes_folder), img_size=16, val_split=0.25, test_split=0.25)
    for name in ("train", "val", "test"):
        assert getattr(first, name).sources == getattr(second, name).sources
        assert torch.equal(getattr(first, name).images, getattr(second, name).images)
    assert torch.bincount(first.test.labels).tolist() == [3, 3, 3]
    assert not set(first.train.sources) & set(first.test.sources)
    assert first.classes == ["circle", "square", "triangle"]


def test_adding_an_image_moves_no_other_image_between_splits():
    sources = [f"c/{i}.png" for i in range(40)]
    before = stratified_split(torch.zeros(40, dtype=torch.long), sources, [0.2])
    after = stratified_split(torch.zeros(41, dtype=torch.long), [*sources, "c/new.png"], [0.2])
    moved = {sources[i] for i in before[0]} ^ {([*sources, "c/new.png"])[i] for i in after[0]}
    assert len(moved) <= 2  # at most the new file and the one it displaced at the boundary


def test_split_folders_are_honoured(tmp_path):
    make_shapes_folder(tmp_path / "data" / "train", per_class=6)
    make_shapes_folder(tmp_path / "data" / "test", per_class=2, seed=1)
    splits = load_data(str(tmp_path / "data"), img_size=16, val_split=0.0)
    assert len(splits.test) == 6 and len(splits.train) == 18 and len(splits.val) == 0
    assert all(source.startswith("test/") for source in splits.test.sources)


def test_grayscale_folders_get_one_channel(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("L", (10, 10), 40 * i).save(tmp_path / name / f"{i}.png")
    assert load_data(str(tmp_path), img_size=8).train.images.shape[1] == 1


def test_bad_images_are_skipped_and_reported(shapes_folder):
    (shapes_folder / "circle" / "broken.jpg").write_bytes(b"not a jpeg")
    (shapes_folder / "square" / "notes.txt").write_text("ignored")
    (shapes_folder / "square" / ".DS_Store").write_bytes(b"\0")
    (shapes_folder / "empty_class").mkdir()
    splits = load_data(str(shapes_folder), img_size=16)
    assert [item.path for item in splits.skipped] == ["circle/broken.jpg"]
    assert sum(map(len, (splits.train, splits.val, splits.test))) == 36
    assert splits.classes == ["circle", "square", "triangle"]
    for label, source in zip(splits.train.labels.tolist(), splits.train.sources):
        assert source.startswith(splits.classes[label] + "/")  # labels skip the empty class folder
    assert any("empty_class" in warning for warning in splits.warnings)
    assert any("1 file(s) without an image extension" in warning for warning in splits.warnings)
    assert (shapes_folder / "circle" / "broken.jpg").read_bytes() == b"not a jpeg"  # user data untouched


@pytest.mark.parametrize(
    ("layout", "message"), [("missing", "data not found"), ("empty", "no images found"), ("single", "only one class")]
)
def test_folder_mistakes_raise_clear_errors(tmp_path, layout, message):
    if layout == "empty":
        (tmp_path / "missing").mkdir()
    if layout == "single":
        (tmp_path / "missing" / "cats").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "missing" / "cats" / "a.png")
    with pytest.raises(CnnkitError, match=message):
        load_data(str(tmp_path / "missing"))


def test_digits_builtin_has_real_images_and_fixed_split():
    splits = load_data("digits")
    assert splits.train.images.shape[1:] == (1, 8, 8) and splits.train.images.dtype == torch.uint8
    assert sum(map(len, (splits.train, splits.val, splits.test))) == 1797
    assert len(splits.test) == 359 and splits.test.sources == load_data("digits").test.sources
    assert load_data("digits", img_size=16, channels=3).train.images.shape[1:] == (3, 16, 16)


def test_digits_reader_reads_the_shipped_file_as_scikit_learns_loader(monkeypatch):
    from sklearn.datasets import load_digits

    images, labels = builtin.read_digits(None)["all"]
    reference = load_digits()
    assert np.array_equal(images[:, 0], np.round(reference.images * (255.0 / 16.0)).astype(np.uint8))
    assert np.array_equal(labels, reference.target)
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)  # a layout the reader does not know
    fallback_images, fallback_labels = builtin.read_digits(None)["all"]
    assert np.array_equal(fallback_images, images) and np.array_equal(fallback_labels, labels)


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def make_idx_dataset(folder, train=40, test=20):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for (images_name, labels_name), count in zip(builtin.IDX_FILES.values(), (train, test)):
        write_idx(folder / images_name, rng.integers(0, 256, (count, 28, 28)))
        write_idx(folder / labels_name, np.arange(count) % 10)
    return folder


def test_idx_dataset_is_read_from_data_dir(tmp_path):
    folder = make_idx_dataset(tmp_path / "fm")
    splits = load_data("fashion-mnist", data_dir=str(folder), val_split=0.25)
    assert len(splits.test) == 20 and len(splits.train) + len(splits.val) == 40
    assert splits.classes[0] == "T-shirt/top" and splits.train.images.shape[1:] == (1, 28, 28)


def test_builtin_found_through_environment_variable(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "datasets" / "mnist")
    monkeypatch.setenv("CNNKIT_DATA_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path / "cache" / "cnnkit"))
    assert len(load_data("mnist").test) == 20


def use_mirrors(monkeypatch, name: str, mirrors: tuple[str, ...]) -> builtin.BuiltinDataset:
    """Point a built-in dataset's downloads at ``mirrors`` (local file URLs: tests never use the network)."""
    dataset = builtin.BUILTINS[name]
    monkeypatch.setitem(builtin.BUILTINS, name, dataclasses.replace(dataset, mirrors=mirrors))
    return dataset


def test_download_fetches_into_cache_from_mirror(tmp_path, monkeypatch):
    source = make_idx_dataset(tmp_path / "server")
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path / "cache" / "cnnkit"))
    monkeypatch.delenv("CNNKIT_DATA_DIR", raising=False)
    dataset = use_mirrors(monkeypatch, "mnist", ("file:///nonexistent/", source.as_uri() + "/"))
    splits = load_data("mnist")
    assert len(splits.train) + len(splits.val) == 40
    assert sorted(p.name for p in (tmp_path / "cache" / "cnnkit" / "datasets" / "mnist").iterdir()) == sorted(
        dataset.files
    )


def test_offline_download_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path / "cache" / "cnnkit"))
    monkeypatch.delenv("CNNKIT_DATA_DIR", raising=False)
    use_mirrors(monkeypatch, "cifar10", ("file:///nonexistent/",))
    with pytest.raises(CnnkitError, match=r"could not be downloaded.*--data-dir"):
        load_data("cifar10")
    assert not any((tmp_path / "cache" / "cnnkit" / "datasets" / "cifar10").glob("*"))  # no partial file left


def test_cifar10_binary_archive_is_read_without_unpickling(tmp_path):
    import tarfile

    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar"
    (folder / "cifar-10-batches-bin").mkdir(parents=True)
    for name, count in [(f"data_batch_{i}.bin", 4) for i in range(1, 6)] + [("test_batch.bin", 6)]:
        rows = np.concatenate([np.arange(count)[:, None] % 10, rng.integers(0, 256, (count, 3072))], axis=1)
        (folder / "cifar-10-batches-bin" / name).write_bytes(rows.astype(np.uint8).tobytes())
    with tarfile.open(folder / builtin.CIFAR10_ARCHIVE, "w:gz") as archive:
        archive.add(folder / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    shutil.rmtree(folder / "cifar-10-batches-bin")
    splits = load_data("cifar10", data_dir=str(folder), val_split=0.0)
    assert len(splits.train) == 20 and len(splits.test) == 6 and splits.train.images.shape[1:] == (3, 32, 32)
    assert splits.classes[1] == "automobile"


@pytest.mark.slow
@pytest.mark.skipif(
    not (builtin.Path("/usr/share/datasets/fashion-mnist")).is_dir(),
    reason="Debian's dataset-fashion-mnist package is not installed",
)
def test_fashion_mnist_from_debian_package():
    splits = load_data("fashion-mnist")
    assert len(splits.test) == 10_000 and len(splits.train) + len(splits.val) == 60_000


def test_shards_split_one_shuffled_epoch_into_disjoint_parts():
    from cnnkit.data.imageset import ImageSet
    from cnnkit.data.loader import iterate_batches

    count = 103
    images = ImageSet(torch.zeros(count, 1, 2, 2, dtype=torch.uint8), torch.arange(count), ["a"], [""] * count)

    def epoch(shard: tuple[int, int]) -> torch.Tensor:
        batches = iterate_batches(images, 8, True, torch.Generator().manual_seed(5), shard=shard)
        return torch.cat([labels for _, labels in batches])

    whole = epoch((0, 1))
    shards = [epoch((rank, 3)) for rank in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(count))  # disjoint, and together the whole epoch
    assert torch.equal(shards[1], whole[1::3])
    assert [len(shard) for shard in shards] == [35, 34, 34]


def fake_run_dir(folder) -> None:
    """What ``cnnkit train`` leaves in a run directory: its config, metrics and the report's PNG figures."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("model: convnet\nepochs: 1\n")
    (folder / "metrics.csv").write_text("epoch,loss\n1,0.5\n")
    for name in ("confusion.png", "curves.png", "gallery.png"):
        Image.new("RGB", (32, 32), (200, 0, 0)).save(folder / name)


def test_folder_leaves_out_cnnkit_output_and_says_so_once(shapes_folder, monkeypatch):
    fake_run_dir(shapes_folder / "runs" / "train")
    fake_run_dir(shapes_folder / "runs" / "train2")
    fake_run_dir(shapes_folder / "circle" / "old-run")  # a run written inside a class folder
    (shapes_folder / "exports" / "digits").mkdir(parents=True)
    (shapes_folder / "exports" / "digits" / "export.json").write_text("{}")
    Image.new("RGB", (8, 8)).save(shapes_folder / "exports" / "digits" / "preview.png")
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(shapes_folder / "cache"))
    load_data(str(shapes_folder), img_size=16)  # fills the cache inside the dataset
    splits = load_data(str(shapes_folder), img_size=16)
    assert splits.classes == ["circle", "square", "triangle"]
    sources = splits.train.sources + splits.val.sources + splits.test.sources
    assert len(sources) == 36 and not [s for s in sources if "run" in s or s.endswith("preview.png")]
    ignored = [w for w in splits.warnings if w.startswith("ignored ")]
    assert sorted(ignored) == [
        "ignored cache/: cnnkit output",
        "ignored circle/old-run/: cnnkit output",
        "ignored exports/: cnnkit output",
        "ignored runs/: cnnkit output",
    ]


@pytest.mark.slow
def test_training_twice_inside_the_dataset_keeps_its_classes(shapes_folder, monkeypatch, capsys, one_thread):
    import cnnkit

    monkeypatch.chdir(shapes_folder)
    first = cnnkit.train(data=".", img_size=16, epochs=1, verbose=False)
    second = cnnkit.train(data=".", img_size=16, epochs=1)
    assert capsys.readouterr().out.count("ignored runs/: cnnkit output") == 1  # said once, by data and scan alike
    assert (shapes_folder / first.dir).parent == shapes_folder / "runs" and any(first.dir.glob("*.png"))
    assert second.classes == first.classes == ["circle", "square", "triangle"]
    assert second.dir.name == "train2"


def test_folder_of_loose_images_says_what_it_found_and_the_layout_expected(tmp_path):
    (tmp_path / "photos").mkdir()
    for index in range(300):
        (tmp_path / "photos" / f"{index}.jpg").write_bytes(b"")
    with pytest.raises(CnnkitError) as error:
        load_data(str(tmp_path / "photos"))
    message = str(error.value)
    assert "300 image(s) lie directly in it" in message and "it has no subfolders" in message
    assert "one subfolder per class" in message and "\n" not in message


def test_absurd_image_sizes_are_refused_with_the_range(shapes_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path / "cache"))
    for size in (100_000, 0, -3):
        with pytest.raises(CnnkitError, match=r"--img-size .* out of range; use 1 to 4096"):
            load_data(str(shapes_folder), img_size=size)
    with pytest.raises(CnnkitError, match="out of range"):
        load_data("digits", img_size=100_000)
    assert not (tmp_path / "cache").exists()  # refused before anything was written


def test_pillow_warnings_while_reading_a_folder_are_one_summary_line(shapes_folder, monkeypatch, recwarn):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow warns about each 40x40 image
    splits = load_data(str(shapes_folder), img_size=16, workers=1)
    (line,) = [w for w in splits.warnings if "Pillow" in w]
    assert line.startswith("Pillow warned 36 time(s) while decoding") and "DecompressionBombWarning" in line
    assert not [w for w in recwarn.list if "decompression" in str(w.message)]  # none printed by Pillow


def test_builtin_sizes_beyond_memory_are_refused_before_resizing(monkeypatch):
    monkeypatch.setattr(builtin, "_physical_memory", lambda: 1 << 30)
    monkeypatch.setattr(builtin, "_resize_all", lambda *_: pytest.fail("resized before the check"))
    with pytest.raises(CnnkitError, match=r"digits at --img-size 1024 needs 3\.8 GB of memory .* 1\.1 GB; lower"):
        load_data("digits", img_size=1024)  # 1797 x 1024 x 1024 bytes, twice (resized, then stacked)
