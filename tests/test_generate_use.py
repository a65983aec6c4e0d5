"""Using a trained generator: cnnkit generate's files, the generator export, and the service's grid."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from cnnkit.checkpoint import save_checkpoint
from cnnkit.cli.main import main
from cnnkit.data import load_data
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo, ModelSpec, Preprocessing
from cnnkit.models import create_model
from cnnkit.tasks.generate.sampling import BLOCK, class_noise, generate_images, load_generator, sample_class

CLASSES = ["circle", "square", "T-shirt/top"]  # the last as Fashion-MNIST names it: no folder name holds a slash
FOLDERS = ["circle", "square", "T-shirt_top"]
SIZE = 8


def png_files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.png"))}


def save_run(folder: Path, name: str, model: torch.nn.Module, kwargs: dict, extra: dict) -> Path:
    spec = ModelSpec(name, len(CLASSES), 1, SIZE, kwargs)
    folder.mkdir(parents=True)
    info = CheckpointInfo(spec, CLASSES, Preprocessing(SIZE, 1, (0.5,), (0.5,)), extra)
    save_checkpoint(folder / "best.safetensors", model, info)
    return folder


@pytest.fixture(scope="module")
def generator_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 8 px grayscale dcgan saved as a run directory: every file and shape, none of the training."""
    torch.manual_seed(0)
    kwargs = {"latent_dim": 16, "width": 8}
    model = create_model("dcgan", len(CLASSES), 1, SIZE, **kwargs)
    return save_run(tmp_path_factory.mktemp("runs") / "gan", "dcgan", model, kwargs, {"task": "generate"})


