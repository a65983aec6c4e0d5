"""Shared fixtures: tiny image folders made in tmp_path, and a trained digits run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

torch.set_num_threads(2)

SHAPES = ("circle", "square", "triangle")


def draw_shape(shape: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A light shape on a dark background, at a random position and colour."""
    width, height = size
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(image)
    side = min(width, height)
    radius = side * rng.uniform(0.25, 0.4)
    cx = width / 2 + rng.uniform(-0.1, 0.1) * side
    cy = height / 2 + rng.uniform(-0.1, 0.1) * side
    colour = tuple(int(v) for v in rng.integers(150, 256, 3))
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    elif shape == "square":
        draw.rectangle((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour)
    return image


def make_shapes_folder(root: Path, per_class: int = 12, seed: int = 0, sizes=((40, 40), (48, 36), (36, 52))) -> Path:
    """One subfolder per shape, mixed sizes, JPEG and PNG files."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image = draw_shape(shape, sizes[index % len(sizes)], rng)
            suffix = ".png" if index % 2 else ".jpg"
            image.save(root / shape / f"{shape}_{index:03d}{suffix}")
    return root


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the decoded-image and scan caches of the tests (and their subprocesses) out of the user's cache."""
    import os

    previous = os.environ.get("CNNKIT_CACHE_DIR")
    os.environ["CNNKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("cnnkit-cache"))
    yield
    if previous is None:
        os.environ.pop("CNNKIT_CACHE_DIR")
    else:
        os.environ["CNNKIT_CACHE_DIR"] = previous


@pytest.fixture
def shapes_folder(tmp_path: Path) -> Path:
    return make_shapes_folder(tmp_path / "shapes")


@pytest.fixture
def one_thread():
    """Train on one thread: on a loaded 2-core machine torch's thread pool spins and runs ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory trained on the built-in digits for a few epochs (shared by read-only tests)."""
    import cnnkit

    out = tmp_path_factory.mktemp("runs")
    run = cnnkit.train(data="digits", epochs=4, out=str(out), name="digits", verbose=False)
    return run.dir


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``cnnkit`` command in a subprocess."""
    return subprocess.run([sys.executable, "-m", "cnnkit", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="session")
def digits_export(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cnnkit export --int8`` of the digits run: a folder with model.onnx, model.int8.onnx and export.json."""
    pytest.importorskip("onnxruntime", reason="the deploy extra (pip install -e '.[test]') provides onnxruntime")
    from cnnkit.deploy.export import export_onnx

    out = tmp_path_factory.mktemp("exports")
    export_onnx(digits_run, out=out, name="digits", int8=True, verbose=False)
    return out / "digits"


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 of the built-in digits per class as an image folder (``0``-``9``, 8x8 grayscale PNGs).

    The default split leaves 14 per class to train on (140, 3 batches of 64), 2 to validate and 4 to test:
    a GAN run on it costs a fraction of one on the 1,259 training digits, whose quality figures alone
    compare 1,000 generated images with each real validation image.
    """
    from cnnkit.data import load_data

    root = tmp_path_factory.mktemp("digits-folder") / "digits"
    train = load_data("digits", img_size=8).train
    for label, name in enumerate(train.classes):
        (root / name).mkdir(parents=True)
        for index, image in enumerate(train.images[train.labels == label][:20]):  # (1, 8, 8) uint8
            Image.fromarray(image[0].numpy()).save(root / name / f"{index:02d}.png")
    return root


@pytest.fixture(scope="session")
def generate_run(digits_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``cnnkit train --task generate`` run on ``digits_folder`` (2 epochs of 3 steps, a 1-epoch judge; read-only).

    Its generator is barely trained: for file, shape and command tests, not for image quality.
    Beside it, ``mid_epoch_state.safetensors`` is its state part-way through epoch 2 (the resume test's start).
    """
    import shutil

    import cnnkit
    from cnnkit.training import generate

    class KeepMidEpochState:  # the first state saved in epoch 2 is --save-every's, one batch into the epoch
        def on_checkpoint(self, run_dir: Path, path: Path, epoch: int, step: int) -> None:
            kept = run_dir.parent / "mid_epoch_state.safetensors"
            if path.name == "state.safetensors" and epoch == 2 and not kept.exists():
                shutil.copy(path, kept)

    out = tmp_path_factory.mktemp("runs")
    settings = {"task": "generate", "data": str(digits_folder), "img_size": 8, "epochs": 2, "batch_size": 64}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_thread (a function fixture): on a loaded machine 2 threads took 3x longer
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(generate, "JUDGE_EPOCHS", 1)  # the judge's budget is the task's constant; a test needs less
            run = cnnkit.train(
                out=str(out), name="gan", save_every=2, verbose=False, callbacks=[KeepMidEpochState()], **settings
            )
    finally:
        torch.set_num_threads(threads)
    return run.dir
