"""Tidy runs from the command line: predict writes one CSV where asked, a failed explain leaves no folder."""

import csv

import numpy as np
import pytest
from PIL import Image

from cnnkit.cli.main import main


@pytest.fixture
def digit_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.slow
def test_predict_folder_replaces_one_csv_instead_of_adding_run_folders(digits_run, digit_folder, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["predict", str(digits_run), str(digit_folder)]) == 0
    assert main(["predict", str(digits_run), str(digit_folder), "--top-k", "2"]) == 0
    assert files_under(work) == ["runs", "runs/predictions.csv"]
    with open(work / "runs" / "predictions.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 3 and "label_2" in rows[0] and "label_3" not in rows[0]  # the second run's, whole

    assert main(["predict", str(digits_run), str(digit_folder), "--out", "results/digits.csv"]) == 0
    assert (work / "results" / "digits.csv").is_file()


def test_predict_json_writes_nothing_unless_out_is_given(digits_run, digit_folder, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["predict", str(digits_run), str(digit_folder), "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3 and files_under(work) == []
    assert main(["predict", str(digits_run), str(digit_folder), "--json", "--out", "out"]) == 0
    assert files_under(work) == ["out", "out/predictions.csv"]


@pytest.mark.parametrize("bad", [["--class", "no-such-class"], ["--layer", "no.such.layer"]])
def test_explain_failure_leaves_no_half_written_folder(digits_run, digit_folder, tmp_path, capsys, bad):
    out = tmp_path / "runs"
    out.mkdir()
    code = main(["explain", str(digits_run), str(digit_folder / "0.png"), "--out", str(out), *bad])
    assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert files_under(out) == []
