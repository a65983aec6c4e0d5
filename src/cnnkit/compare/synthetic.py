"""``cnnkit compare --synthetic RUN``: do a generator's images help a classifier trained on K real images per class?

GANs are offered as training data where labelled images are scarce. This study measures
the claim on the user's own data. For each of ``budget.seeds`` seeds (``budget.seed`` on),
three arms are trained alike in everything but their images:

- **real**: K real images per class, a seeded draw from the training split;
- **real + synthetic**: the same K plus M generated images per class (``generate_images``
  with the seed, into a temporary folder; M defaults to :data:`SYNTHETIC_MULTIPLE` x K);
- **synthetic only**: the M generated images per class alone, tested on the real test split
  (train on synthetic, test on real: how much of each class the generator captured).

Every arm trains cnnkit's default image network (``convnet``, built as ``cnnkit train``
builds it for K x classes images) with ``cnnkit train``'s optimiser settings, the standard
augmentation of :func:`standard_augmentation`, the normalisation of the seed's real images,
and the same number of optimizer steps: ``budget.epochs`` passes over the real + synthetic
set, the smaller sets taking as many more passes as make the same steps. A gain is then the
images' doing, not a longer training's. The arms of one seed share the real draw, so the
differences are taken per seed (paired) and their mean gets a Student-t interval
(:mod:`cnnkit.compare.interval`). :func:`cnnkit.compare.synthetic_report.synthetic_verdict`
says whether the images paid off, by how much and at what cost in seconds.
"""

from __future__ import annotations

import contextlib
import csv
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np
import torch

from cnnkit.compare.budget import SYNTHETIC_MULTIPLE, SYNTHETIC_PER_CLASS, Budget
from cnnkit.compare.interval import mean_interval
from cnnkit.compare.study import CNN, Study, _cap, write_study
from cnnkit.compute import select_device
from cnnkit.config import TrainConfig
from cnnkit.data import ImageSet, load_data
from cnnkit.data.augment import AUTO_AUGMENTATION, FOLDER_AUGMENTATION
from cnnkit.data.decode import decode_batches
from cnnkit.data.folder import list_images
from cnnkit.data.loader import channel_stats, num_batches
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo, Preprocessing

ARMS = {"real": "real", "mixed": "real + synthetic", "synthetic": "synthetic only"}  # key: progress name

# (images per class, an empty folder to fill with <class>/*.png, seed): the real one is generate_images.
Fill = Callable[[int, Path, int], object]


def synthetic_budget(given: dict[str, Any]) -> Budget:
    """``cnnkit train``'s epochs, batch size and learning rate, K = 10 real images per class, 3 seeds; then ``given``.

    ``train_size`` is K, the real images *per class* (the image study's ``train_size`` caps the
    whole training set); ``epochs`` counts passes over the real + synthetic set.
    """
    defaults = {"epochs": TrainConfig.epochs, "batch_size": TrainConfig.batch_size, "lr": TrainConfig.lr}
    return Budget(**{**defaults, "train_size": SYNTHETIC_PER_CLASS, **given})


def standard_augmentation(data: str) -> str:
    """The ``--augment`` list every arm trains with: the padded random crop plus what ``auto`` picks for the data.

    The crop (shifts of up to an eighth of the image) is the standard augmentation of small
    image sets; ``auto`` adds flips where they suit the data (folders, Fashion-MNIST) and none
    for digits. A synthetic image has to beat augmented real images, not bare ones.
    """
    auto = AUTO_AUGMENTATION.get(data, FOLDER_AUGMENTATION)
    items = [] if auto == "none" else auto.split(",")
    return ",".join(items if any(item.startswith("crop") for item in items) else ["crop", *items])


