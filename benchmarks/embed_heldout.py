"""Retrieval on classes held out of training: an embedding run against a classification run's features.

Both runs train the same architecture on the same seen classes (the last half of the sorted
class names is held out, as ``--task embed`` does), for the same epochs, seeds and training
images: one with ``--task embed`` (normalised softmax; the embedding is the backbone's
L2-normalised pooled features under any hidden head layer, the projection and proxies a
head for the loss), one as a plain classifier whose features (``forward_embedding``: the
input of its classifier, what ``cnnkit index`` of a classification run searches) are
searched. The classifier is also read at the embed run's layer (``classify pooled``), to
show what the readout alone is worth. Each held-out test image is a query against the
other held-out test images; prints Recall@1/2/4/8 and MAP@R of each, mean ± std over the seeds.

``--dev`` is the setting designs are chosen on, without reading the test classes: the
held-out classes are dropped altogether and the seen ones split again (the last
``len // 2`` of them, sorted, become the searched validation classes, the rest are trained
on). ``--embedding`` and ``--temperature`` try the embedding run's two choices;
``--train-images`` trains both arms on the same random subset, for a loaded machine (below
10,000 images the default convnet has no hidden head layer, so the readouts coincide).

    python benchmarks/embed_heldout.py --data fashion-mnist --epochs 5 --seeds 0 1 2
    python benchmarks/embed_heldout.py --data fashion-mnist --epochs 3 --dev --seeds 0 1
    python benchmarks/embed_heldout.py --data digits --epochs 2 --seeds 0     # a smoke run in a minute
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import replace
from unittest import mock

import torch

import cnnkit
from cnnkit.checkpoint import load_model
from cnnkit.data import DataSplits
from cnnkit.models.embedding import EMBEDDING, EMBEDDINGS, TEMPERATURE, pooled_layer
from cnnkit.tasks.embed.evaluate import RECALL_AT, embed_images
from cnnkit.tasks.embed.holdout import held_out_classes, hold_out, keep_classes
from cnnkit.tasks.embed.metrics import retrieval_metrics
from cnnkit.training import fit

KEYS = [f"recall@{k}" for k in RECALL_AT] + ["map@r"]


def benchmark_splits(splits: DataSplits, dev: bool, train_images: int | None) -> DataSplits:
    """``splits`` with (``dev``) the held-out classes dropped, and (``train_images``) a seeded subset of training."""
    if dev:
        seen = [name for name in splits.classes if name not in held_out_classes(splits.classes)]
        splits = replace(
            splits,
            train=keep_classes(splits.train, seen),
            val=keep_classes(splits.val, seen),
            test=keep_classes(splits.test, seen),
            split_rule=f"{splits.split_rule}; dev: the held-out classes dropped",
        )
    if train_images is not None and train_images < len(splits.train):
        order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))[:train_images]
        splits = replace(splits, train=splits.train.subset(order.sort().values))
    return splits


def dev_held_out(classes: list[str]) -> list[str]:
    """The validation classes of the dev setting: the last ``len // 2`` of the sorted seen classes."""
    ordered = sorted(classes)
    return ordered[len(ordered) - len(ordered) // 2 :]


def run_both(common: dict, dev: bool, train_images: int | None) -> tuple[dict[str, float], ...]:
    """The searched classes' metrics: a classifier's features, the classifier at the pooled layer, an embed run."""
    prepare_data = fit.prepare_data
    searched: list[DataSplits] = []

    def prepared(config, say):
        splits = benchmark_splits(prepare_data(config, say), dev, train_images)
        held_out = dev_held_out(splits.classes) if dev else held_out_classes(splits.classes)
        searched[:] = [hold_out(splits, held_out)]
        if config.task == "embed":
            return splits  # the run holds out the same classes (held_out=) itself
        seen = searched[0]  # a classifier trains on the seen classes and is tested on them (its report needs that)
        return replace(seen, test=keep_classes(splits.test, seen.classes))

    with mock.patch.object(fit, "prepare_data", prepared):
        run = cnnkit.train(**{**common, "name": f"classify{common['seed']}"})
        test = searched[0].test
        embed = cnnkit.train(task="embed", name=f"embed{common['seed']}", held_out=",".join(test.classes), **common)
    model, info = load_model(run.best_checkpoint)
    vectors = embed_images(model, test.images, info.preprocessing, torch.device("cpu"), tta=info.test_time_flip)
    pooled = embed_images(
        PooledReadout(model), test.images, info.preprocessing, torch.device("cpu"), tta=info.test_time_flip
    )
    metrics = [retrieval_metrics(found, test.labels, RECALL_AT) for found in (vectors, pooled)]
    return metrics[0], metrics[1], embed.test.metrics


class PooledReadout(torch.nn.Module):
    """A classifier read where an embed run reads (``pooled_layer``): what the readout alone is worth."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward_embedding(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.input_of(pooled_layer(self.model) or self.model.get_classifier(), images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dev", action="store_true", help="validation classes carved out of the seen ones")
    parser.add_argument("--train-images", type=int, help="train both arms on this many images (a seeded subset)")
    parser.add_argument("--embedding", choices=EMBEDDINGS, default=EMBEDDING, help="the embed run's vector")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="of the embed run's cosine logits")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"classify features": [], "classify pooled": [], "embed": []}
    with (
        tempfile.TemporaryDirectory() as out,
        mock.patch.object(fit, "EMBEDDING", args.embedding),
        mock.patch.object(fit, "TEMPERATURE", args.temperature),
    ):
        for seed in args.seeds:
            common = dict(data=args.data, model=args.model, epochs=args.epochs, seed=seed, out=out, verbose=False)
            for rows, metrics in zip(results.values(), run_both(common, args.dev, args.train_images)):
                rows.append(metrics)
    setting = "dev: validation classes of the seen ones" if args.dev else "held-out classes' test images"
    print(
        f"{args.data}, {args.model}, {args.epochs} epochs, seeds {args.seeds}, training images "
        f"{args.train_images or 'all'}, embedding {args.embedding}, T {args.temperature}; {setting}"
    )
    print(f"{'':<18}" + "".join(f"{key:>16}" for key in KEYS))
    for name, rows in results.items():
        cells = []
        for key in KEYS:
            values = [row[key] for row in rows]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f}±{spread:.4f}")
        print(f"{name:<18}" + "".join(f"{cell:>16}" for cell in cells))


if __name__ == "__main__":
    main()
