"""The generate task: a class-conditional GAN's defaults, quality figures, sampling and run detection.

The task's facts, without PyTorch at import: the settings ``cnnkit train --task generate`` uses
where the command leaves them (:data:`DEFAULTS`, the GAN's own constants below), and
:func:`is_generation_run`, which tells a generator's run from any other by its checkpoint header.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

DEFAULT_GENERATOR = "dcgan"  # models/gan.py: the one generator registered today

# How the defaults below were chosen: short runs on the digits (1 thread, seed 0, nice'd on a shared 2-core
# machine; accuracy-type figures only, nothing timed), judged by the best epoch's validation Fréchet distance on
# the judge's features, the judge's accuracy on the generated images and recall. With the model as it is:
#   lr 1e-4, discriminator 4e-4, betas (0, 0.9), 40 epochs: Fréchet 220.7, accuracy 99.0%, recall 0.21 (epoch 32)
#   lr 2e-4, discriminator 4e-4, betas (0, 0.9), 40 epochs: Fréchet 219.5, accuracy 99.7%, recall 0.15 (epoch 39)
#   lr 1e-4, discriminator 4e-4, batch 32 instead of 64:    Fréchet 274.3, accuracy 89.9%, recall 0.13 (epoch 37)
# and the better recall decided. Earlier variants (same recipe, model under change) with betas (0.5, 0.999) or a
# discriminator at 2x the lr, or N_DIS 2, all made one image per class (recall <= 0.08). Not measured beyond the
# digits: a 54,000-image set such as Fashion-MNIST makes each epoch 40x longer, so pass --epochs there.
# Each run: torch.set_num_threads(1); cnnkit.train(task="generate", data="digits", epochs=40, lr=LR), with
# D_LR_RATIO and BETAS set on cnnkit.training.generate (and N_DIS on cnnkit.training.generate_epoch) beforehand.

# Run settings (TrainConfig keys) where the caller gives none; config.yaml records them.
DEFAULTS = {"model": DEFAULT_GENERATOR, "epochs": 40, "batch_size": 64, "lr": 1e-4, "weight_decay": 0.0}

# Where --epochs is not given, a small set gets the optimizer steps the digits' 40 epochs make (20 steps each):
# with 10 images per class (100 images, 2 steps an epoch) 40 epochs were 80 steps, and the generator had not
# learnt the classes (the judge recognised 8.6% of its images); 400 epochs, 800 steps, reached 91.7%
# (docs/compare.md, "the scarce-label case"). Larger sets keep 40 epochs: they already make more steps.
MIN_STEPS = 800


def default_epochs(train_images: int, batch_size: int) -> int:
    """``DEFAULTS["epochs"]``, or more where so many epochs of ``train_images`` make under ``MIN_STEPS`` steps."""
    steps_per_epoch = max(1, math.ceil(train_images / batch_size))  # the last, partial batch is a step too
    return max(DEFAULTS["epochs"], math.ceil(MIN_STEPS / steps_per_epoch))


# The generator's and discriminator's width (channels at full resolution, models/gan.py) by image side, recorded
# with the run. Where a step is cheap, the wider networks: on the digits (8 px, the defaults above, 1 thread, seed 0)
# width 64 reached Fréchet 220.7, judge accuracy 99.0%, recall 0.21 in 136 s of epochs, width 32 only 280.7, 97.6%,
# 0.12 in 105 s. At 32 px a step of width 64 costs 3.2-4x one of width 32 (1.62 against 0.40 s a batch of 64, two
# cores of an AVX-512 Xeon, fp32; reruns of benchmarks/gan_step.py vary by up to a quarter), and on 8,400
# Fashion-MNIST images (1 thread, seed 0) width 32 was ahead both
# after the same steps (Fréchet 480 against 672 after 3 epochs) and in the same time (418.8 after 10 epochs, 1,235 s,
# against 672 after 3, 1,330 s). Not measured at 64 or 128 px, where width 32 keeps a step's cost nearest.
WIDE_UP_TO = 16  # image side up to which the width is 64; 32 beyond


def default_width(img_size: int) -> int:
    """The dcgan width ``cnnkit train --task generate`` uses at ``img_size`` (the measurements above)."""
    return 64 if img_size <= WIDE_UP_TO else 32


# Image side per data: the digits' own 8 px; 28 px MNIST-style sets and CIFAR-10 at 32, the nearest power of two
# the generator's 4x4 start doubles to; image folders at 32 too (cheap on a CPU; pass --img-size up to 128).
IMG_SIZES = {"digits": 8}
DEFAULT_IMG_SIZE = 32

# The GAN's own constants, not run settings:
D_LR_RATIO = 4.0  # discriminator lr = this x the generator's (--lr): TTUR (Heusel et al. 2017), BigGAN's ratio
BETAS = (0.0, 0.9)  # Adam's betas for both networks: SNGAN's and BigGAN's with hinge loss (Miyato et al. 2018)
N_DIS = 1  # discriminator steps per generator step
EMA_DECAY = 0.999  # not tuned: averages about the last 1,000 generator steps, a digits run's whole length
EMA_STATISTICS_BATCHES = 4  # fixed-noise batches that recompute the EMA generator's batch-norm statistics each epoch

# Quality figures per epoch (tasks/generate/quality.py): generated images per class, against the validation images.
QUALITY_PER_CLASS = 100
QUALITY_SEED = 0  # one noise draw for every epoch, so their figures differ by the weights alone
GRID_COLUMNS = 8  # sample grid: one row per class, the same GRID_COLUMNS noise vectors in every row

# The judge: a classifier trained on the same real training split (RUN/judge/), whose features the
# quality figures use. cnnkit's default convnet for 5 epochs: on the digits 98.3% test accuracy in about 8 s
# (nice'd, shared machine), so its features separate the classes; on Fashion-MNIST 5 epochs of 54,000 images
# stay a few minutes, a small share of the GAN's own training, where classification's 20 would not.
JUDGE_MODEL = "convnet"
JUDGE_EPOCHS = 5

SELECTED_BY = "val_frechet: Fréchet distance on the judge's features, lowest best"


def is_generation_run(path: str | Path) -> bool:
    """Whether ``path`` (a run directory or a checkpoint) holds a generator, read from the header alone.

    False for anything that is not a readable cnnkit checkpoint; a caller that needs one says why.
    """
    from cnnkit.checkpoint import METADATA_KEY, resolve_checkpoint
    from cnnkit.errors import CnnkitError
    from cnnkit.models import model_entry
    from cnnkit.safeload import read_header

    try:
        _, metadata = read_header(resolve_checkpoint(path))
        return model_entry(json.loads(metadata[METADATA_KEY])["model"]["name"]).task == "generate"
    except (CnnkitError, KeyError, ValueError, TypeError):
        return False
