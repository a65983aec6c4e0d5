"""Typed training defaults: one key means one thing in YAML, on the command line and in Python.

Each key carries its help text, its ``train --help`` group and the values it accepts (a
:class:`Range` or a tuple of choices) in its field metadata; the command line builds its flags
and their type checks from them, and :meth:`TrainConfig.check` and ``from_dict`` refuse the
same values, so a setting is accepted or refused alike wherever it comes from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnkit.errors import CnnkitError, describe_error
from cnnkit.tasks.detect import DEFAULT_BATCH_SIZE as DETECTION_BATCH_SIZE


@dataclass(frozen=True)
class Range:
    """The numbers a setting accepts: its kind and bounds. NaN and infinity never pass.

    Args:
        kind: ``int`` or ``float``.
        low: Smallest allowed value; None for no bound. Defaults to None.
        high: Largest allowed value; None for no bound. Defaults to None.
        low_open: ``low`` itself is refused (``> low``). Defaults to False.
        high_open: ``high`` itself is refused (``< high``). Defaults to False.

    Example:
        >>> Range(float, 0, low_open=True).problem(float("nan"))
        'must be a finite number > 0 (got nan)'
    """

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """The rule in words, e.g. ``an integer >= 1`` or ``a finite number in [0, 1)``."""
        noun = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{noun} in {left}{_bound(self.low)}, {_bound(self.high)}{right}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {_bound(self.low)}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {_bound(self.high)}"
        return noun

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is allowed, else why not: ``must be ... (got ...)``."""
        wrong_kind = isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else int)
        if (
            wrong_kind
            or not math.isfinite(value)
            or (self.low is not None and (value <= self.low if self.low_open else value < self.low))
            or (self.high is not None and (value >= self.high if self.high_open else value > self.high))
        ):
            return f"must be {self.describe()} (got {value!r})"
        return None


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _option(
    default: Any, help: str, group: str, limits: Range | None = None, choices: tuple[Any, ...] | None = None
) -> Any:
    return field(default=default, metadata={"help": help, "group": group, "range": limits, "choices": choices})


# The model a run trains when --model is not given, by the kind of data. For series, resnet1d over fcn:
# on TRAIN alone (`benchmarks/ucr.py --select`, 200 epochs of batch 16), at lr 1e-3 it was right on
# 10/10 GunPoint validation series (fcn 9/10) and tied on ItalyPowerDemand (13/14 each), and both
# were right on every carved held-out GunPoint series; the field's review (Ismail Fawaz et al. 2019)
# also found ResNet the strongest of the deep models on UCR. fcn trains 2-3x faster per epoch.
# For audio, bcresnet: the most accurate compact keyword spotter per weight and operation (models/kws.py), and
# a step of 32 one-second 8 kHz clips took 214 ms on one thread against m5's 324 ms (once, a shared machine).
DEFAULT_MODELS = {"image": "convnet", "series": "resnet1d", "audio": "bcresnet"}
# Series runs without these keys (config.yaml records them): Wang et al.'s batch, a tenth of the series, 2 to
# 16 (prepare.series_batch_size; docs/benchmarks.md), lr 1e-3, about SERIES_STEPS steps of batch 16's epochs.
SERIES_TRAINING = {"batch_size": 16, "lr": 1e-3}
SERIES_STEPS = 600
SERIES_EPOCHS = (20, 200)
# How audio trains when a run does not set these keys (config.yaml records them): 98.6% on validation from
# FSDD's training takes (data/audio_augment.py); other values not compared; 20 epochs sized for 3 min on 2 cores.
AUDIO_TRAINING = {"epochs": 20, "batch_size": 32, "lr": 3e-3, "background": 0.1}  # background: as one class of 10
SPLIT_BY = ("index", "speaker")  # spoken-digits' splits: the dataset's own (takes 0-4 test), or a held-out speaker

