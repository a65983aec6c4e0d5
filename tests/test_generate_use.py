"""Using a trained generator: cnnkit generate's files, the generator export, and the service's grid.

The run is conftest's ``generate_run`` (a digits folder: ten classes ``0``-``9``, 8x8 grayscale, barely trained).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.checkpoint import save_checkpoint
from cnnkit.cli.main import main
from cnnkit.data import load_data
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo, ModelSpec, Preprocessing
from cnnkit.models import create_model
from cnnkit.tasks.generate.sampling import (
    BLOCK,
    class_folder,
    class_noise,
    generate_images,
    load_generator,
    sample_class,
)

# Every test on the trained run is slow: make check's budget cannot hold the GAN training behind it.
CLASSES = [str(digit) for digit in range(10)]
SIZE = 8
NUM = BLOCK + 1  # images per class in the shared generation: a whole block and one cut


def png_files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def generator_run(generate_run: Path):
    """conftest's trained run, generated from on one thread (its ``one_thread``, for module fixtures): on a loaded
    2-core machine two threads spin, and 170 images took 7.4 s against 0.25 s. Set after the run is trained."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield generate_run
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def generator(generator_run: Path):
    """The run's generator and description, loaded once."""
    return load_generator(generator_run)


@pytest.fixture(scope="module")
def generated(generator_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``generate_images`` of NUM images per class with seed 3."""
    out = tmp_path_factory.mktemp("generated") / "synthetic"
    assert generate_images(generator_run, NUM, out, seed=3, device="cpu") == {name: NUM for name in CLASSES}
    return out


def test_class_folder_keeps_names_a_folder_can_hold():
    assert class_folder("7") == "7" and class_folder("T-shirt/top") == "T-shirt_top"  # Fashion-MNIST's name
    assert class_folder("a\\b") == "a_b" and class_folder(".git") == "_.git" and class_folder("..") == "_.."


@pytest.mark.slow
def test_generate_images_same_seed_same_bytes_whatever_num_or_class(generator_run, generated, tmp_path):
    files = png_files(generated)
    assert len(files) == 10 * NUM and sorted(files) == list(files)  # names sort in generation order
    assert list(files)[:2] == ["0/s3_00000.png", "0/s3_00001.png"]
    generate_images(generator_run, NUM, tmp_path / "again", seed=3, device="cpu")
    assert png_files(tmp_path / "again") == files
    # fewer images of one class: the first files of that class's folder
    generate_images(generator_run, 3, tmp_path / "one", class_name="7", seed=3, device="cpu")
    first = {name: data for name, data in files.items() if name.startswith("7/")}
    assert png_files(tmp_path / "one") == dict(list(first.items())[:3])
    generate_images(generator_run, NUM, tmp_path / "other", class_name="7", seed=4, device="cpu")
    other = png_files(tmp_path / "other")
    assert sorted(other) == [name.replace("s3_", "s4_") for name in first]
    assert not any(data == other[name.replace("s3_", "s4_")] for name, data in first.items())  # other noise


@pytest.mark.slow
def test_sample_class_is_the_same_in_any_block_company(generator):
    model, _ = generator
    images = sample_class(model, 1, 2 * BLOCK, seed=3)  # (32, 1, 8, 8)
    assert images.dtype == torch.uint8 and images.shape == (2 * BLOCK, 1, SIZE, SIZE)
    assert torch.equal(sample_class(model, 1, 5, seed=3), images[:5])
    assert len(torch.unique(images.flatten(1), dim=0)) == 2 * BLOCK  # every image its own noise
    assert class_noise(model.latent_dim, 1, 5, 3).shape == (5, model.latent_dim)


@pytest.mark.slow
def test_generate_images_layout_reads_as_an_image_folder(generator, generated):
    splits = load_data(str(generated), img_size=SIZE, val_split=0.0, test_split=0.0)
    assert splits.train.classes == CLASSES
    assert splits.train.images.shape == (10 * NUM, 1, SIZE, SIZE)  # grayscale PNGs read back as one channel
    seven = splits.train.images[splits.train.labels == CLASSES.index("7")]
    assert torch.equal(seven, sample_class(generator[0], CLASSES.index("7"), NUM, seed=3))  # PNG is lossless


def test_generate_images_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path):
    convnet = tmp_path / "classifier"
    convnet.mkdir()
    spec, prep = ModelSpec("convnet", 10, 1, SIZE), Preprocessing(SIZE, 1, (0.5,), (0.5,))
    save_checkpoint(
        convnet / "best.safetensors", create_model("convnet", 10, 1, SIZE), CheckpointInfo(spec, CLASSES, prep, {})
    )
    user = tmp_path / "mine"
    user.mkdir()
    (user / "keep.txt").write_text("user data")
    (user / "model.onnx").write_bytes(b"not read")
    cases = [
        (dict(num=0), "--num must be an integer >= 1 (got 0)"),
        (dict(num=-3), "--num must be an integer >= 1"),
        (dict(seed=-1), "--seed must be an integer in [0, 4294967295]"),
        (dict(run=convnet), "is not a generator; give a run of `cnnkit train --task generate`"),
        (dict(run=tmp_path / "mine" / "model.onnx"), "is an ONNX export; give the run it was exported from"),
        (dict(out=user), "already holds files"),
        (dict(out=user / "keep.txt"), "is a file"),
    ]
    for given, expected in cases:
        arguments = {"run": convnet, "num": 2, "out": tmp_path / "new", **given}  # refused before the run is read
        with pytest.raises(CnnkitError, match=r"^[^\n]+$") as error:
            generate_images(**arguments, device="cpu")
        assert expected in str(error.value)
    assert not (tmp_path / "new").exists() and (user / "keep.txt").read_text() == "user data"


@pytest.mark.slow
def test_generate_images_that_fail_midway_leave_no_folder(generator_run, tmp_path, monkeypatch):
    import errno

    from cnnkit.tasks.generate import sampling

    encode, calls = sampling.encode_png, []

    def fill_the_disk(image: np.ndarray) -> bytes:
        calls.append(1)
        if len(calls) > NUM + 5:  # in the second class
            raise OSError(errno.ENOSPC, "No space left on device")
        return encode(image)

    monkeypatch.setattr(sampling, "encode_png", fill_the_disk)
    with pytest.raises(CnnkitError, match=r"No space left on device; nothing was written$"):
        generate_images(generator_run, NUM, tmp_path / "synthetic", device="cpu")
    assert not any(tmp_path.iterdir())  # neither the folder nor its staging copy
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()  # an empty folder is filled
    assert generate_images(generator_run, 1, tmp_path / "empty", class_name="7", device="cpu") == {"7": 1}
    assert [path.name for path in tmp_path.iterdir()] == ["empty"] and len(png_files(tmp_path / "empty")) == 1


@pytest.mark.slow
def test_generate_cli_prints_a_line_per_class_and_the_total(generator_run, generated, tmp_path, capsys):
    out = tmp_path / "cli"  # main() in this process: a subprocess adds ~4 s of imports; test_cli covers the entry point
    assert main(["generate", str(generator_run), "--num", str(NUM), "--seed", "3", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:-1] == [f"{name}: {NUM} images in {out / name}" for name in CLASSES]
    assert lines[-1] == f"wrote {10 * NUM} images (10 classes, seed 3) to {out}"
    assert png_files(tmp_path / "cli") == png_files(generated)


def cli_error(argv: list[str], capsys) -> tuple[int, str]:
    """The exit code and stderr of ``cnnkit ARGV`` run in this process (a flag's range check exits while parsing)."""
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_generate_and_export_cli_bad_input_is_one_line_exit_2(generator_run, tmp_path, capsys):
    run = str(generator_run)
    for argv, expected in (
        (["generate", run, "--num", "0", "--out", str(tmp_path / "a")], "--num must be an integer >= 1 (got 0)"),
        (["generate", run, "--num", "2", "--class", "77", "--out", str(tmp_path / "b")], "(did you mean '7'?); it"),
        (["generate", run, "--num", "2", "--class", "dog", "--out", str(tmp_path / "b")], "generates 0, 1, 2, 3,"),
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
def test_export_generator_matches_pytorch_and_describes_itself(generator, generator_export, generated):
    from cnnkit.deploy.generator_export import ATOL, IMAGES, LABELS, NOISE
    from cnnkit.deploy.onnx_runtime import create_session
    from cnnkit.models.gan import to_uint8

    path, report = generator_export
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= ATOL
    assert json.loads(path.with_name("generator.export.json").read_text()) == report
    session = create_session(path)
    props = session.get_modelmeta().custom_metadata_map
    latent_dim = generator[0].latent_dim
    assert json.loads(props["classes"]) == CLASSES and json.loads(props["latent_dim"]) == latent_dim
    assert json.loads(props["task"]) == "generate"
    assert [(i.name, i.type) for i in session.get_inputs()] == [(NOISE, "tensor(float)"), (LABELS, "tensor(int64)")]
    # a batch the parity check never ran (5), with cnnkit generate's noise: its files, within one rounding level
    label = CLASSES.index("7")
    noise = class_noise(latent_dim, label, 5, 3).numpy()
    [images] = session.run([IMAGES], {NOISE: noise, LABELS: np.full(5, label, np.int64)})
    assert images.shape == (5, 1, SIZE, SIZE) and np.abs(images).max() <= 1.0
    files = [np.asarray(Image.open(generated / "7" / f"s3_{index:05d}.png")) for index in range(5)]
    pixels = to_uint8(torch.from_numpy(images))[:, 0].numpy().astype(int)
    assert np.abs(pixels - np.stack(files)).max() <= 1


@pytest.mark.slow
def test_classifier_commands_refuse_a_generator_and_its_export_in_one_line(
    generator_run, generator_export, generated, tmp_path, capsys
):
    path, run, image = str(generator_export[0]), str(generator_run), str(generated / "7" / "s3_00000.png")
    for argv in (["predict", run, image], ["predict", path, image], ["evaluate", run], ["explain", run, image]):
        code, error = cli_error([*argv, "--out", str(tmp_path / "out")] if argv[0] == "explain" else argv, capsys)
        assert code == 2 and error.count("\n") == 1 and "dcgan is a generator: it makes images" in error, error
    code, error = cli_error(["index", run, str(generated), "--out", str(tmp_path / "index")], capsys)
    assert code == 2 and error.count("\n") == 1 and "is a generator (dcgan): index and search embed" in error, error
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
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
def generation_app(generator):
    pytest.importorskip("fastapi", reason="the deploy extra (pip install -e '.[test]') provides fastapi")
    pytest.importorskip("httpx", reason="the test extra provides httpx")
    from cnnkit.deploy.serve.generate import create_generation_app

    return create_generation_app(*generator)


def client_of(app):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette 1.x suggests httpx2 (its own warning class)
        from fastapi.testclient import TestClient
    return TestClient(app)


@pytest.mark.slow
def test_serve_generate_draws_the_images_cnnkit_generate_writes(generation_app, generated):
    from cnnkit.deploy.serve.generate import GAP

    client = client_of(generation_app)
    answer = client.get("/generate", params={"class": "7", "count": 5, "seed": 3})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.headers["x-seed"] == "3"
    grid = np.asarray(Image.open(io.BytesIO(answer.content)))  # 3 columns, 2 rows of 64 px tiles (8 px x 8)
    tile = SIZE * 8
    assert grid.shape == (GAP + 2 * (tile + GAP), GAP + 3 * (tile + GAP))
    for index in range(5):
        row, column = divmod(index, 3)
        top, left = GAP + row * (tile + GAP), GAP + column * (tile + GAP)
        expected = np.asarray(Image.open(generated / "7" / f"s3_{index:05d}.png"))
        assert np.array_equal(grid[top : top + tile : 8, left : left + tile : 8], expected)
    fresh = [client.get("/generate", params={"class": "3"}) for _ in range(2)]
    assert [answer.status_code for answer in fresh] == [200, 200]
    assert fresh[0].headers["x-seed"] != fresh[1].headers["x-seed"]  # a new seed each time, and it says which


@pytest.mark.slow
def test_serve_generate_refuses_bad_requests_and_keeps_serving(generation_app, generator):
    client = client_of(generation_app)
    unknown = client.get("/generate", params={"class": "dog"})
    assert unknown.status_code == 400 and "it generates 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in unknown.json()["detail"]
    for params in ({"class": "7", "count": 0}, {"class": "7", "count": 65}, {"class": "7", "seed": -1}):
        assert client.get("/generate", params=params).status_code == 422
    assert client.get("/generate").status_code == 422  # no class
    health = client.get("/health").json()
    assert health["task"] == "generate" and health["classes"] == CLASSES
    assert health["latent_dim"] == generator[0].latent_dim
    page = client.get("/").text
    assert '<option value="7">7</option>' in page and 'fetch("generate?"' in page
    assert "src=" not in page.replace('id="grid"', "") and "http" not in page  # loads nothing from elsewhere
    reference = client.get("/docs").text
    assert "GET /generate" in reference and "generate?class=NAME" in reference and "/predict" not in reference
    assert client.get("/generate", params={"class": "9", "count": 1}).status_code == 200


@pytest.mark.slow
def test_serve_runs_a_generator_run_behind_its_token(generator_run, monkeypatch):
    pytest.importorskip("fastapi", reason="the deploy extra (pip install -e '.[test]') provides fastapi")
    pytest.importorskip("httpx", reason="the test extra provides httpx")
    import uvicorn

    from cnnkit.deploy.serve import serve

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: apps.append(app))
    serve(generator_run, token="secret")
    client = client_of(apps[0])
    assert client.get("/generate", params={"class": "7"}).status_code == 401
    answer = client.get("/generate", params={"class": "7"}, headers={"Authorization": "Bearer secret"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
