"""What a network is made of: per layer its output shape, parameters, multiply-adds and receptive field.

For each convolution it also shows the parameters a fully connected layer mapping the
same input to the same output would need (``in C*H*W x out C*H*W`` weights plus biases):
the gap between the two is what weight sharing saves.

Receptive fields follow the data: a layer with kernel ``k``, dilation ``d`` and stride
``s`` grows its input's field by ``(k - 1) * d * jump`` and multiplies the jump (pixels
between neighbouring outputs) by ``s``. Where tensors meet outside a module (a residual
addition, an Inception concatenation) the largest field so far is used, which is exact
for both. An adaptive pool is a window of about ``input / output`` pixels (a global pool
spans the whole map); a fully connected layer sees at least the whole image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit.errors import CnnkitError

WINDOWED = (nn.Conv1d, nn.Conv2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: list[int]
    parameters: int
    mult_adds: int
    receptive_field: int
    fc_equivalent_parameters: int | None = None


@dataclass
class Summary:
    """A network's layers and totals; ``format()`` for people, ``to_dict()`` for machines."""

    model: str
    input_shape: list[int]
    layers: list[LayerRow]
    parameters: int
    trainable_parameters: int
    mult_adds: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        header = f"{'layer':<34} {'type':<18} {'output':<16} {'params':>11} {'mult-adds':>14} {'RF':>5} {'as FC':>15}"
        lines = [f"{self.model}  input {'x'.join(map(str, self.input_shape))}", header, "-" * len(header)]
        for row in self.layers:
            fc = f"{row.fc_equivalent_parameters:,}" if row.fc_equivalent_parameters is not None else ""
            lines.append(
                f"{row.name[:34]:<34} {row.type[:18]:<18} {'x'.join(map(str, row.output_shape)):<16} "
                f"{row.parameters:>11,} {row.mult_adds:>14,} {row.receptive_field:>5} {fc:>15}"
            )
        lines += [
            "-" * len(header),
            f"parameters {self.parameters:,} ({self.trainable_parameters:,} trainable); "
            f"multiply-adds per input {self.mult_adds:,}",
        ]
        return "\n".join(lines)


def _first(value: Any) -> int:
    return int(value if isinstance(value, int) else value[0])