POSITIVE = Range(float, 0, low_open=True)
SHARE = Range(float, 0, 1, high_open=True)  # a share that cannot be all: [0, 1)
COUNT = Range(int, 1)


@dataclass
class TrainConfig:
    """Every setting of a training run, with its default. Saved as ``config.yaml`` in each run."""

    data: str = _option(
        "digits", "folder with one subfolder per class, or a built-in: digits, mnist, fashion-mnist, cifar10", "data"
    )
    data_dir: str | None = _option(
        None,
        "folder holding a built-in dataset's files (default: $CNNKIT_DATA_DIR, "
        "system locations, then the download cache)",
        "data",
    )
    model: str | None = _option(
        None,
        "architecture name (see `cnnkit models`), a layer spec string, or a .yaml/.json spec file "
        f"(default: {DEFAULT_MODELS['image']} for images, {DEFAULT_MODELS['series']} for time series, "
        f"{DEFAULT_MODELS['audio']} for audio)",
        "model",
    )
    task: str = _option(
        "classify",
        "what the network learns: classify (a label per image), embed (an embedding for similarity search, "
        "evaluated by Recall@K on held-out classes), detect (boxes, from COCO, YOLO or VOC annotations; COCO mAP) "
        "or generate (images of each class: a conditional GAN, best by Fréchet distance on a judge's features)",
        "model",
        choices=("classify", "embed", "detect", "generate"),
    )
    embed_dim: int | None = _option(
        None, "width of the L2-normalised embedding (--task embed; default: 512)", "model", COUNT
    )
    held_out: str | None = _option(
        None,
        "comma-separated classes held out of embedding training and searched at test "
        "(--task embed; default: the last half of the sorted class names)",
        "data",
    )
    pretrained: bool = _option(False, "start from ImageNet weights, with the preprocessing they expect", "model")
    weights: str | None = _option(
        None, "local ImageNet weights file (safetensors, or a .pt/.pth state dict) for --pretrained/--finetune", "model"
    )
    finetune: bool = _option(
        False,
        "fine-tune ImageNet weights: train a new head on the frozen body, then unfreeze with lower "
        "learning rates for earlier layers",
        "model",
    )
    freeze: int | None = _option(
        None, "epochs training only the new head before unfreezing (default with --finetune: 1)", "model", Range(int, 0)
    )
    epochs: int = _option(
        20,
        f"passes over the training images (default: 20; time series: about {SERIES_STEPS} steps' worth, "
        f"{SERIES_EPOCHS[0]} to {SERIES_EPOCHS[1]})",
        "optimisation",
        COUNT,
    )
    batch_size: int = _option(
        64,
        f"images per step (default 64; time series a tenth of the series, 2 to {SERIES_TRAINING['batch_size']}; "
        f"detection {DETECTION_BATCH_SIZE})",
        "optimisation",
        COUNT,
    )
    lr: float = _option(
        3e-3,
        f"peak learning rate of the one-cycle schedule, AdamW (default: 0.003; time series: {SERIES_TRAINING['lr']:g})",
        "optimisation",
        POSITIVE,
    )
    weight_decay: float = _option(5e-4, "AdamW weight decay", "optimisation", Range(float, 0))
    label_smoothing: float = _option(0.0, "cross-entropy label smoothing", "optimisation", SHARE)
    img_size: int | None = _option(
        None,
        "side of the square model input (default: the dataset's own, 64 for folders)",
        "data",
        Range(int, 4, 4096),  # 4096: the data layer's MAX_IMG_SIZE (a test keeps them equal)
    )
    channels: int | None = _option(
        None, "input channels (default: 1 when every image is grayscale)", "data", choices=(1, 3)
    )
    resize: str = _option(
        "crop",
        "resize rule: crop (shorter side, centre crop), squash, or pad",
        "data",
        choices=("crop", "squash", "pad"),
    )
    series_normalize: bool = _option(
        False, "z-normalise each time series and channel over its own length, as the run records", "data"
    )
    split_by: str | None = _option(
        None,
        "spoken-digits: index (its own split, takes 0-4 test; the default) or speaker (one speaker held out, --fold)",
        "data",
        choices=SPLIT_BY,
    )
    fold: int | None = _option(
        None,
        "with --split-by speaker: which speaker is the test split, 0 for the first by name (the default)",
        "data",
        Range(int, 0),
    )
    sample_rate: int | None = _option(
        None,
        "audio: Hz every clip is resampled to (default: 8000 for spoken-digits, else 16000)",
        "data",
        Range(int, 1000, 768_000),  # the WAV reader's limits
    )
    clip_seconds: float | None = _option(
        None, "audio: seconds every clip is padded or cropped to (default: 1)", "data", Range(float, 0, 3600, True)
    )
    background: float | None = _option(
        None, "audio: _background_ clips (noise, gaps) per clip of each split; 0: none (default 0.1)", "data", SHARE
    )
    keywords: str | None = _option(
        None,
        "speech-commands: standard (its published 12-class task) or words such as yes,no,up, each task adding "
        "_silence_ and _unknown_ (default: all 35 words, no task)",
        "data",
    )
    val_split: float = _option(
        0.1, "share of training images held out for validation when no val/ folder exists", "data", SHARE
    )
    test_split: float = _option(0.2, "share held out for testing when the data has no test split", "data", SHARE)
    # numpy and torch both accept seeds up to 2**32 - 1
    seed: int = _option(0, "random seed for weights and data order", "optimisation", Range(int, 0, 2**32 - 1))
    device: str = _option("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps", "compute")
    workers: int | None = _option(None, "threads that decode images (default: all cores)", "compute", COUNT)
    devices: int = _option(
        1,
        "worker processes: N CPU processes (gloo) or N GPUs (NCCL) on this machine, splitting --batch-size; "
        "under torchrun, the world size it started",
        "compute",
        COUNT,
    )
    out: str = _option("runs", "folder that holds run directories", "output")
    name: str | None = _option(None, "run directory name under --out (default: train, train2, ...)", "output")
    save_every: int = _option(
        0, "also save the resumable state every N steps (0: at the end of each epoch only)", "output", Range(int, 0)
    )
    nonfinite: str = _option(
        "stop",
        "on a NaN/infinite loss or gradient: stop (keep the last good state) or skip",
        "optimisation",
        choices=("stop", "skip"),
    )
    clip_grad_norm: float | None = _option(
        None, "clip the gradient norm to this value (default: no clipping)", "optimisation", POSITIVE
    )
    class_weights: str = _option(
        "none",
        "none, or balanced: weight the loss by inverse class frequency",
        "optimisation",
        choices=("none", "balanced"),
    )
    sampler: str = _option(
        "shuffle",
        "shuffle (each image once per epoch) or balanced (classes drawn equally)",
        "data",
        choices=("shuffle", "balanced"),
    )
    max_bad_share: float = _option(
        0.01, "abort when more than this share of the image files cannot be read", "data", Range(float, 0, 1)
    )
    augment: str = _option(
        "auto",
        "batch augmentation: auto (chosen per dataset), none, or a list such as "
        "crop=4,hflip,rotate=10,scale=0.1,translate=0.1,brightness=0.2,contrast=0.2,saturation=0.2,erasing=0.25",
        "data",
    )
    tta: str = _option(
        "auto",
        "test-time augmentation of the final evaluation, prediction, serving and export: "
        "flip (average with the mirror image), none, or auto (flip when training flipped images)",
        "model",
        choices=("auto", "flip", "none"),
    )
    precision: str = _option(
        "auto",
        "numeric precision; auto: bf16 where it measures faster than fp32 (GPUs, CPUs with AMX), fp16 on older GPUs",
        "compute",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    memory_format: str = _option(
        "auto",
        "tensor layout; auto: channels_last for CNNs",
        "compute",
        choices=("auto", "channels_last", "contiguous"),
    )
    compile: bool = _option(
        False, "compile the model with torch.compile (slow first steps; pays on long GPU runs)", "compute"
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """A config from a mapping (a YAML file, keyword arguments); unknown keys and bad values are refused.

        Raises:
            CnnkitError: Naming ``source``, each offending key and the values it accepts.
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise CnnkitError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        problems = [f"{key} {why}" for key, value in values.items() if (why := value_problem(known[key], value))]
        if problems:
            raise CnnkitError(f"{source}: {'; '.join(problems)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise CnnkitError(f"cannot read config {path}: {describe_error(error)}") from None
        if not isinstance(values, dict):
            raise CnnkitError(f"{path} must hold a mapping of config keys to values")
        # YAML 1.1 reads 3e-3 (no dot) as text: take such text as the number it spells for float keys.
        floats = {f.name for f in dataclasses.fields(cls) if _kind(f)[0] is float}
        for key, value in values.items():
            if key in floats and isinstance(value, str):
                with contextlib.suppress(ValueError):  # text left as it is: from_dict names the key and the rule
                    values[key] = float(value)
        return cls.from_dict(values, str(path))

    def check(self) -> None:
        """Reject impossible values before any work is done: each key against its own rule, then combinations."""
        problems = [
            f"{spec.name} {problem}"
            for spec in dataclasses.fields(self)
            if (problem := value_problem(spec, getattr(self, spec.name)))
        ]
        if self.freeze is not None and not self.finetune:
            problems.append("freeze is used only with finetune")
        problems += [
            f"{key} is used only with task embed"
            for key in ("embed_dim", "held_out")
            if self.task != "embed" and getattr(self, key) is not None
        ]
        if self.fold is not None and self.split_by != "speaker":
            problems.append("fold is used only with split_by speaker")
        if self.keywords is not None and self.data != "speech-commands":
            problems.append("keywords is used only with data speech-commands")
        if not problems and self.val_split + self.test_split >= 1:
            total = self.val_split + self.test_split
            problems.append(f"val_split and test_split must sum to less than 1 (got {total:g})")
        if problems:
            raise CnnkitError("; ".join(problems))


def describe_rule(spec: dataclasses.Field) -> str:
    """The values one key accepts, in words: ``a finite number > 0``, ``one of crop, squash, pad``, ``text``."""
    kind, optional = _kind(spec)
    if spec.metadata.get("choices"):
        rule = f"one of {', '.join(map(str, spec.metadata['choices']))}"
    elif spec.metadata.get("range"):
        rule = spec.metadata["range"].describe()
    else:
        rule = {bool: "true or false", str: "text", int: "an integer", float: "a finite number"}[kind]
    return f"{rule} or null" if optional else rule


def value_problem(spec: dataclasses.Field, value: Any) -> str | None:
    """None when ``value`` suits the key ``spec``, else ``must be <rule> (got <value>)``."""
    kind, optional = _kind(spec)
    if value is None and optional:
        return None
    limits, choices = spec.metadata.get("range"), spec.metadata.get("choices")
    if choices:
        allowed = value in choices and not isinstance(value, bool) and isinstance(value, kind)
    elif limits:
        allowed = limits.problem(value) is None
    elif kind is float:
        allowed = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        allowed = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    return None if allowed else f"must be {describe_rule(spec)} (got {value!r})"


def _kind(spec: dataclasses.Field) -> tuple[type, bool]:
    """(bool, int, float or str; whether None is allowed) from the annotation, a string under postponed evaluation."""
    annotation = str(spec.type)
    kind = next(k for k in (bool, int, float, str) if k.__name__ in annotation.split(" | "))
    return kind, "None" in annotation


def audio_defaults(keywords: str | None) -> dict[str, Any]:
    """``AUDIO_TRAINING`` for a run; with ``keywords`` no ``_background_``: the task's ``_silence_`` is non-speech."""
    return {**AUDIO_TRAINING, "background": 0.0} if keywords is not None else AUDIO_TRAINING
