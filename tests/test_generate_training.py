"""The class-conditional GAN (``models/gan.py``) and its training (``cnnkit train --task generate``)."""

from __future__ import annotations

import pytest
import torch

from cnnkit.errors import CnnkitError
from cnnkit.models import create_model, list_models, model_entry
from cnnkit.models.gan import ConditionalGAN, from_uint8, latent_noise, to_uint8


@pytest.mark.parametrize(("channels", "img_size"), [(1, 8), (3, 32)])
def test_dcgan_shapes_follow_classes_channels_and_size(channels, img_size):
    gan = create_model("dcgan", num_classes=3, in_channels=channels, img_size=img_size, width=8).eval()
    noise, labels = latent_noise(4, gan.latent_dim, seed=0), torch.tensor([0, 1, 2, 0])
    images = gan(noise, labels)
    assert isinstance(gan, ConditionalGAN) and images.shape == (4, channels, img_size, img_size)
    assert images.dtype == torch.float32 and images.abs().max() <= 1.0
    assert gan.discriminator(images, labels).shape == (4,) and gan.generator(noise, labels).shape == images.shape
    assert (gan.num_classes, gan.channels, gan.img_size) == (3, channels, img_size)


def test_default_epochs_give_a_small_set_the_steps_of_the_digits():
    from cnnkit.tasks.generate import DEFAULTS, MIN_STEPS, default_epochs

    assert default_epochs(1259, 64) == DEFAULTS["epochs"] == 40  # the digits: 20 steps an epoch already make 800
    assert default_epochs(54000, 64) == 40  # a large set is never cut below the default
    assert default_epochs(100, 64) == 400  # 10 per class: 2 steps an epoch, 800 steps in all
    assert default_epochs(100, 64) * 2 >= MIN_STEPS and default_epochs(500, 64) * 8 >= MIN_STEPS
    assert default_epochs(3, 64) == MIN_STEPS  # one step an epoch: as many epochs as steps


def test_dcgan_is_registered_for_the_generate_task_only():
    assert list_models(task="generate") == ["dcgan"] and "dcgan" not in list_models()
    assert model_entry("dcgan").task == "generate"


def test_latent_noise_same_seed_same_images_and_other_seed_others():
    gan = create_model("dcgan", num_classes=2, in_channels=1, img_size=8, width=8).eval()
    first, again, other = (latent_noise(3, gan.latent_dim, seed) for seed in (7, 7, 8))
    assert first.dtype == torch.float32 and torch.equal(first, again) and not torch.equal(first, other)
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        assert torch.equal(gan(first, labels), gan(again, labels))


def test_dcgan_forward_runs_the_ema_generator_which_stays_in_eval():
    gan = create_model("dcgan", num_classes=2, in_channels=1, img_size=8, width=8).train()
    assert gan.generator.training and gan.discriminator.training and not gan.generator_ema.training
    with torch.no_grad():
        gan.generator_ema.to_image.bias.fill_(1e4)  # the EMA copy alone now saturates to +1
    assert torch.equal(gan(latent_noise(2, gan.latent_dim, 0), torch.tensor([0, 1])), torch.ones(2, 1, 8, 8))
    assert not any(parameter.requires_grad for parameter in gan.generator_ema.parameters())


def test_dcgan_update_ema_moves_towards_the_generator():
    gan = create_model("dcgan", num_classes=2, in_channels=1, img_size=8, width=8)
    live, average = gan.generator.to_image.bias, gan.generator_ema.to_image.bias
    with torch.no_grad():
        live.fill_(1.0)
        average.fill_(0.0)
    gan.update_ema(decay=0.75)
    assert torch.allclose(average, torch.full_like(average, 0.25))


def test_uint8_round_trip_and_matches_the_run_preprocessing():
    from cnnkit.modelinfo import Preprocessing

    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(to_uint8(from_uint8(pixels)), pixels)
    assert torch.allclose(from_uint8(pixels), Preprocessing(16, 1, (0.5,), (0.5,)).normalize(pixels), atol=1e-6)
    assert torch.equal(to_uint8(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0])), torch.tensor([0, 0, 128, 255, 255]))


