"""Classes held out of embedding training: the split the field evaluates an embedding on.

An embedding is judged by how well it groups classes it never saw (Musgrave et al. 2020;
CUB-200 trains on its first 100 classes and tests on the other 100). The rule here is
deterministic and needs no seed: the last half of the class names in sorted order, or the
classes named by ``--held-out``. Training and validation keep only the other (seen)
classes, so no held-out image reaches a training batch or the choice of the best epoch;
the test split keeps only the held-out classes, the images Recall@K and MAP@R are
measured on.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from cnnkit.data import DataSplits, ImageSet
from cnnkit.errors import CnnkitError


def held_out_classes(classes: list[str], named: str | None = None) -> list[str]:
    """The held-out classes of ``classes``, in their label order: ``named`` (comma-separated), else the last half.

    Raises:
        CnnkitError: A named class the data lacks, or a choice that leaves fewer than two
            seen or two held-out classes (one class has nothing to tell apart).

    Example:
        >>> held_out_classes(["cat", "dog", "emu", "fox"])
        ['emu', 'fox']
    """
    if named is None:
        ordered = sorted(classes)
        chosen = set(ordered[len(ordered) // 2 :])
    else:
        chosen = {name.strip() for name in named.split(",") if name.strip()}
        unknown = sorted(chosen - set(classes))
        if unknown:
            raise CnnkitError(
                f"--held-out names class(es) the data lacks: {', '.join(unknown)}; its classes are {', '.join(classes)}"
            )
    held_out = [name for name in classes if name in chosen]
    if len(held_out) < 2 or len(classes) - len(held_out) < 2:
        raise CnnkitError(
            f"--task embed needs at least two seen and two held-out classes; {len(classes)} classes with "
            f"{len(held_out)} held out leave {len(classes) - len(held_out)} to train on (set --held-out, or use "
            "data with four or more classes)"
        )
    return held_out


def keep_classes(images: ImageSet, names: list[str]) -> ImageSet:
    """The images of the classes ``names`` (in that label order), relabelled 0..len(names)-1."""
    mapping = torch.full((len(images.classes),), -1, dtype=torch.long)
    for label, name in enumerate(names):
        mapping[images.classes.index(name)] = label
    index = (mapping[images.labels] >= 0).nonzero().flatten()
    kept = images.subset(index)
    return ImageSet(kept.images, mapping[kept.labels], list(names), kept.sources)


def hold_out(splits: DataSplits, held_out: list[str]) -> DataSplits:
    """Train and validation on the seen classes only; test on the held-out classes only.

    Raises:
        CnnkitError: No validation class with two images (Recall@1 picks the best epoch, and
            a lone image has no neighbour to find), or no test images of the held-out classes.
    """
    seen = [name for name in splits.classes if name not in held_out]
    val, test = keep_classes(splits.val, seen), keep_classes(splits.test, held_out)
    if not len(val) or int(torch.bincount(val.labels).max()) < 2:
        raise CnnkitError(
            f"--task embed picks the best epoch by Recall@1 on validation images of the seen classes, and "
            f"{splits.name} has {len(val)}, no class with two (a class needs two); raise --val-split "
            "or add a val/ folder"
        )
    if not len(test):
        raise CnnkitError(
            f"--task embed measures Recall@K on the held-out classes' test images, and {splits.name} has none of "
            f"{', '.join(held_out)}; set --test-split above 0 or add a test/ folder"
        )
    return replace(
        splits,
        train=keep_classes(splits.train, seen),
        val=val,
        test=test,
        split_rule=f"{splits.split_rule}; held out of training: {', '.join(held_out)}",
    )
