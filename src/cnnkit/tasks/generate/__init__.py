"""The generate task: a class-conditional GAN's defaults, quality figures, sampling and run detection.

The task's facts, without PyTorch at import: the settings ``cnnkit train --task generate`` uses
where the command leaves them (:data:`DEFAULTS`, the GAN's own constants below), and
:func:`is_generation_run`, which tells a generator's run from any other by its checkpoint header.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_GENERATOR = "dcgan"  # models/gan.py: the one generator registered today

# Run settings (TrainConfig keys) where the caller gives none; config.yaml records them.
DEFAULTS = {"model": DEFAULT_GENERATOR, "epochs": 30, "batch_size": 64, "lr": 2e-4, "weight_decay": 0.0}

# Image side per data: the digits' own 8 px; 28 px MNIST-style sets and CIFAR-10 at 32, the nearest power of two
# the generator's 4x4 start doubles to; image folders at 32 too (cheap on a CPU; pass --img-size up to 128).
IMG_SIZES = {"digits": 8}
DEFAULT_IMG_SIZE = 32

# The GAN's own constants, not run settings:
D_LR_RATIO = 2.0  # discriminator lr = this x the generator's (--lr): TTUR (Heusel et al. 2017)
BETAS = (0.0, 0.9)  # Adam's betas for both networks: SNGAN's with hinge loss (Miyato et al. 2018)
N_DIS = 1  # discriminator steps per generator step
EMA_DECAY = 0.999  # of the generator's weights, ramped up from 0 over the first steps (see training/generate.py)
EMA_STATISTICS_BATCHES = 4  # fixed-noise batches that recompute the EMA generator's batch-norm statistics each epoch

# Quality figures per epoch (tasks/generate/quality.py): generated images per class, against the validation images.
QUALITY_PER_CLASS = 100
QUALITY_SEED = 0  # one noise draw for every epoch, so their figures differ by the weights alone
GRID_COLUMNS = 8  # sample grid: one row per class, the same GRID_COLUMNS noise vectors in every row

# The judge: a classifier trained on the same real training split (RUN/judge/), whose features the
# quality figures use. convnet for a few epochs: on the digits it trains in seconds on one thread.
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