@pytest.fixture(scope="module")
def generated(generator_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``generate_images`` of 20 images per class (a block of 16 and a cut one) with seed 3."""
    out = tmp_path_factory.mktemp("generated") / "synthetic"
    assert generate_images(generator_run, 20, out, seed=3, device="cpu") == {name: 20 for name in CLASSES}
    return out


@pytest.mark.slow
def test_generate_images_same_seed_same_bytes_whatever_num_or_class(generator_run, generated, tmp_path):
    files = png_files(generated)
    assert len(files) == 60 and sorted(files) == list(files)  # names sort in generation order
    assert list(files)[:2] == ["T-shirt_top/s3_00000.png", "T-shirt_top/s3_00001.png"]
    generate_images(generator_run, 20, tmp_path / "again", seed=3, device="cpu")
    assert png_files(tmp_path / "again") == files
    # fewer images of one class, across the block boundary: the first files of that class's folder
    generate_images(generator_run, BLOCK + 1, tmp_path / "one", class_name="square", seed=3, device="cpu")
    first = {name: data for name, data in files.items() if name.startswith("square/")}
    assert png_files(tmp_path / "one") == dict(list(first.items())[: BLOCK + 1])
    generate_images(generator_run, 20, tmp_path / "other", class_name="square", seed=4, device="cpu")
    other = png_files(tmp_path / "other")
    assert sorted(other) == [name.replace("s3_", "s4_") for name in first]
    assert not any(data == other[name.replace("s3_", "s4_")] for name, data in first.items())  # other noise


def test_sample_class_is_the_same_in_any_block_company(generator_run):
    model, _ = load_generator(generator_run)
    images = sample_class(model, 1, 2 * BLOCK, seed=3)  # (32, 1, 8, 8)
    assert images.dtype == torch.uint8 and images.shape == (2 * BLOCK, 1, SIZE, SIZE)
    assert torch.equal(sample_class(model, 1, 5, seed=3), images[:5])
    assert len(torch.unique(images.flatten(1), dim=0)) == 2 * BLOCK  # every image its own noise
    assert class_noise(model.latent_dim, 1, 5, 3).shape == (5, model.latent_dim)


def test_generate_images_layout_reads_as_an_image_folder(generator_run, generated):
    splits = load_data(str(generated), img_size=SIZE, val_split=0.0, test_split=0.0)
    assert splits.train.classes == sorted(FOLDERS)
    assert splits.train.images.shape == (60, 1, SIZE, SIZE)  # grayscale PNGs read back as one channel
    model, _ = load_generator(generator_run)
    square = splits.train.images[splits.train.labels == splits.train.classes.index("square")]
    assert torch.equal(square, sample_class(model, CLASSES.index("square"), 20, seed=3))  # PNG is lossless


def test_generate_images_refuses_bad_input_in_one_line_and_writes_nothing(generator_run, tmp_path):
    convnet = save_run(tmp_path / "classifier", "convnet", create_model("convnet", 3, 1, SIZE), {}, {})
    user = tmp_path / "mine"
    user.mkdir()
    (user / "keep.txt").write_text("user data")
    (user / "model.onnx").write_bytes(b"not read")
    cases = [
        (dict(num=0), "--num must be an integer >= 1 (got 0)"),
        (dict(num=-3), "--num must be an integer >= 1"),
        (dict(seed=-1), "--seed must be an integer in [0, 4294967295]"),
        (dict(class_name="sqare"), "'sqare' is not a class of this run (did you mean 'square'?); it generates circle"),
        (dict(run=convnet), "is not a generator; give a run of `cnnkit train --task generate`"),
        (dict(run=tmp_path / "mine" / "model.onnx"), "is an ONNX export; give the run it was exported from"),
        (dict(out=user), "already holds files"),
        (dict(out=user / "keep.txt"), "is a file"),
    ]
    for given, expected in cases:
        arguments = {"run": generator_run, "num": 2, "out": tmp_path / "new", **given}
        with pytest.raises(CnnkitError, match=r"^[^\n]+$") as error:
            generate_images(**arguments, device="cpu")
        assert expected in str(error.value)
    assert not (tmp_path / "new").exists() and (user / "keep.txt").read_text() == "user data"


def test_generate_images_that_fail_midway_leave_no_folder(generator_run, tmp_path, monkeypatch):
    import errno

    from cnnkit.tasks.generate import sampling

    encode, calls = sampling.encode_png, []

    def fill_the_disk(image: np.ndarray) -> bytes:
        calls.append(1)
        if len(calls) > 25:  # the second class, halfway
            raise OSError(errno.ENOSPC, "No space left on device")
        return encode(image)

    monkeypatch.setattr(sampling, "encode_png", fill_the_disk)
    with pytest.raises(CnnkitError, match=r"No space left on device; nothing was written$"):
        generate_images(generator_run, 20, tmp_path / "synthetic", device="cpu")
    assert not any(tmp_path.iterdir())  # neither the folder nor its staging copy
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()  # an empty folder is filled
    assert generate_images(generator_run, 1, tmp_path / "empty", class_name="circle", device="cpu") == {"circle": 1}
    assert [path.name for path in tmp_path.iterdir()] == ["empty"] and len(png_files(tmp_path / "empty")) == 1


@pytest.mark.slow
def test_generate_cli_prints_a_line_per_class_and_the_total(generator_run, generated, tmp_path):
    result = run_cli("generate", str(generator_run), "--num", "20", "--seed", "3", "--out", str(tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2] == f"T-shirt/top: 20 images in {tmp_path / 'cli' / 'T-shirt_top'}"
    assert lines[-1] == f"wrote 60 images (3 classes, seed 3) to {tmp_path / 'cli'}"
    assert png_files(tmp_path / "cli") == png_files(generated)


def cli_error(argv: list[str], capsys) -> tuple[int, str]:
    """The exit code and stderr of ``cnnkit ARGV`` run in this process (a flag's range check exits while parsing)."""
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def test_generate_and_export_cli_bad_input_is_one_line_exit_2(generator_run, tmp_path, capsys):
    run = str(generator_run)
    for argv, expected in (
        (["generate", run, "--num", "0", "--out", str(tmp_path / "a")], "--num must be an integer >= 1 (got 0)"),
        (["generate", run, "--num", "2", "--class", "dog", "--out", str(tmp_path / "b")], "'dog' is not a class"),
        (["export", run, "--int8", "--out", str(tmp_path / "c")], "--int8 quantizes classifiers; "),
    ):
        code, error = cli_error(argv, capsys)
        assert code == 2 and error.startswith("cnnkit: error: ") and error.count("\n") == 1, error
        assert expected in error, error
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def generator_export(generator_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """``export_generator`` of the run: the .onnx file and the report."""
    pytest.importorskip("onnxruntime", reason="the deploy extra (pip install -e '.[test]') provides onnxruntime")
    from cnnkit.deploy.generator_export import export_generator

    path = tmp_path_factory.mktemp("exports") / "generator.onnx"
    return path, export_generator(generator_run, path, verbose=False)


@pytest.mark.slow
def test_export_generator_matches_pytorch_and_describes_itself(generator_run, generator_export, generated):
    from cnnkit.deploy.generator_export import ATOL, IMAGES, LABELS, NOISE
    from cnnkit.deploy.onnx_runtime import create_session
    from cnnkit.models.gan import to_uint8

    path, report = generator_export
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= ATOL
    assert json.loads(path.with_name("generator.export.json").read_text()) == report
    session = create_session(path)
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["classes"]) == CLASSES and json.loads(props["latent_dim"]) == 16
    assert json.loads(props["task"]) == "generate"
    assert [(i.name, i.type) for i in session.get_inputs()] == [(NOISE, "tensor(float)"), (LABELS, "tensor(int64)")]
    # a batch the parity check never ran (5), with cnnkit generate's noise: its files, within one rounding level
    label = CLASSES.index("square")
    noise = class_noise(16, label, 5, 3).numpy()
    [images] = session.run([IMAGES], {NOISE: noise, LABELS: np.full(5, label, np.int64)})
    assert images.shape == (5, 1, SIZE, SIZE) and np.abs(images).max() <= 1.0
    files = [np.asarray(Image.open(generated / "square" / f"s3_{index:05d}.png")) for index in range(5)]
    pixels = to_uint8(torch.from_numpy(images))[:, 0].numpy().astype(int)
    assert np.abs(pixels - np.stack(files)).max() <= 1


def test_classifier_commands_refuse_a_generator_and_its_export_in_one_line(
    generator_run, generator_export, generated, tmp_path, capsys
):
    path, run, image = str(generator_export[0]), str(generator_run), str(generated / "circle" / "s3_00000.png")
    for argv in (["predict", run, image], ["predict", path, image], ["evaluate", run], ["explain", run, image]):
        code, error = cli_error([*argv, "--out", str(tmp_path / "out")] if argv[0] == "explain" else argv, capsys)
        assert code == 2 and error.count("\n") == 1 and "dcgan is a generator: it makes images" in error, error
    code, error = cli_error(["index", run, str(generated), "--out", str(tmp_path / "index")], capsys)
    assert code == 2 and error.count("\n") == 1 and "is a generator (dcgan): index and search embed" in error, error
    assert not any(tmp_path.iterdir())


def test_export_refuses_a_generator_that_disagrees_and_removes_the_file(generator_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the deploy extra (pip install -e '.[test]') provides onnxruntime")
    from cnnkit.deploy import generator_export

    monkeypatch.setattr(generator_export, "write_generator_onnx", lambda model, info, path: path.write_bytes(b"x"))
    monkeypatch.setattr(
        generator_export, "check_generator_parity", lambda *_: generator_export.GeneratorParity(64, 0.5)
    )
    with pytest.raises(CnnkitError, match=r"ONNX Runtime disagrees with PyTorch.*was removed"):
        generator_export.export_generator(generator_run, tmp_path / "bad.onnx", verbose=False)
    assert not (tmp_path / "bad.onnx").exists()


@pytest.fixture(scope="module")
def generation_app(generator_run: Path):
    pytest.importorskip("fastapi", reason="the deploy extra (pip install -e '.[test]') provides fastapi")
    pytest.importorskip("httpx", reason="the test extra provides httpx")
    from cnnkit.deploy.serve.generate import create_generation_app

    return create_generation_app(*load_generator(generator_run))


def client_of(app):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette 1.x suggests httpx2 (its own warning class)
        from fastapi.testclient import TestClient
    return TestClient(app)


def test_serve_generate_draws_the_images_cnnkit_generate_writes(generation_app, generated):
    from cnnkit.deploy.serve.generate import GAP

    client = client_of(generation_app)
    answer = client.get("/generate", params={"class": "square", "count": 5, "seed": 3})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.headers["x-seed"] == "3"
    grid = np.asarray(Image.open(io.BytesIO(answer.content)))  # 3 columns, 2 rows of 64 px tiles (8 px x 8)
    tile = SIZE * 8
    assert grid.shape == (GAP + 2 * (tile + GAP), GAP + 3 * (tile + GAP))
    for index in range(5):
        row, column = divmod(index, 3)
        top, left = GAP + row * (tile + GAP), GAP + column * (tile + GAP)
        expected = np.asarray(Image.open(generated / "square" / f"s3_{index:05d}.png"))
        assert np.array_equal(grid[top : top + tile : 8, left : left + tile : 8], expected)
    fresh = [client.get("/generate", params={"class": "circle"}) for _ in range(2)]
    assert [answer.status_code for answer in fresh] == [200, 200]
    assert fresh[0].headers["x-seed"] != fresh[1].headers["x-seed"]  # a new seed each time, and it says which


def test_serve_generate_refuses_bad_requests_and_keeps_serving(generation_app):
    client = client_of(generation_app)
    unknown = client.get("/generate", params={"class": "dog"})
    assert unknown.status_code == 400 and "it generates circle, square, T-shirt/top" in unknown.json()["detail"]
    for params in ({"class": "square", "count": 0}, {"class": "square", "count": 65}, {"class": "square", "seed": -1}):
        assert client.get("/generate", params=params).status_code == 422
    assert client.get("/generate").status_code == 422  # no class
    health = client.get("/health").json()
    assert health["task"] == "generate" and health["classes"] == CLASSES and health["latent_dim"] == 16
    page = client.get("/").text
    assert '<option value="T-shirt/top">T-shirt/top</option>' in page and 'fetch("generate?"' in page
    assert "src=" not in page.replace('id="grid"', "") and "http" not in page  # loads nothing from elsewhere
    reference = client.get("/docs").text
    assert "GET /generate" in reference and "generate?class=NAME" in reference and "/predict" not in reference
    assert client.get("/generate", params={"class": "T-shirt/top", "count": 1}).status_code == 200


def test_serve_runs_a_generator_run_behind_its_token(generator_run, monkeypatch):
    pytest.importorskip("fastapi", reason="the deploy extra (pip install -e '.[test]') provides fastapi")
    pytest.importorskip("httpx", reason="the test extra provides httpx")
    import uvicorn

    from cnnkit.deploy.serve import serve

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: apps.append(app))
    serve(generator_run, token="secret")
    client = client_of(apps[0])
    assert client.get("/generate", params={"class": "square"}).status_code == 401
    answer = client.get("/generate", params={"class": "square"}, headers={"Authorization": "Bearer secret"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
