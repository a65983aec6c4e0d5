"""benchmarks/spoken_digits.py --select: what each comparison run is allowed to read (training is stubbed)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "spoken_digits.py"
SPEAKERS = ("anna", "bob", "clea")


def load_benchmark():
    spec = importlib.util.spec_from_file_location("spoken_digits_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fsdd_names(tmp_path: Path) -> Path:
    """FSDD's file names with empty files: the selection links files by name and decodes none itself."""
    for digit in range(10):
        for speaker in SPEAKERS:
            for index in range(7):
                (tmp_path / "fsdd" / "recordings").mkdir(parents=True, exist_ok=True)
                (tmp_path / "fsdd" / "recordings" / f"{digit}_{speaker}_{index}.wav").touch()
    return tmp_path / "fsdd"


def select_reads(fsdd: Path, monkeypatch, argv: list[str]) -> list[dict]:
    """(files each stubbed training run saw, its split settings) for one ``--select`` command line."""
    module = load_benchmark()
    seen = []

    def train(settings: dict, threads: int, out: Path) -> dict:
        names = sorted(os.listdir(Path(settings["data_dir"]) / "recordings"))
        seen.append(dict(names=names, split_by=settings.get("split_by"), fold=settings.get("fold")))
        return dict(test=50.0 + len(seen), val=40.0, seconds=1.0, epochs=1)

    monkeypatch.setattr(module, "train", train)
    monkeypatch.setattr("sys.argv", ["spoken_digits.py", "--data-dir", str(fsdd), "--select", *argv])
    module.main()
    return seen


def test_select_by_speaker_never_links_the_test_speaker_and_holds_out_each_other(fsdd_names: Path, monkeypatch):
    seen = select_reads(fsdd_names, monkeypatch, ["--split-by", "speaker", "--fold", "1"])
    assert [(run["split_by"], run["fold"]) for run in seen] == [("speaker", 0), ("speaker", 1)]  # anna, clea
    for run in seen:
        assert not any("_bob_" in name for name in run["names"])
        assert len(run["names"]) == 10 * 7 * 2


def test_select_by_index_links_only_training_takes(fsdd_names: Path, monkeypatch):
    seen = select_reads(fsdd_names, monkeypatch, ["--augments", "auto", "none"])
    assert len(seen) == 2 and all(run["split_by"] is None for run in seen)
    assert {int(name.removesuffix(".wav").split("_")[2]) for name in seen[0]["names"]} == {5, 6}
