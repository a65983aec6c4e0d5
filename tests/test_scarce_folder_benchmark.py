"""benchmarks/scarce_folder.py: cnnkit reads its folder back as compare's K-per-class draw and the built-in's splits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from cnnkit.compare.synthetic import per_class_subset
from cnnkit.data import load_data
from cnnkit.errors import CnnkitError

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "scarce_folder.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("scarce_folder_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sorted_pixels(images: torch.Tensor) -> torch.Tensor:
    """The images (N, C, H, W) as a sorted multiset of rows, so two sets compare whatever their order."""
    rows = images.flatten(1).tolist()
    return torch.tensor(sorted(rows))


def test_scarce_folder_reads_back_as_the_draw_and_the_builtin_splits(tmp_path: Path) -> None:
    written = load_benchmark().write_scarce_folder("digits", 2, tmp_path / "out")
    builtin = load_data("digits")
    assert set(written["train"].values()) == {2}
    assert sum(written["val"].values()) == len(builtin.val)
    assert sum(written["test"].values()) == len(builtin.test)
    folder = load_data(str(tmp_path / "out"), img_size=8)
    assert folder.split_rule == "given folders"
    assert (len(folder.train), len(folder.val), len(folder.test)) == (20, len(builtin.val), len(builtin.test))
    drawn = per_class_subset(builtin.train, 2, 0)
    assert torch.equal(sorted_pixels(folder.train.images), sorted_pixels(drawn.images))
    assert torch.equal(sorted_pixels(folder.test.images), sorted_pixels(builtin.test.images))


def test_scarce_folder_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("user data")
    with pytest.raises(CnnkitError, match="not empty"):
        load_benchmark().write_scarce_folder("digits", 2, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "user data"
