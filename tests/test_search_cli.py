"""``cnnkit index`` and ``cnnkit search`` run as the real command: output, JSON lines, contact sheet, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli
from PIL import Image
from test_index import convnet_checkpoint  # noqa: F401 (a fixture)

from cnnkit.deploy.index import build_index

pytestmark = pytest.mark.slow  # each test starts cnnkit in a subprocess


@pytest.fixture
def built_index(convnet_checkpoint, shapes_folder, tmp_path) -> Path:  # noqa: F811
    """Built in this process (the index command has its own test): each search test starts one subprocess."""
    return build_index(convnet_checkpoint, shapes_folder, out=tmp_path / "out").directory


def test_index_cli_reports_retrieval_then_embeds_only_changes(convnet_checkpoint, shapes_folder, tmp_path):  # noqa: F811
    command = ("index", str(convnet_checkpoint), str(shapes_folder), "--out", str(tmp_path / "out"))
    first = run_cli(*command)
    assert first.returncode == 0, first.stderr
    assert "36 added, 0 changed, 0 removed, 0 unchanged" in first.stdout
    assert "Recall@1" in first.stdout and "MAP@R" in first.stdout
    (shapes_folder / "square" / "square_000.jpg").unlink()
    second = run_cli(*command)
    assert second.returncode == 0, second.stderr
    assert "0 added, 0 changed, 1 removed, 35 unchanged" in second.stdout


def test_search_cli_json_lines_rank_the_query_itself_first(built_index, shapes_folder, tmp_path):
    query = shapes_folder / "triangle" / "triangle_007.png"
    sheet = tmp_path / "sheet.png"
    result = run_cli("search", str(built_index), str(query), str(shapes_folder / "circle"), "--k", "4", "--json",
                     "--sheet", str(sheet))  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 13 and records[0]["query"] == str(query)
    neighbours = records[0]["neighbours"]
    assert len(neighbours) == 4 and Path(neighbours[0]["path"]) == query.resolve()
    assert neighbours[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [n["score"] for n in neighbours] == sorted((n["score"] for n in neighbours), reverse=True)
    with Image.open(sheet) as image:
        assert image.width > 4 * 100 and image.height > 12 * 100  # 5 pictures across, 13 query rows


def test_search_cli_prints_neighbours_with_scores(built_index, shapes_folder):
    result = run_cli("search", str(built_index), str(shapes_folder / "circle" / "circle_003.png"), "--k", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("circle_003.png") and len(lines) == 3
    assert lines[1].split()[0] == "1" and lines[1].endswith("circle/circle_003.png")


@pytest.mark.parametrize("case", ["undecodable query", "query folder without images", "other version", "not an index"])
def test_search_cli_bad_input_is_one_line(case, built_index, tmp_path):
    query = tmp_path / "query.jpg"
    query.write_bytes(b"\xff\xd8 truncated")
    target = built_index
    if case == "query folder without images":
        query = tmp_path / "texts"
        query.mkdir()
        (query / "a.txt").write_text("x")
    elif case == "other version":
        meta = json.loads((built_index / "index.json").read_text())
        (built_index / "index.json").write_text(json.dumps({**meta, "cnnkit": "0.0.1"}))
    elif case == "not an index":
        target = tmp_path
    result = run_cli("search", str(target), str(query))
    expected = {
        "undecodable query": "query.jpg",
        "query folder without images": "holds no images",
        "other version": "built by cnnkit 0.0.1",
        "not an index": "not a cnnkit index",
    }[case]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr


def test_search_cli_moved_folder_is_one_line(built_index, shapes_folder, tmp_path):
    shutil.move(shapes_folder, tmp_path / "moved")
    result = run_cli("search", str(built_index), str(tmp_path / "moved" / "circle" / "circle_000.jpg"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "is gone" in result.stderr and "cnnkit index" in result.stderr


def test_index_cli_empty_folder_is_one_line(convnet_checkpoint, tmp_path):  # noqa: F811
    (tmp_path / "empty").mkdir()
    result = run_cli("index", str(convnet_checkpoint), str(tmp_path / "empty"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "no images found" in result.stderr and not (tmp_path / "out").exists()