def summarize(model: nn.Module, input_shape: tuple[int, ...], name: str = "model") -> Summary:
    """Run one zero image of ``input_shape`` (C, H, W) or (C, L) through ``model`` and record every leaf layer.

    Example:
        >>> summarize(create_model("lenet5", 10, 1, 28), (1, 28, 28)).parameters
        61706
    """
    rows: list[LayerRow] = []
    fields: dict[int, tuple[int, int, torch.Tensor]] = {}  # id(tensor) -> (field, jump, tensor kept so ids stay unique)
    widest = [(1, 1)]
    image_side = max(input_shape[1:])

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            return
        field, jump = fields[id(inputs[0])][:2] if inputs and id(inputs[0]) in fields else max(widest)
        if isinstance(module, WINDOWED):
            dilation = _first(getattr(module, "dilation", 1))
            field, jump = field + (_first(module.kernel_size) - 1) * dilation * jump, jump * _first(module.stride)
        elif isinstance(module, ADAPTIVE):  # windows of about input/output pixels, one per output position
            side_in, side_out = inputs[0].shape[-1], output.shape[-1]
            field, jump = field + (-(-side_in // side_out) - 1) * jump, jump * (side_in // side_out)
        elif isinstance(module, nn.Linear):
            field = max(field, image_side)
        fields[id(output)] = (field, jump, output)
        widest.append((field, jump))
        parameters = sum(p.numel() for p in module.parameters(recurse=False))
        mult_adds, fc_equivalent = 0, None
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            kernel = int(torch.tensor(module.kernel_size).prod())
            mult_adds = output.numel() * kernel * module.in_channels // module.groups
            fc_equivalent = inputs[0].numel() * output.numel() + (output.numel() if module.bias is not None else 0)
        elif isinstance(module, nn.Linear):
            mult_adds = module.in_features * module.out_features
        rows.append(
            LayerRow(
                names[module],
                type(module).__name__,
                list(output.shape[1:]),
                parameters,
                mult_adds,
                field,
                fc_equivalent,
            )
        )

    names = {module: path for path, module in model.named_modules()}
    device = next(model.parameters(), torch.zeros(0)).device
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [leaf.register_forward_hook(hook) for leaf in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    except RuntimeError as error:
        raise CnnkitError(f"{name} cannot take a {'x'.join(map(str, input_shape))} input: {error}") from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Summary(name, list(input_shape), rows, total, trainable, sum(row.mult_adds for row in rows))


def count_multiply_adds(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulate operations of one forward pass on one image of ``input_shape`` (C, H, W) or (C, L).

    Convolutions and fully connected layers, counted per layer by :func:`summarize` (the
    figure ``cnnkit summary`` and ``cnnkit compare`` report); pooling, activations and
    normalisation are left out, as in the papers' "mult-adds". A test holds it equal to
    PyTorch's own ``FlopCounterMode`` / 2 on the registered models.

    Example:
        >>> count_multiply_adds(create_model("lenet5", 10, 1, 28), (1, 28, 28))
        416520
    """
    return summarize(model, input_shape).mult_adds


def summarize_model(
    model: str, img_size: int | None = None, channels: int | None = None, num_classes: int | None = None
) -> Summary:
    """Summarize a built-in architecture, a layer spec (string or file), a checkpoint file or a run directory.

    Args:
        model: What to summarize.
        img_size: Input side, a series model's length or an audio model's samples (not for checkpoints, which
            record theirs). Defaults to 224 (series: 128; audio: 16000, one second at 16 kHz).
        channels: Input channels (not for checkpoints). Defaults to 3 (series and audio: 1).
        num_classes: Output classes (not for checkpoints). Defaults to 10.
    """
    from cnnkit.models import create_model, list_models, model_entry
    from cnnkit.models.spec import resolve_model

    path = Path(model).expanduser()
    if path.is_dir() or path.suffix == ".safetensors":  # a checkpoint knows its own input and classes
        from cnnkit.checkpoint import load_model

        net, info = load_model(path)
        if info.model.name in list_models(task="generate"):  # noise and class in, not an image: no layer table
            raise CnnkitError(f"{model} is a generator (a GAN); summary describes classifiers and detectors")
        prep = info.preprocessing
        given = {"--img-size": img_size, "--channels": channels, "--num-classes": num_classes}
        if any(value is not None for value in given.values()):
            raise CnnkitError(
                f"{', '.join(flag for flag, value in given.items() if value is not None)} describe an architecture; "
                f"the checkpoint {model} records its own ({'x'.join(map(str, prep.input_shape))} input, "
                f"{len(info.classes)} classes): leave them out"
            )
        return summarize(net, prep.input_shape, model)  # (C, H, W), or (C, L) for a series model
    # a detector is summarised like a classifier: its layers on one zero image (resolve_model names only those)
    name, kwargs = (model, {}) if model in list_models(task="detect") else resolve_model(model)
    spec_input = kwargs.get("input")
    if spec_input and len(spec_input) == 3:  # a spec's own input size is its default; the builder refuses others
        channels, img_size = channels or spec_input[0], img_size or spec_input[1]
    modality = model_entry(name).modality
    if modality == "audio":  # a waveform (C, samples): one second of mono 16 kHz audio unless told otherwise
        img_size, channels = img_size or 16000, channels or 1
    elif modality == "series":  # (C, L): one channel of the series builders' default length unless told otherwise
        img_size, channels = img_size or 128, channels or 1
    img_size, channels = img_size or 224, channels or 3
    net = create_model(name, num_classes or 10, channels, img_size, **kwargs)
    side = (img_size,) if modality in ("series", "audio") else (img_size, img_size)  # a series or waveform: (C, L)
    shape = tuple(spec_input) if spec_input else (channels, *side)
    return summarize(net, shape, model if name != "spec" else "spec")