def per_class_subset(data: ImageSet, per_class: int, seed: int) -> ImageSet:
    """A seeded draw of exactly ``per_class`` images of every class."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in range(len(data.classes)):
        members = (data.labels == label).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return data.subset(torch.cat(chosen).sort().values)


def join(first: ImageSet, second: ImageSet) -> ImageSet:
    """Two sets of the same classes and image shape as one."""
    return ImageSet(
        torch.cat([first.images, second.images]),
        torch.cat([first.labels, second.labels]),
        first.classes,
        first.sources + second.sources,
    )


def _generator_record(run: str | Path, info: CheckpointInfo) -> dict[str, Any]:
    """What the run directory says about the generator's training: its training images and seconds, if recorded."""
    folder = Path(run).expanduser()
    folder = folder if folder.is_dir() else folder.parent
    record: dict[str, Any] = {"name": info.model.name, "train_sources": None, "train_seconds": None}
    unreadable = (OSError, ValueError, KeyError, TypeError)  # a checkpoint copied out of its run has neither file
    with contextlib.suppress(*unreadable):
        record["train_sources"] = set(json.loads((folder / "split.json").read_text())["train"])
    with contextlib.suppress(*unreadable), open(folder / "metrics.csv", newline="") as stream:
        record["train_seconds"] = sum(float(row["seconds"]) for row in csv.DictReader(stream))
    return record


@dataclass
class SyntheticStudy:
    """The loaded data, the generator's facts and the settings of one synthetic-image study."""

    study: Study  # train: the whole real training split; test: the real test split, capped to budget.test_size
    data: str
    run: str
    per_class: int  # K real images per class
    synthetic_per_class: int  # M generated images per class
    augment: str
    generator: dict[str, Any]


def load_synthetic_study(
    data: str,
    run: str | Path,
    budget: Budget,
    synthetic_size: int | None = None,
    data_dir: str | None = None,
    device: str = "auto",
) -> SyntheticStudy:
    """Check the generator and the data against each other and load the real splits at the generator's image size.

    Raises:
        CnnkitError: ``run`` is not a generator, its classes are not the data's, K < 1 or larger
            than the smallest class, fewer than two seeds, or the generator trained on test images.
    """
    from cnnkit.checkpoint import load_model, resolve_checkpoint
    from cnnkit.tasks.generate import is_generation_run

    if budget.epochs < 1 or budget.seeds < 2 or budget.test_size < 1:
        raise CnnkitError(
            "compare --synthetic needs --epochs >= 1, --test-size >= 1 and --seeds >= 2 (an interval needs two seeds)"
        )
    if budget.train_size < 1 or (synthetic_size is not None and synthetic_size < 1):
        raise CnnkitError(
            "compare --synthetic needs --train-size >= 1 (real images per class) and --synthetic-size >= 1"
        )
    path = resolve_checkpoint(run)
    if not is_generation_run(path):
        raise CnnkitError(f"--synthetic {run}: {path} is not a generator; give a run of `cnnkit train --task generate`")
    _, info = load_model(path)  # weights that do not fit the model are refused before anything trains
    splits = load_data(data, img_size=info.model.img_size, channels=info.model.in_channels, data_dir=data_dir)
    if not isinstance(splits.train, ImageSet):
        raise CnnkitError(f"--synthetic: {data} is not images; the generator makes images, give an image folder")
    if sorted(splits.classes) != sorted(info.classes):
        only_run, only_data = set(info.classes) - set(splits.classes), set(splits.classes) - set(info.classes)
        raise CnnkitError(
            f"--synthetic {run}: the generator's classes are not {data}'s (only the generator: "
            f"{', '.join(sorted(only_run)) or 'none'}; only the data: {', '.join(sorted(only_data)) or 'none'}); "
            "train the generator on this data"
        )
    counts = torch.bincount(splits.train.labels, minlength=len(splits.classes))
    smallest = int(counts.argmin())
    if budget.train_size > (fewest := int(counts[smallest])):
        raise CnnkitError(
            f"--train-size {budget.train_size} (real images per class) is more than {data}'s smallest class "
            f"({splits.classes[smallest]}: {fewest} training images); give at most {fewest}"
        )
    if len(splits.test) == 0:
        raise CnnkitError(f"{data}: compare --synthetic needs test images; this data has none")
    test = _cap(splits.test, budget.test_size, budget.seed)
    generator = _generator_record(run, info)
    trained_on = generator.pop("train_sources")
    leaked = sorted(trained_on & set(test.sources)) if trained_on is not None else []
    generator["split_checked"] = trained_on is not None
    generator["train_images"] = len(trained_on) if trained_on is not None else None  # labelled images it learned from
    if leaked:
        raise CnnkitError(
            f"--synthetic {run}: the generator trained on {len(leaked)} of the test images compare measures on "
            f"(e.g. {leaked[0]}), so its images would carry the test set; train it with the same --val-split and "
            "--test-split"
        )
    _, channels, img_size, _ = splits.train.images.shape
    preprocessing = Preprocessing(img_size, channels, *channel_stats(splits.train))  # replaced per seed by the draw's
    study = Study(splits.train, test, test, preprocessing, budget, select_device(device))
    multiple = synthetic_size or SYNTHETIC_MULTIPLE * budget.train_size
    return SyntheticStudy(study, data, str(run), budget.train_size, multiple, standard_augmentation(data), generator)


