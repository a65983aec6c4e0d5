"""Fine-tuning: a new head, a frozen body first, then discriminative learning rates; the checkpoint remembers."""

from __future__ import annotations

import pytest
import torch

from cnnkit.checkpoint import read_checkpoint
from cnnkit.config import TrainConfig
from cnnkit.models.pretrained import create_pretrained
from cnnkit.training.optim import finetune_optimizer, starts_phase


def _step(model, optimizer):
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_frozen_phase_trains_only_the_new_head():
    model = create_pretrained("efficientnet_lite0", num_classes=3, img_size=32)
    assert model.classifier.out_features == 3
    config = TrainConfig(finetune=True, freeze=1, epochs=3)
    optimizer, _ = finetune_optimizer(model, config, epoch=1, steps_per_epoch=2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _step(model, optimizer)
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    assert changed == {"classifier.weight", "classifier.bias"}
    assert [starts_phase(config, epoch) for epoch in (1, 2, 3)] == [True, True, False]
    assert starts_phase(TrainConfig(finetune=True, freeze=0, epochs=3), 1)


def test_unfrozen_phase_gives_earlier_layers_lower_learning_rates():
    model = create_pretrained("efficientnet_lite0", num_classes=3, img_size=32)
    config = TrainConfig(finetune=True, freeze=1, epochs=3, lr=1e-2)
    finetune_optimizer(model, config, epoch=1, steps_per_epoch=2)
    optimizer, _ = finetune_optimizer(model, config, epoch=2, steps_per_epoch=2)
    assert all(p.requires_grad for p in model.parameters())
    groups = optimizer.param_groups
    assert [g["max_lr"] for g in groups] == pytest.approx([5e-5, 5e-4, 5e-3])
    assert groups[0]["params"][0] is model.stem[0].weight and groups[-1]["params"][0] is model.classifier.weight
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_freeze_needs_finetune():
    with pytest.raises(Exception, match="freeze"):
        TrainConfig(freeze=2).check()


@pytest.mark.slow
def test_finetune_run_keeps_the_pretrained_preprocessing(shapes_folder, tmp_path):
    import cnnkit

    run = cnnkit.train(
        data=str(shapes_folder),
        model="efficientnet_lite0",
        finetune=True,
        img_size=16,
        epochs=1,
        batch_size=8,
        out=str(tmp_path),
        verbose=False,
    )
    tensors, info = read_checkpoint(run.best_checkpoint)
    assert info.preprocessing.mean == pytest.approx((127 / 255,) * 3)
    assert info.preprocessing.std == pytest.approx((128 / 255,) * 3)
    assert info.model.name == "efficientnet_lite0" and tensors["classifier.weight"].shape == (3, 1280)
    assert cnnkit.load(run.dir).predict(str(next(shapes_folder.rglob("*.png"))))[0].label in info.classes


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [1, 2])  # at the phase boundary, and inside the unfrozen phase
def test_resumed_finetune_run_matches_the_uninterrupted_one_bit_for_bit(shapes_folder, tmp_path, stop_after):
    import cnnkit

    class StopAfter:
        def on_epoch_end(self, run_dir, row):
            if row["epoch"] == stop_after:
                raise KeyboardInterrupt  # what Ctrl-C does

    common = dict(data=str(shapes_folder), model="efficientnet_lite0", finetune=True, img_size=16, epochs=3)
    common.update(batch_size=8, out=str(tmp_path), verbose=False)
    reference = cnnkit.train(name="reference", **common)
    stopped = cnnkit.train(name="stopped", callbacks=[StopAfter()], **common)
    assert stopped.interrupted
    resumed = cnnkit.train(resume=str(stopped.dir), verbose=False)
    ours, theirs = read_checkpoint(resumed.dir / "last.safetensors")[0], read_checkpoint(reference.last_checkpoint)[0]
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    assert (resumed.dir / "steps.csv").read_text() == (reference.dir / "steps.csv").read_text()
