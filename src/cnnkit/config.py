"""Typed training defaults: one key means one thing in YAML, on the command line and in Python."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnkit.errors import CnnkitError


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every setting of a training run, with its default. Saved as ``config.yaml`` in each run."""

    data: str = _option(
        "digits", "folder with one subfolder per class, or a built-in: digits, mnist, fashion-mnist, cifar10"
    )
    data_dir: str | None = _option(
        None,
        "folder holding a built-in dataset's files (default: $CNNKIT_DATA_DIR, "
        "system locations, then the download cache)",
    )
    model: str = _option(
        "convnet", "architecture name (see `cnnkit models`), a layer spec string, or a .yaml/.json spec file"
    )
    pretrained: bool = _option(False, "start from ImageNet weights, with the preprocessing they expect")
    weights: str | None = _option(
        None, "local ImageNet weights file (safetensors, or a .pt/.pth state dict) for --pretrained/--finetune"
    )
    finetune: bool = _option(
        False,
        "fine-tune ImageNet weights: train a new head on the frozen body, then unfreeze with lower "
        "learning rates for earlier layers",
    )
    freeze: int | None = _option(
        None, "epochs that train only the new head before unfreezing (default with --finetune: 1)"
    )
    epochs: int = _option(20, "passes over the training images")
    batch_size: int = _option(64, "images per training step")
    lr: float = _option(3e-3, "peak learning rate of the one-cycle schedule (AdamW)")
    weight_decay: float = _option(5e-4, "AdamW weight decay")
    label_smoothing: float = _option(0.0, "cross-entropy label smoothing")
    img_size: int | None = _option(None, "side of the square model input (default: the dataset's own, 64 for folders)")
    channels: int | None = _option(None, "1 or 3 input channels (default: 1 when every image is grayscale)")
    resize: str = _option("crop", "resize rule: crop (shorter side, centre crop), squash, or pad")
    val_split: float = _option(0.1, "share of training images held out for validation when no val/ folder exists")
    test_split: float = _option(0.2, "share held out for testing when the data has no test split")
    seed: int = _option(0, "random seed for weights and data order")
    device: str = _option("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    workers: int | None = _option(None, "threads that decode images (default: all cores)")
    out: str = _option("runs", "folder that holds run directories")
    name: str | None = _option(None, "run directory name under --out (default: train, train2, ...)")
    save_every: int = _option(0, "also save the resumable state every N steps (0: at the end of each epoch only)")
    nonfinite: str = _option("stop", "on a NaN/infinite loss or gradient: stop (keep the last good state) or skip")
    clip_grad_norm: float | None = _option(None, "clip the gradient norm to this value (default: no clipping)")
    class_weights: str = _option("none", "none, or balanced: weight the loss by inverse class frequency")
    sampler: str = _option("shuffle", "shuffle (each image once per epoch) or balanced (classes drawn equally)")
    max_bad_share: float = _option(0.01, "abort when more than this share of the image files cannot be read")
    augment: str = _option(
        "auto",
        "batch augmentation: auto (chosen per dataset), none, or a list such as "
        "crop=4,hflip,rotate=10,scale=0.1,translate=0.1,brightness=0.2,contrast=0.2,saturation=0.2,erasing=0.25",
    )
    tta: str = _option(
        "auto",
        "test-time augmentation of the final evaluation, prediction, serving and export: "
        "flip (average with the mirror image), none, or auto (flip when training flipped images)",
    )
    precision: str = _option("auto", "auto (bf16 where the hardware has it, fp16 on older GPUs), fp32, bf16, fp16")
    memory_format: str = _option("auto", "auto, channels_last or contiguous (auto: channels_last for CNNs)")
    compile: bool = _option(False, "compile the model with torch.compile (slow first steps; pays on long GPU runs)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CnnkitError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise CnnkitError(f"cannot read config {path}: {error}") from None
        if not isinstance(values, dict):
            raise CnnkitError(f"{path} must hold a mapping of config keys to values")
        return cls.from_dict(values, str(path))

    def check(self) -> None:
        """Reject impossible values before any work is done."""
        problems = []
        if self.epochs < 1:
            problems.append("epochs must be at least 1")
        if self.batch_size < 1:
            problems.append("batch_size must be at least 1")
        if self.lr <= 0:
            problems.append("lr must be positive")
        if self.img_size is not None and self.img_size < 4:
            problems.append("img_size must be at least 4")
        if self.channels not in (None, 1, 3):
            problems.append("channels must be 1 or 3")
        if self.freeze is not None and (self.freeze < 0 or not self.finetune):
            problems.append("freeze must be at least 0 and is used only with finetune")
        if self.resize not in ("crop", "squash", "pad"):
            problems.append("resize must be crop, squash or pad")
        if not (0 <= self.val_split < 1 and 0 <= self.test_split < 1 and self.val_split + self.test_split < 1):
            problems.append("val_split and test_split must be in [0, 1) and sum to less than 1")
        if self.save_every < 0:
            problems.append("save_every must be 0 or more")
        if self.nonfinite not in ("stop", "skip"):
            problems.append("nonfinite must be stop or skip")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            problems.append("clip_grad_norm must be positive")
        if self.class_weights not in ("none", "balanced"):
            problems.append("class_weights must be none or balanced")
        if self.sampler not in ("shuffle", "balanced"):
            problems.append("sampler must be shuffle or balanced")
        if self.tta not in ("auto", "flip", "none"):
            problems.append("tta must be auto, flip or none")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            problems.append("precision must be auto, fp32, bf16 or fp16")
        if self.memory_format not in ("auto", "channels_last", "contiguous"):
            problems.append("memory_format must be auto, channels_last or contiguous")
        if not 0 <= self.max_bad_share <= 1:
            problems.append("max_bad_share must be in [0, 1]")
        if problems:
            raise CnnkitError("; ".join(problems))