def read_synthetic(folder: Path, classes: list[str], preprocessing: Preprocessing) -> ImageSet:
    """The generated images of ``folder/<class>/`` as a set labelled by ``classes``, decoded by the one rule."""
    from cnnkit.tasks.generate.sampling import class_folder

    files, _, _ = list_images(folder, [class_folder(name) for name in classes])
    if not files:
        raise CnnkitError(f"the generator wrote no images into {folder}")
    paths, arrays = [folder / rel for rel, _ in files], []
    for batch, _, failures in decode_batches(paths, preprocessing.img_size, preprocessing.channels):
        if failures:
            raise CnnkitError(f"generated image {failures[0][0]} cannot be read: {failures[0][1]}")
        arrays.append(batch)
    images = torch.from_numpy(np.concatenate(arrays))  # (N, C, H, W) uint8, in the order of files
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    return ImageSet(images, labels, classes, [f"synthetic/{rel}" for rel, _ in files])


def _train_arm(seeded: Study, images: ImageSet, steps: int, augment: str) -> dict[str, Any]:
    """Train the default network on ``images`` for about ``steps`` optimizer steps; its test accuracy and seconds."""
    per_epoch = num_batches(images, seeded.budget.batch_size)
    epochs = max(1, round(steps / per_epoch))
    arm = replace(seeded, budget=replace(seeded.budget, epochs=epochs))
    model, seconds = arm.fit(CNN, images, augment=augment)
    accuracy = arm.accuracy(model)
    return {"test_accuracy": accuracy, "train_seconds": seconds, "epochs": epochs, "steps": epochs * per_epoch}


