"""The training budget ``cnnkit compare`` gives every model (no heavy imports: the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass

# compare --synthetic: K, the real images per class where --train-size is not given (few labelled images, where
# synthetic ones are said to help), and the generated images per class as a multiple of K.
SYNTHETIC_PER_CLASS = 10
SYNTHETIC_MULTIPLE = 10


@dataclass
class Budget:
    """What every model in the study gets: the same epochs, batch size, learning rate and images.

    Args:
        epochs: Passes over the training images. Defaults to 10.
        batch_size: Images per step. Defaults to 64.
        lr: Peak learning rate of the one-cycle AdamW schedule. Defaults to 3e-3.
        train_size: Use at most this many training images (stratified). Defaults to 10000.
        test_size: Measure on at most this many test images. Defaults to 2000.
        seed: Seed for weights, data order and subsets. Defaults to 0.
        seeds: Series and audio: train each model with this many seeds, ``seed`` onwards, and report
            the mean and spread (their sets are small: one seed's accuracy moves by points). Defaults to 3.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    train_size: int = 10000
    test_size: int = 2000
    seed: int = 0
    seeds: int = 3