@pytest.mark.parametrize("img_size", [28, 4, 256])
def test_dcgan_refuses_a_size_that_is_not_a_power_of_two_from_8_to_128(img_size):
    with pytest.raises(CnnkitError, match="power of two"):
        create_model("dcgan", num_classes=2, in_channels=1, img_size=img_size)


def test_dcgan_ema_statistics_are_measured_for_the_averaged_weights():
    gan = create_model("dcgan", num_classes=2, in_channels=1, img_size=8, width=8)
    noise, labels = latent_noise(32, gan.latent_dim, seed=3), torch.arange(32) % 2
    gan.recompute_ema_statistics(noise, labels, batch_size=32)
    norm = gan.generator_ema.first_norm.norm
    inputs = torch.cat([noise, gan.generator_ema.embed(labels)], 1)
    projected = gan.generator_ema.project(inputs).unflatten(1, (-1, 4, 4))  # (32, C, 4, 4): what the norm saw
    assert torch.allclose(norm.running_mean, projected.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not gan.generator_ema.training and norm.momentum == 0.1


# --- training: cnnkit train --task generate ---------------------------------------------------------------------

RUN_FILES = ("config.yaml", "split.json", "environment.json", "metrics.csv", "best.safetensors", "last.safetensors")
RUN_FILES += ("state.safetensors", "curves.png", "results.json", "judge/best.safetensors", "samples/epoch_002.png")


@pytest.mark.slow
def test_generate_run_writes_its_files_and_a_loadable_generator(generate_run):
    import json

    from PIL import Image

    from cnnkit.checkpoint import load_model
    from cnnkit.tasks.generate import GRID_COLUMNS, is_generation_run

    assert all((generate_run / name).is_file() for name in RUN_FILES), sorted(p.name for p in generate_run.iterdir())
    header = (generate_run / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,d_loss,g_loss,frechet,kid,precision,recall,class_accuracy,seconds"
    model, info = load_model(generate_run / "best.safetensors")
    assert (
        isinstance(model, ConditionalGAN) and info.model.name == "dcgan" and info.classes == [str(i) for i in range(10)]
    )
    assert info.preprocessing.mean == (0.5,) and info.preprocessing.std == (0.5,) and info.extra["task"] == "generate"
    assert is_generation_run(generate_run) and not is_generation_run(generate_run / "judge")
    split, judged = (json.loads((path / "split.json").read_text()) for path in (generate_run, generate_run / "judge"))
    assert all(split[name] == judged[name] for name in ("train", "val", "test"))  # the judge saw the same real images
    width, height = Image.open(generate_run / "samples" / "epoch_001.png").size
    assert height == 10 * 32 and width > GRID_COLUMNS * 32  # one row per class, 8 px digits enlarged to 32


@pytest.mark.slow
def test_generate_run_keeps_the_epoch_of_lowest_frechet_distance(generate_run):
    import csv
    import json

    from cnnkit.checkpoint import read_checkpoint

    rows = list(csv.DictReader((generate_run / "metrics.csv").read_text().splitlines()))
    lowest = min(rows, key=lambda row: float(row["frechet"]))
    results = json.loads((generate_run / "results.json").read_text())
    assert results["best_epoch"] == int(lowest["epoch"]) and "Fréchet" in results["selected_by"]
    _, info = read_checkpoint(generate_run / "best.safetensors")
    assert info.extra["epoch"] == int(lowest["epoch"]) and info.extra["metrics"]["frechet"] == float(lowest["frechet"])
    assert set(results["test"]) >= {"frechet", "kid", "precision", "recall", "class_accuracy"}


@pytest.mark.slow
def test_generate_run_stopped_mid_epoch_resumes_bit_for_bit(generate_run, tmp_path, one_thread):
    import csv
    import shutil

    import cnnkit
    from cnnkit.safeload import load_tensors

    stopped = tmp_path / "stopped"  # generate_run as it was one batch into epoch 2 (of 3), its judge trained
    shutil.copytree(generate_run, stopped)
    shutil.copy(generate_run.parent / "mid_epoch_state.safetensors", stopped / "state.safetensors")
    (stopped / "last.safetensors").unlink()
    saved_at = []

    class RecordSteps:
        def on_checkpoint(self, run_dir, path, epoch, step):
            saved_at.append(step)

    # one_thread: the fixture trained on one thread too, so the replayed steps sum in the same order
    resumed = cnnkit.train(resume=stopped, verbose=False, callbacks=[RecordSteps()])
    assert not resumed.interrupted and len(resumed.history) == 2
    assert saved_at[0] == 6  # from step 4 (the state's) to epoch 2's end; started over, it would save at step 2
    for name in ("last.safetensors", "state.safetensors"):  # both networks, the EMA, best weights, moments, RNG
        ours, theirs = load_tensors(generate_run / name), load_tensors(stopped / name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours), name
    assert any(key.startswith("best.") for key in ours) and any(key.startswith("optimizer.") for key in ours)
    whole = list(csv.DictReader((generate_run / "metrics.csv").read_text().splitlines()))
    for key in ("d_loss", "frechet", "class_accuracy"):  # the generator's mean loss covers the resumed steps only
        assert [row[key] for row in resumed.history] == [float(row[key]) for row in whole]


def _class_folder(root, sizes_by_class):
    from PIL import Image

    for name, sizes in sizes_by_class.items():
        (root / name).mkdir(parents=True)
        for index, size in enumerate(sizes):
            Image.new("L", size, 40 * index).save(root / name / f"{index}.png")
    return root


def test_generate_refuses_a_single_class_folder_before_any_run_dir(tmp_path):
    import cnnkit

    data = _class_folder(tmp_path / "one", {"cat": [(8, 8)] * 4})
    with pytest.raises(CnnkitError, match="a conditional model needs at least 2 classes"):
        cnnkit.train(task="generate", data=str(data), out=str(tmp_path / "runs"), verbose=False)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model": "convnet"}, "--model convnet is not a generator; --task generate trains one of: dcgan"),
        ({"pretrained": True}, "--pretrained: not used by --task generate"),
        ({"finetune": True, "tta": "flip"}, "--finetune, --tta: not used by --task generate"),
        ({"img_size": 28}, "--img-size 28: dcgan makes images of side 8, 16, 32, 64, 128"),
        ({"precision": "fp16"}, "--precision fp16"),
        ({"weight_decay": 1e-4, "sample_rate": 8000}, "--weight-decay, --sample-rate: not used by --task generate"),
    ],
)
def test_generate_refuses_settings_that_mean_nothing_for_a_gan(tmp_path, settings, message):
    import cnnkit

    with pytest.raises(CnnkitError, match=message.replace("(", r"\(")):
        cnnkit.train(task="generate", data="digits", out=str(tmp_path / "runs"), verbose=False, **settings)
    assert not (tmp_path / "runs").exists()