def summarise_arms(runs: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each arm's mean test accuracy with its interval and mean seconds; each arm's paired difference from real.

    Args:
        runs: Per arm (``real``, ``mixed``, ``synthetic``), one record per seed, in the same seed
            order: ``test_accuracy``, ``train_seconds``, ``generation_seconds``, ``images``.
    """
    arms = {
        arm: {
            "test_accuracy": mean_interval([run["test_accuracy"] for run in records]).to_dict(),
            "train_seconds": fmean(run["train_seconds"] for run in records),
            "generation_seconds": fmean(run["generation_seconds"] for run in records),
            "images": records[0]["images"],
            "runs": records,
        }
        for arm, records in runs.items()
    }
    differences = {
        arm: mean_interval(
            [run["test_accuracy"] - base["test_accuracy"] for run, base in zip(runs[arm], runs["real"])]
        ).to_dict()
        for arm in runs
        if arm != "real"
    }
    return arms, differences


def measure_synthetic(plan: SyntheticStudy, fill: Fill, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every seed's three arms, their means with intervals, and the paired differences from the real arm."""
    study, budget, started = plan.study, plan.study.budget, time.perf_counter()
    classes = study.train.classes
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for seed in range(budget.seed, budget.seed + budget.seeds):
        real = per_class_subset(study.train, plan.per_class, seed)
        with tempfile.TemporaryDirectory(prefix="cnnkit-synthetic-") as folder:
            generating = time.perf_counter()
            fill(plan.synthetic_per_class, Path(folder) / "images", seed)
            generation_seconds = time.perf_counter() - generating
            synthetic = read_synthetic(Path(folder) / "images", classes, study.preprocessing)
        mean, std = channel_stats(real)
        prep = replace(study.preprocessing, mean=mean, std=std)  # the seed's real images, as cnnkit train's stats
        seeded = replace(study, train=real, preprocessing=prep, budget=replace(budget, seed=seed))
        mixed = join(real, synthetic)
        steps = budget.epochs * num_batches(mixed, budget.batch_size)
        for arm, images in zip(ARMS, (real, mixed, synthetic)):
            result = {"seed": seed, "images": len(images), **_train_arm(seeded, images, steps, plan.augment)}
            result["generation_seconds"] = 0.0 if arm == "real" else generation_seconds
            runs[arm].append(result)
            say(
                f"{ARMS[arm]}, seed {seed}: {len(images)} images, {result['steps']} steps: test accuracy "
                f"{result['test_accuracy']:.2%} ({result['train_seconds']:.1f}s)"
            )
    arms, differences = summarise_arms(runs)
    return {
        "kind": "synthetic",
        "data": plan.data,
        "run": plan.run,
        "image_shape": list(study.train.images.shape[1:]),
        "classes": len(classes),
        "per_class": plan.per_class,
        "synthetic_per_class": plan.synthetic_per_class,
        "sizes": {"train_split": len(study.train), "test": len(study.test)},
        "augment": plan.augment,
        "budget": asdict(budget),
        "device": str(study.device),
        "generator": plan.generator,
        "arms": arms,
        "differences": differences,
        "chance": 1 / len(classes),
        "seconds": time.perf_counter() - started,
    }


def compare_synthetic(
    data: str,
    run: str | Path,
    given: dict[str, Any] | None = None,
    synthetic_size: int | None = None,
    out: str | Path = "runs",
    name: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    say: Callable[[str], None] = print,
    fill: Fill | None = None,
) -> tuple[dict[str, Any], Path]:
    """Run the synthetic-image study and write its report under ``out/name``, with the image study's folder rules.

    Args:
        data: The real images: a built-in dataset name or an image folder, as the generator was trained on.
        run: A run directory (or checkpoint) of ``cnnkit train --task generate``.
        given: Budget keys the caller set: ``train_size`` (K, real images per class), ``epochs`` (passes over
            the real + synthetic set), ``batch_size``, ``lr``, ``test_size``, ``seed``, ``seeds``; the rest
            as :func:`synthetic_budget`.
        synthetic_size: Generated images per class (M). Defaults to :data:`SYNTHETIC_MULTIPLE` x K.
        out: Folder of the report directory. Defaults to ``runs``.
        name: Report directory name. Defaults to ``compare``, ``compare2``, ...
        data_dir: Folder holding a built-in dataset's files.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        say: Where progress lines go. Defaults to ``print``.
        fill: What writes M images per class into a folder for a seed. Defaults to the run's
            ``generate_images``.

    Example:
        >>> results, folder = compare_synthetic("digits", "runs/gan", {"train_size": 10})
        >>> results["verdict"][0]
    """
    from cnnkit.compare.synthetic_report import synthetic_verdict

    plan = load_synthetic_study(data, run, synthetic_budget(given or {}), synthetic_size, data_dir, device)
    if fill is None:
        from cnnkit.tasks.generate.sampling import generate_images

        def fill(num: int, folder: Path, seed: int) -> object:
            return generate_images(run, num, folder, seed=seed, device=device)

    def produce() -> dict[str, Any]:
        results = measure_synthetic(plan, fill, say)
        return {**results, "verdict": synthetic_verdict(results)}

    return write_study(out, name, produce)
