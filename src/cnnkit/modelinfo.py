"""What a saved model says about itself: architecture, class names and preprocessing.

Checkpoints carry this in their safetensors header and ONNX exports in their metadata.
The module needs no PyTorch, so an install with ONNX Runtime alone can read an export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # no PyTorch at import: an ONNX Runtime install reads an export's metadata
    import torch

CHECKPOINT_FORMAT = "cnnkit.checkpoint/1"
DESCRIBED = ("format", "model", "classes", "preprocessing")  # keys with fields of their own; the rest is ``extra``


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded image becomes a model input.

    Args:
        img_size: Side of the square model input, in pixels.
        channels: 1 (grayscale) or 3 (RGB).
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided after subtracting the mean.
        resize: ``crop`` scales the shorter side to ``img_size`` and centre-crops;
            ``squash`` scales both sides to ``img_size`` ignoring the aspect ratio;
            ``pad`` scales the longer side to ``img_size`` and pads with black.
    """

    img_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "crop"
    modality: ClassVar[str] = "image"  # not a field: image records keep the keys they always had

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One model input without the batch axis: (C, H, W)."""
        return (self.channels, self.img_size, self.img_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(
            img_size=int(values["img_size"]),
            channels=int(values["channels"]),
            mean=tuple(float(v) for v in values["mean"]),
            std=tuple(float(v) for v in values["std"]),
            resize=str(values.get("resize", "crop")),
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Turn uint8 images (B, C, H, W) into normalised float32 model inputs."""
        pixels = images.float()
        mean = pixels.new_tensor(self.mean).view(1, -1, 1, 1) * 255.0
        inv_std = 1.0 / (pixels.new_tensor(self.std).view(1, -1, 1, 1) * 255.0)
        return (pixels - mean) * inv_std


@dataclass(frozen=True)
class SeriesPreprocessing:
    """How a time series becomes a model input: read as float32 (C, L), z-normalised when the run was.

    The series are normalised once, when they are read (``cnnkit.data.series.load_series``
    with ``normalize=series_normalize``), so :meth:`normalize` of a batch only makes it
    float: a checkpoint that records this reads new series the way its training set was read.

    Args:
        channels: Channels C of each series.
        length: The training set's padded length L (the 1-D models take any length).
        series_normalize: Whether each series and channel was z-normalised over its own length.
    """

    channels: int
    length: int
    series_normalize: bool = False
    modality: ClassVar[str] = "series"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One model input without the batch axis: (C, L)."""
        return (self.channels, self.length)

    def to_dict(self) -> dict:
        return {"modality": self.modality, **asdict(self)}

    @classmethod
    def from_dict(cls, values: dict) -> SeriesPreprocessing:
        return cls(int(values["channels"]), int(values["length"]), bool(values["series_normalize"]))

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        """Series (B, C, L) as float32 model inputs: their values as stored (normalised when read)."""
        return values.float()


@dataclass(frozen=True)
class AudioPreprocessing:
    """How a WAV file becomes a model input: one clip (1, clip_samples) at ``sample_rate``, float32 waveform.

    The clip rule is :class:`cnnkit.data.wav.AudioFormat`'s (mixed down to mono, resampled,
    padded or cropped), applied when a file is decoded; the log-mel features are part of the
    model, so :meth:`normalize` of a batch only makes it float.

    Args:
        sample_rate: Of the clips, in Hz.
        clip_samples: Samples per clip.
        pad: Where shorter recordings get their zeros (``end`` or ``centre``).
        crop: Which part of a longer recording is kept (``centre`` or ``start``).
    """

    sample_rate: int
    clip_samples: int
    pad: str = "end"
    crop: str = "centre"
    modality: ClassVar[str] = "audio"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One model input without the batch axis: (1, clip_samples)."""
        return (1, self.clip_samples)

    def to_dict(self) -> dict:
        return {"modality": self.modality, **asdict(self)}

    @classmethod
    def from_dict(cls, values: dict) -> AudioPreprocessing:
        return cls(int(values["sample_rate"]), int(values["clip_samples"]), str(values["pad"]), str(values["crop"]))

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        """Waveforms (B, 1, T) as float32 model inputs, as decoded (the model computes its features)."""
        return values.float()


PREPROCESSING = {"image": Preprocessing, "series": SeriesPreprocessing, "audio": AudioPreprocessing}


def read_preprocessing(values: dict) -> Preprocessing | SeriesPreprocessing | AudioPreprocessing:
    """The preprocessing a record describes, by its ``modality`` (images for every record before series)."""
    return PREPROCESSING[values.get("modality", "image")].from_dict(values)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model: its registry name and constructor arguments."""

    name: str
    num_classes: int
    in_channels: int = 3
    img_size: int = 224
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSpec:
        return cls(
            values["name"],
            int(values["num_classes"]),
            int(values["in_channels"]),
            int(values["img_size"]),
            dict(values.get("kwargs", {})),
        )


@dataclass
class CheckpointInfo:
    """What a checkpoint or an export says about itself; ``extra`` holds the training config, metrics and versions."""

    model: ModelSpec
    classes: list[str]
    preprocessing: Preprocessing | SeriesPreprocessing | AudioPreprocessing
    extra: dict[str, Any]

    @property
    def test_time_flip(self) -> bool:
        """Whether the run predicts with test-time flip (``tta`` recorded by ``fit``; see ``tasks/classify/tta.py``)."""
        return self.extra.get("tta") == "flip"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.to_dict(),
            "classes": self.classes,
            "preprocessing": self.preprocessing.to_dict(),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CheckpointInfo:
        """The inverse of :meth:`to_dict` (the ``format`` key is the caller's to check).

        Raises KeyError, ValueError or TypeError when a field is missing or malformed.
        """
        return cls(
            model=ModelSpec.from_dict(values["model"]),
            classes=[str(name) for name in values["classes"]],
            preprocessing=read_preprocessing(values["preprocessing"]),
            extra={key: value for key, value in values.items() if key not in DESCRIBED},
        )