def test_generate_refuses_time_series(tmp_path):
    import numpy as np

    import cnnkit

    np.save(tmp_path / "X.npy", np.zeros((8, 1, 16), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.arange(8) % 2)
    with pytest.raises(CnnkitError, match=r"--task generate trains on images, and --data .* holds time series"):
        cnnkit.train(task="generate", data=str(tmp_path), out=str(tmp_path / "runs"), verbose=False)


def test_generate_resizes_mixed_image_sizes_by_the_cache_rule(tmp_path):
    from cnnkit.config import TrainConfig
    from cnnkit.training.generate import prepare_generation

    data = _class_folder(tmp_path / "mixed", {"a": [(8, 8), (20, 12)] * 3, "b": [(12, 20), (16, 16)] * 3})
    config = TrainConfig(task="generate", data=str(data), model="dcgan", img_size=8, val_split=0.0, test_split=0.0)
    prepared = prepare_generation(config, None, lambda *_: None)
    assert prepared.splits.train.images.shape == (12, 1, 8, 8) and prepared.spec.img_size == 8
    assert prepared.preprocessing.resize == "crop" and prepared.spec.num_classes == 2


@pytest.mark.parametrize(("img_size", "width"), [(8, 64), (32, 32)])
def test_generate_records_the_width_chosen_for_the_image_side(tmp_path, img_size, width):
    from cnnkit.config import TrainConfig
    from cnnkit.models import build
    from cnnkit.training.generate import prepare_generation

    data = _class_folder(tmp_path / "images", {"a": [(8, 8)] * 4, "b": [(8, 8)] * 4})
    config = TrainConfig(task="generate", data=str(data), model="dcgan", img_size=img_size, val_split=0, test_split=0)
    spec = prepare_generation(config, None, lambda *_: None).spec
    assert spec.kwargs == {"width": width}  # recorded, so a later default cannot change how the run rebuilds
    assert build(spec).generator.to_image.in_channels == width
    unrecorded = create_model("dcgan", num_classes=2, in_channels=1, img_size=32)  # checkpoints without a width
    assert unrecorded.generator.to_image.in_channels == 64


def test_translate_shifts_each_image_by_whole_pixels_and_fills_black():
    from cnnkit.training.generate_epoch import translate

    images = torch.rand(16, 1, 8, 8) * 2 - 1
    shifted = translate(images, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and torch.equal(
        translate(images, torch.Generator().manual_seed(0)), shifted
    )  # the run's generator draws the shifts: a resumed run draws the same
    for image, moved in zip(images, shifted):  # each one is the original moved by at most 1 px (1/8 of 8)
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(
                moved[0, max(dy, 0) : 8 + min(dy, 0), max(dx, 0) : 8 + min(dx, 0)],
                image[0, max(-dy, 0) : 8 + min(-dy, 0), max(-dx, 0) : 8 + min(-dx, 0)],
            )
        ]
        assert matches
        dy, dx = matches[0]
        border = torch.ones(8, 8, dtype=torch.bool)
        border[max(dy, 0) : 8 + min(dy, 0), max(dx, 0) : 8 + min(dx, 0)] = False
        assert (moved[0][border] == -1).all()


def _tiny_set(count=8, value=None):
    from cnnkit.data.imageset import ImageSet

    images = torch.randint(0, 256, (count, 1, 8, 8), dtype=torch.uint8)
    return ImageSet(images, torch.arange(count) % 2, ["a", "b"], [f"{i}.png" for i in range(count)])


def test_train_generation_epoch_updates_both_networks_and_the_ema():
    from cnnkit.modelinfo import Preprocessing
    from cnnkit.training.generate_epoch import build_gan_optimizer, train_generation_epoch
    from cnnkit.training.loop import StepSettings
    from cnnkit.training.resume import EpochTally

    torch.manual_seed(0)
    gan = create_model("dcgan", num_classes=2, in_channels=1, img_size=8, width=8)
    before = {name: tensor.clone() for name, tensor in gan.state_dict().items()}
    optimizer = build_gan_optimizer(gan, 1e-3, 4e-3, (0.0, 0.9))
    steps = []
    d_loss, g_loss = train_generation_epoch(
        gan, _tiny_set(), Preprocessing(8, 1, (0.5,), (0.5,)), optimizer, torch.device("cpu"),
        torch.Generator().manual_seed(0), StepSettings(4), 0, EpochTally(), steps.append,
    )  # fmt: skip
    assert steps == [False, False] and d_loss > 0 and g_loss == g_loss
    changed = {name.split(".")[0] for name, tensor in gan.state_dict().items() if not torch.equal(tensor, before[name])}
    assert changed == {"generator", "generator_ema", "discriminator"}
    assert [group["lr"] for group in optimizer.param_groups] == [1e-3, 4e-3]


def test_ema_decay_ramps_up_to_its_constant():
    from cnnkit.tasks.generate import EMA_DECAY
    from cnnkit.training.generate_epoch import ema_decay

    assert ema_decay(0) == 0.1 and ema_decay(90) == 0.91 and ema_decay(10**7) == EMA_DECAY


@pytest.mark.slow
def test_models_task_generate_lists_the_generator(capsys):
    import json

    from cnnkit.cli.main import main

    assert main(["models", "--task", "generate", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["name"], row["task"], row["modality"]) for row in rows] == [("dcgan", "generate", "image")]
    assert rows[0]["parameters"] > 1_000_000  # generator, its EMA copy and the discriminator at 32 px
