"""Fine-tuning schedule: train the new head on a frozen body, then everything with discriminative learning rates.

This is fastai's ``fine_tune`` recipe (Howard & Gugger 2020, after ULMFiT, Howard & Ruder
2018): a freshly initialised head first learns on top of fixed pretrained features, so
its random gradients never reach (and scramble) the body; then the body is unfrozen at
half the learning rate, with earlier layers, whose generic edge and texture detectors
need the least change, getting 10x and 100x less than the layers near the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnkit.config import TrainConfig


@dataclass
class Optimisation:
    """What turns gradients into weight changes: the optimizer, its schedule, and the fp16 loss scaler.

    ``scaler`` is None, or disabled, outside fp16; all three are saved in the resumable state.
    """

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None


FUSED_DEVICES = ("cpu", "cuda")  # where PyTorch has a fused Adam(W) kernel for float parameters


def adam_kernel(parameters: list[nn.Parameter]) -> dict[str, bool]:
    """``{"fused": True}`` for Adam(W) where every parameter sits on a device with the fused kernel, else ``{}``.

    The default Adam updates tensor by tensor, about ten small ops each; the fused kernel does
    one pass. A step of AdamW over bcresnet's 105 tensors (9.2k weights) took 7.6 ms against
    0.7 ms fused, resnet1d's 37 (0.5M) 3.8 ms against 0.45 ms (one thread of an AMD EPYC,
    ``benchmarks/optimizer_step.py``): 5-10% of their small training steps. The numbers agree
    with the default kernel's to rounding, not bit for bit.
    """
    fusable = all(p.device.type in FUSED_DEVICES and p.dtype.is_floating_point for p in parameters)
    return {"fused": True} if parameters and fusable else {}


def build_optimizer(
    model: nn.Module, config: TrainConfig, total_steps: int, fused: bool = True
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a one-cycle schedule peaking at ``config.lr``: fast, and forgiving of the peak chosen.

    ``fused=False`` keeps PyTorch's default kernel, as a hand-written loop has it (the benchmarks' baselines).
    """
    parameters = list(model.parameters())
    kernel = adam_kernel(parameters) if fused else {}
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, **kernel)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps)
    return optimizer, scheduler


BODY_GROUPS = 2  # body split into early and late layers; with the head that is lr/200, lr/20, lr/2
LR_RATIO = 10.0


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier's parameters: the model's ``get_classifier()`` (what ``reset_classifier`` replaces)."""
    return list(model.get_classifier().parameters())


def body_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every other parameter in forward order: the model's early and late ``layer_groups()``."""
    return [p for group in model.layer_groups()[:-1] for p in group]


def set_body_frozen(model: nn.Module, frozen: bool) -> None:
    """Stop (or restart) gradients for every parameter but the head's."""
    for parameter in body_parameters(model):
        parameter.requires_grad_(not frozen)


def freeze_epochs(config: TrainConfig) -> int:
    """Epochs of the frozen-body phase: ``--freeze`` (default 1), at most the run's epochs."""
    return min(1 if config.freeze is None else config.freeze, config.epochs)


def starts_phase(config: TrainConfig, epoch: int) -> bool:
    """Whether a fine-tuning phase (frozen body, then everything) begins at ``epoch`` (1-based)."""
    return epoch in (1, freeze_epochs(config) + 1)


def finetune_optimizer(
    model: nn.Module, config: TrainConfig, epoch: int, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimizer and schedule of the phase that ``epoch`` (1-based) belongs to; (un)freezes the body to match.

    Epochs ``1..freeze`` train only the head at ``config.lr``; the rest train every layer,
    parameters split in forward order into early body, late body and head with peak rates
    ``lr/200``, ``lr/20`` and ``lr/2``. Each phase has its own one-cycle schedule. A run
    resumed mid-phase rebuilds the same optimizer here and loads its saved state into it.
    """
    freeze = freeze_epochs(config)
    if epoch <= freeze:
        set_body_frozen(model, True)
        groups, peaks, epochs = [{"params": head_parameters(model)}], [config.lr], freeze
    else:
        set_body_frozen(model, False)
        body = body_parameters(model)
        size = -(-len(body) // BODY_GROUPS)
        chunks = [body[i : i + size] for i in range(0, len(body), size)] + [head_parameters(model)]
        groups = [{"params": chunk} for chunk in chunks]
        peaks = [config.lr / 2 / LR_RATIO ** (len(chunks) - 1 - index) for index in range(len(chunks))]
        epochs = config.epochs - freeze
    for group, peak in zip(groups, peaks):
        group["lr"] = peak
    every = [parameter for group in groups for parameter in group["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay, **adam_kernel(every))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=epochs * steps_per_epoch)
    return optimizer, scheduler
