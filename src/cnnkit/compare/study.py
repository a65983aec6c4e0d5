"""``cnnkit compare``: a CNN and a plain MLP trained on the same data with the same budget, measured side by side.

One study answers "do I need a CNN for this data?" with numbers: size and cost,
accuracy, data efficiency, robustness to shifts, rotations, scaling, noise and
brightness, the train/validation gap with and without regularisation, and accuracy as
convolution stages are added at a matched parameter count (:mod:`cnnkit.compare.depth`).
:func:`cnnkit.compare.verdict.verdict` turns the numbers into plain language and
:mod:`cnnkit.compare.report` writes them as HTML, Markdown and PNG plots.

Every model is trained by the library's own ``build_optimizer``, ``train_one_epoch``,
``recompute_batch_norm`` and ``evaluate`` on in-memory subsets, so the study measures
exactly what ``cnnkit train`` would do with the same settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit.compare.budget import Budget
from cnnkit.compare.depth import DEFAULT_STAGES, DEFAULT_WIDTHS, MAX_WIDTH, TOLERANCE, plan_depths
from cnnkit.compute import select_device
from cnnkit.config import TrainConfig
from cnnkit.data import ImageSet, load_data
from cnnkit.data.augment import parse_augmentation
from cnnkit.data.loader import channel_stats, num_batches
from cnnkit.data.series import SeriesSet
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import AudioPreprocessing, Preprocessing, SeriesPreprocessing
from cnnkit.models import create_model, kwargs_for_data
from cnnkit.tasks.classify import ClassifyTask
from cnnkit.tasks.classify.evaluate import evaluate
from cnnkit.training.loop import StepSettings, recompute_batch_norm, train_one_epoch
from cnnkit.training.optim import Optimisation, build_optimizer
from cnnkit.understand.robustness import PERTURBATIONS, perturb
from cnnkit.understand.summary import count_multiply_adds

CNN, MLP = "convnet", "mlp"
FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
# "Regularised" switches on all three at once: random shifts of up to an eighth of the image
# (at least one pixel; the padded random crop of `--augment crop`, edges replicated), dropout
# 0.3 before the classifier(s) and AdamW weight decay 0.05.
# "Plain" switches all three off. The headline models use the library defaults.
REGULARISED = {"augment": True, "dropout": 0.3, "weight_decay": 0.05}
PLAIN = {"augment": False, "dropout": 0.0, "weight_decay": 0.0}


def stratified_subset(data: ImageSet | SeriesSet, fraction: float, seed: int) -> ImageSet | SeriesSet:
    """A seeded random share of each class (at least one image per class)."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in data.labels.unique().tolist():
        members = (data.labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        chosen.append(members[: max(1, round(fraction * len(members)))])
    return data.subset(torch.cat(chosen).sort().values)


def _cap(data: ImageSet, size: int, seed: int) -> ImageSet:
    return data if len(data) <= size else stratified_subset(data, size / len(data), seed)


@dataclass
class Study:
    """The data and settings shared by every training in one comparison."""

    train: ImageSet | SeriesSet
    val: ImageSet | SeriesSet
    test: ImageSet | SeriesSet
    preprocessing: Preprocessing | SeriesPreprocessing | AudioPreprocessing
    budget: Budget
    device: torch.device
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # what the data fixes, as an audio clip's sample rate

    def build(self, name: str, **kwargs: Any) -> nn.Module:
        """Model ``name`` as the study trains it: ``cnnkit train``'s arguments for all the data, then ``kwargs``."""
        channels, *_, size = self.preprocessing.input_shape  # (C, H, W) images, (C, L) series and clips
        kwargs = {**kwargs_for_data(name, len(self.train)), **self.model_kwargs, **kwargs}
        return create_model(name, len(self.train.classes), channels, size, **kwargs)

    def fit(
        self,
        name: str,
        train: ImageSet | None = None,
        augment: bool | str = False,
        weight_decay: float = TrainConfig.weight_decay,
        **kwargs: Any,
    ) -> tuple[nn.Module, float]:
        """Train model ``name`` (builder ``kwargs``) on ``train`` (default: all training images), timed.

        ``augment``: True for ``--augment crop``, or an ``--augment`` list such as ``crop,hflip``.
        """
        train = self.train if train is None else train
        budget, prep = self.budget, self.preprocessing
        config = TrainConfig(
            epochs=budget.epochs, batch_size=budget.batch_size, lr=budget.lr, weight_decay=weight_decay
        )
        torch.manual_seed(budget.seed)
        model = self.build(name, **kwargs).to(self.device)
        steps = num_batches(train, budget.batch_size)
        optimisation = Optimisation(*build_optimizer(model, config, budget.epochs * steps))
        generator = torch.Generator().manual_seed(budget.seed)
        spec = "crop" if augment is True else augment
        augmentation = parse_augmentation(spec, img_size=prep.img_size) if augment else None
        task, settings = ClassifyTask(train.classes), StepSettings(budget.batch_size, augment=augmentation)
        started = time.perf_counter()
        for _ in range(budget.epochs):
            train_one_epoch(model, train, prep, task, optimisation, self.device, generator, settings)
            recompute_batch_norm(model, train, prep, self.device, budget.batch_size)
        return model.eval(), time.perf_counter() - started

    def accuracy(self, model: nn.Module, data: ImageSet | SeriesSet | None = None) -> float:
        return evaluate(model, self.test if data is None else data, self.preprocessing, self.device).accuracy


def load_study(data: str, budget: Budget, data_dir: str | None = None, device: str = "auto") -> Study:
    """Load ``data`` (a built-in name or a folder), cap its splits to the budget and fix the preprocessing."""
    if budget.epochs < 1 or budget.train_size < 20 or budget.test_size < 1:
        raise CnnkitError("compare needs --epochs >= 1, --train-size >= 20 and --test-size >= 1")
    splits = load_data(data, data_dir=data_dir)
    if len(splits.train) == 0 or len(splits.test) == 0:
        raise CnnkitError(f"{data}: compare needs training and test images; this data has {len(splits.test)} test")
    train = _cap(splits.train, budget.train_size, budget.seed)
    test = _cap(splits.test, budget.test_size, budget.seed)
    val = splits.val if len(splits.val) else test
    _, channels, img_size, _ = train.images.shape
    mean, std = channel_stats(train)
    return Study(train, val, test, Preprocessing(img_size, channels, mean, std), budget, select_device(device))


def _model_summary(study: Study, name: str, model: nn.Module, seconds: float) -> dict[str, Any]:
    shape = tuple(study.train.images.shape[1:])
    return {
        "name": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "multiply_adds": count_multiply_adds(model, shape),
        "train_seconds": seconds,
        "train_accuracy": study.accuracy(model, study.train),
        "val_accuracy": study.accuracy(model, study.val),
        "test_accuracy": study.accuracy(model),
    }


def _robustness(study: Study, model: nn.Module) -> dict[str, list[list[float]]]:
    return {
        kind: [
            [level, study.accuracy(model, ImageSet(perturb(study.test.images, kind, level), *_rest(study.test)))]
            for level in levels
        ]
        for kind, levels in PERTURBATIONS.items()
    }


def _rest(data: ImageSet) -> tuple:
    return data.labels, data.classes, data.sources


def run_comparison(
    data: str = "digits",
    budget: Budget | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and measure the CNN and the MLP; returns the results structure the verdict and report read.

    Args:
        data: A built-in dataset name or an image folder. Defaults to ``digits``.
        budget: Training budget shared by both models; defaults to :class:`Budget` defaults.
        data_dir: Folder holding a built-in dataset's files.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        say: Where progress lines go. Defaults to ``print``.

    Example:
        >>> results = run_comparison("digits", Budget(epochs=3))
        >>> results["models"]["cnn"]["test_accuracy"] > 0.9
        True
    """
    return measure(load_study(data, budget or Budget(), data_dir, device), data, say)


def measure(study: Study, data: str, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every training and measurement of the study on loaded data (``data`` names it in the results)."""
    budget = study.budget
    started = time.perf_counter()
    results: dict[str, Any] = {
        "data": data,
        "image_shape": list(study.train.images.shape[1:]),
        "classes": len(study.train.classes),
        "sizes": {"train": len(study.train), "val": len(study.val), "test": len(study.test)},
        "budget": asdict(budget),
        "device": str(study.device),
        "models": {},
        "robustness": {},
        "data_efficiency": {"fractions": list(FRACTIONS), "train_images": [], "cnn": [], "mlp": []},
        "overfitting": {},
    }
    headline: dict[str, nn.Module] = {}
    for key, name in (("cnn", CNN), ("mlp", MLP)):
        say(f"{name}: training on {len(study.train)} images for {budget.epochs} epochs")
        model, seconds = study.fit(name)
        headline[key] = model
        results["models"][key] = _model_summary(study, name, model, seconds)
        say(f"{name}: test accuracy {results['models'][key]['test_accuracy']:.2%} ({seconds:.1f}s); perturbations")
        results["robustness"][key] = {"clean": results["models"][key]["test_accuracy"], **_robustness(study, model)}
        for fraction in FRACTIONS:
            if fraction == 1.0:
                accuracy = results["models"][key]["test_accuracy"]
            else:
                subset = stratified_subset(study.train, fraction, budget.seed)
                accuracy = study.accuracy(study.fit(name, subset)[0])
            results["data_efficiency"][key].append(accuracy)
        shares = ", ".join(f"{fraction:.0%}" for fraction in FRACTIONS)
        accuracies = ", ".join(f"{accuracy:.1%}" for accuracy in results["data_efficiency"][key])
        say(f"{name}: test accuracy with {shares} of the training images: {accuracies}")
        results["overfitting"][key] = {}
        for setting, options in (("plain", PLAIN), ("regularised", REGULARISED)):
            model, _ = study.fit(name, **options)
            train_accuracy, val_accuracy = study.accuracy(model, study.train), study.accuracy(model, study.val)
            results["overfitting"][key][setting] = {
                "train_accuracy": train_accuracy,
                "val_accuracy": val_accuracy,
                "gap": train_accuracy - val_accuracy,
            }
            say(
                f"{name}, {setting}: train accuracy {train_accuracy:.1%}, validation {val_accuracy:.1%} "
                f"(gap {(train_accuracy - val_accuracy) * 100:+.1f} pp)"
            )
    results["data_efficiency"]["train_images"] = [
        len(stratified_subset(study.train, f, budget.seed)) for f in FRACTIONS
    ]
    results["depth"], results["depth_match"] = _depth_study(study, headline["cnn"], say)
    results["seconds"] = time.perf_counter() - started
    return results


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_convnet_parameters(study: Study, stages: int, widths: tuple[int, ...]) -> int:
    """Parameters of the ConvNet with ``stages`` stages of ``widths`` channels, as the study would build it."""
    with torch.device("meta"):  # shapes only: no memory for the weights of a network that may never train
        return _parameters(study.build(CNN, stages=stages, widths=widths))


def _depth_study(
    study: Study, default_cnn: nn.Module, say: Callable[[str], None]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Test accuracy of ConvNets of 1 to 4 stages, each widened or narrowed to the default network's parameters."""
    plan = plan_depths(partial(count_convnet_parameters, study))
    shape = tuple(study.train.images.shape[1:])
    rows = []
    for stages, widths in plan.widths.items():
        default = stages == DEFAULT_STAGES and widths == DEFAULT_WIDTHS
        model = default_cnn if default else study.fit(CNN, stages=stages, widths=widths)[0]
        rows.append(
            {
                "stages": stages,
                "widths": list(widths),
                "conv_layers": len([m for m in model.modules() if isinstance(m, nn.Conv2d)]),
                "parameters": _parameters(model),
                "multiply_adds": count_multiply_adds(model, shape),
                "test_accuracy": study.accuracy(model),
            }
        )
        say(
            f"convnet with {stages} stage(s) of {'/'.join(map(str, widths))} channels, {rows[-1]['parameters']:,} "
            f"parameters: test accuracy {rows[-1]['test_accuracy']:.2%}"
        )
    for stages, parameters in plan.left_out.items():
        say(
            f"convnet with {stages} stage(s): left out; with at most {MAX_WIDTH} channels it reaches {parameters:,} "
            f"parameters, not {plan.target:,} ± {TOLERANCE:.0%}"
        )
    match = {
        "parameters": plan.target,
        "tolerance": TOLERANCE,
        "max_width": MAX_WIDTH,
        "left_out": [{"stages": stages, "parameters": parameters} for stages, parameters in plan.left_out.items()],
    }
    return rows, match


def compare(
    data: str = "digits",
    budget: Budget | None = None,
    out: str | Path = "runs",
    name: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    say: Callable[[str], None] = print,
) -> tuple[dict[str, Any], Path]:
    """Run the comparison and write ``report.html``, ``report.md``, ``results.json`` and PNG plots under ``out/name``.

    Returns:
        The results (with its ``verdict`` lines) and the report directory.
    """
    from cnnkit.compare.verdict import verdict

    study = load_study(data, budget or Budget(), data_dir, device)

    def produce() -> dict[str, Any]:
        results = measure(study, data, say)
        return {**results, "verdict": verdict(results)}

    return write_study(out, name, produce)


def write_study(out: str | Path, name: str | None, produce: Callable[[], dict[str, Any]]) -> tuple[dict, Path]:
    """Run ``produce`` (a loaded study's measurements and verdict) and write its report under ``out/name``.

    ``runs/`` never holds a half-written report: the caller loads the data and checks the
    budget first; a ``compareN`` folder is made only when the numbers are in (a named one is
    claimed before the study, so a name already in use is refused at once); and a study
    that fails or is interrupted removes the folder it made and what it wrote there.
    """
    from cnnkit.compare.report import write_compare_report
    from cnnkit.rundir import new_run_dir

    keep_folder = name is not None and (Path(out).expanduser() / name).is_dir()  # an empty folder the user made
    out_dir = new_run_dir(out, name, "compare") if name is not None else None
    try:
        results = produce()
        out_dir = out_dir or new_run_dir(out, None, "compare")
        write_compare_report(results, out_dir)
    except BaseException:  # Ctrl-C included
        if out_dir is not None:
            for path in out_dir.iterdir():
                path.unlink()
            if not keep_folder:
                out_dir.rmdir()
        raise
    return results, out_dir
