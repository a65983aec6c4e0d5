"""Near-duplicates by embedding: real photos and their resized, re-encoded and cropped copies, across splits too."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from PIL import Image

from cnnkit.deploy.index.duplicates import NearDuplicate, find_near_duplicates, split_of
from cnnkit.errors import CnnkitError


def real_photos() -> dict[str, Image.Image]:
    """Three unrelated photos that cnnkit's own dependencies ship (scikit-learn's two, matplotlib's portrait)."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    china, flower = (Image.fromarray(array) for array in load_sample_images().images)
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as portrait:
        return {"china": china, "flower": flower, "portrait": portrait.convert("RGB")}


def centre_crop(image: Image.Image, share: float) -> Image.Image:
    width, height = image.size
    left, top = round(width * (1 - share) / 2), round(height * (1 - share) / 2)
    return image.crop((left, top, width - left, height - top))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """train/ holds china and two copies of it (half size as PNG, JPEG quality 60) and flower; test/ holds a
    90% crop of flower (a leak) and the unrelated portrait with a byte-identical copy."""
    photos = real_photos()
    root = tmp_path_factory.mktemp("near") / "photos"
    for folder in ("train/scene", "train/plant", "test/plant", "test/person"):
        (root / folder).mkdir(parents=True)
    china = photos["china"]
    china.save(root / "train/scene/china.jpg", quality=95)
    china.resize((china.width // 2, china.height // 2), Image.Resampling.BILINEAR).save(root / "train/scene/half.png")
    china.save(root / "train/scene/q60.jpg", quality=60)
    photos["flower"].save(root / "train/plant/flower.jpg", quality=95)
    centre_crop(photos["flower"], 0.9).save(root / "test/plant/flower_crop.jpg", quality=90)
    photos["portrait"].save(root / "test/person/portrait.jpg", quality=95)
    (root / "test/person/same.jpg").write_bytes((root / "test/person/portrait.jpg").read_bytes())
    return root


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    files = sorted(path for path in root.rglob("*") if path.is_file())
    return {str(path.relative_to(root)): (path.read_bytes(), path.stat().st_mtime_ns) for path in files}


@pytest.fixture(scope="module")
def photo_report(photo_folder):
    before = snapshot(photo_folder)
    report = find_near_duplicates(photo_folder)
    assert snapshot(photo_folder) == before  # files only read: same names, bytes and times, nothing added
    return report


COPIES = {
    frozenset({"train/scene/china.jpg", "train/scene/half.png"}),
    frozenset({"train/scene/china.jpg", "train/scene/q60.jpg"}),
    frozenset({"train/scene/half.png", "train/scene/q60.jpg"}),
    frozenset({"train/plant/flower.jpg", "test/plant/flower_crop.jpg"}),
    frozenset({"test/person/portrait.jpg", "test/person/same.jpg"}),
}


@pytest.mark.slow
def test_find_near_duplicates_finds_the_copies_and_no_unrelated_pair(photo_report):
    found = {frozenset({pair.first, pair.second}) for pair in photo_report.pairs}
    assert found == COPIES
    assert photo_report.images == 7 and photo_report.model == "efficientnet_lite0"
    scores = [pair.score for pair in photo_report.pairs]
    assert scores == sorted(scores, reverse=True) and min(scores) >= photo_report.threshold
    assert photo_report.note is None


@pytest.mark.slow
def test_find_near_duplicates_reports_a_cross_split_copy_as_a_leak(photo_report):
    [leak] = photo_report.leaks
    assert {leak.first, leak.second} == {"train/plant/flower.jpg", "test/plant/flower_crop.jpg"}
    assert set(leak.splits) == {"train", "test"}
    assert leak.describe().startswith("leak: ")
    assert all(not pair.leak for pair in photo_report.pairs if pair is not leak)


@pytest.mark.slow
def test_check_near_duplicates_cli_lists_pairs_as_json_and_leaves_files_alone(photo_folder):
    before = snapshot(photo_folder)
    result = run_cli("check", str(photo_folder), "--near-duplicates", "--threshold", "0.8", "--json")
    assert result.returncode == 0, result.stderr
    near = json.loads(result.stdout)["near_duplicates"]
    assert {frozenset({pair["first"], pair["second"]}) for pair in near["pairs"]} == COPIES
    assert near["leaks"] == 1 and [pair["leak"] for pair in near["pairs"]].count(True) == 1
    identical = [pair for pair in near["pairs"] if pair["identical"]]  # marked from the scan's hashes
    assert [(pair["first"], pair["second"], pair["score"]) for pair in identical] == [
        ("test/person/portrait.jpg", "test/person/same.jpg", pytest.approx(1.0, abs=1e-4))
    ]
    text = run_cli("check", str(photo_folder), "--near-duplicates")
    assert text.returncode == 0, text.stderr
    assert "5 pair(s) among 7 images, 1 across splits" in text.stdout
    assert "warning: leak: near-duplicate train/plant/flower.jpg ~ test/plant/flower_crop.jpg" in text.stdout
    assert snapshot(photo_folder) == before


@pytest.mark.slow
def test_check_without_near_duplicates_refuses_its_flags_in_one_line(shapes_folder):
    result = run_cli("check", str(shapes_folder), "--threshold", "0.9")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "add --near-duplicates" in result.stderr
    plain = run_cli("check", str(shapes_folder), "--json")
    assert plain.returncode == 0 and "near_duplicates" not in json.loads(plain.stdout)


def test_find_near_duplicates_refuses_a_model_without_weights_and_a_bad_threshold(shapes_folder):
    with pytest.raises(CnnkitError, match="no pretrained weights"):
        find_near_duplicates(shapes_folder, model="mlp")
    with pytest.raises(CnnkitError, match="threshold"):
        find_near_duplicates(shapes_folder, threshold=1.5)


def test_split_of_names_the_split_folder_of_a_path():
    assert [split_of(p) for p in ("train/cat/a.jpg", "valid/a.jpg", "test/b.png", "cat/a.jpg", "a.jpg")] == [
        "train",
        "val",
        "test",
        None,
        None,
    ]
    assert NearDuplicate("train/a.jpg", "val/b.jpg", 0.9, ("train", "val"), False).leak
    assert not NearDuplicate("cat/a.jpg", "dog/b.jpg", 0.9, (None, None), False).leak


def test_find_near_duplicates_embeds_with_a_trained_run(digits_run, tmp_path):
    root = tmp_path / "digits"
    (root / "a").mkdir(parents=True)
    image = Image.new("L", (8, 8))
    image.putdata([(i * 37) % 256 for i in range(64)])
    image.save(root / "a/original.png")
    image.save(root / "a/reencoded.jpg", quality=90)
    Image.new("L", (8, 8), 255).save(root / "a/blank.png")
    report = find_near_duplicates(root, model=digits_run, threshold=0.95)  # measured: copy 0.998, blank 0.41
    assert report.images == 3 and report.model == yaml.safe_load((digits_run / "config.yaml").read_text())["model"]
    assert [(pair.first, pair.second) for pair in report.pairs] == [("a/original.png", "a/reencoded.jpg")]


def test_check_help_states_the_default_threshold():
    from cnnkit.cli.main import build_parser
    from cnnkit.deploy.index.duplicates import DEFAULT_MODEL, DEFAULT_THRESHOLD

    commands = next(action for action in build_parser()._actions if action.dest == "command").choices
    flags = {action.dest: action.help for action in commands["check"]._actions}
    assert f"(default: {DEFAULT_THRESHOLD:g}, measured for {DEFAULT_MODEL})" in flags["threshold"]
    assert f"(default: {DEFAULT_MODEL})" in flags["model"]


def test_near_duplicate_report_notes_a_model_that_cannot_tell_the_images_apart():
    from cnnkit.deploy.index.duplicates import CROWDED_SHARE, NEIGHBOURS, NearDuplicateReport

    crowded = int(CROWDED_SHARE * 200)  # images whose NEIGHBOURS nearest are all over the threshold
    assert NearDuplicateReport("data", "efficientnet_lite0", 0.8, 200, crowded=crowded).note is None
    note = NearDuplicateReport("data", "efficientnet_lite0", 0.8, 200, crowded=crowded + 1).note
    assert f"{crowded + 1} of 200 images have {NEIGHBOURS} or more near-duplicates" in note and "--threshold" in note
    lines = NearDuplicateReport("data", "efficientnet_lite0", 0.8, 200, crowded=crowded + 1).lines()
    assert lines[0].startswith("near-duplicates by efficientnet_lite0 (cosine >= 0.80): 0 pair(s) among 200 images")
    assert lines[-1] == f"note: {note}"
