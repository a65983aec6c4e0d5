"""Retrieval on classes held out of training: an embedding run against a classification run's features.

Both runs train the same architecture on the same seen classes (the last half of the sorted
class names is held out, as ``--task embed`` does), for the same epochs and seeds: one with
``--task embed`` (normalised softmax, an L2-normalised 512-d embedding), one as a plain
classifier whose features (``forward_embedding``: the input of its classifier) are searched.
Each held-out test image is a query against the other held-out test images; prints
Recall@1/2/4/8 and MAP@R of both, mean ± std over the seeds.

    python benchmarks/embed_heldout.py --data fashion-mnist --epochs 5 --seeds 0 1 2
    python benchmarks/embed_heldout.py --data digits --epochs 2 --seeds 0     # a smoke run in a minute
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from unittest import mock

import torch

import cnnkit
from cnnkit.checkpoint import load_model
from cnnkit.tasks.embed.evaluate import RECALL_AT, embed_images
from cnnkit.tasks.embed.holdout import held_out_classes, hold_out
from cnnkit.tasks.embed.metrics import retrieval_metrics
from cnnkit.training import fit

KEYS = [f"recall@{k}" for k in RECALL_AT] + ["map@r"]


def classify_on_seen_classes(common: dict) -> dict[str, float]:
    """A classifier trained on the seen classes only; the retrieval metrics of its features on the held-out test."""
    prepare_data = fit.prepare_data

    def seen_only(config, say):  # the embedding run's split, for a task that has no held-out rule of its own
        splits = prepare_data(config, say)
        return hold_out(splits, held_out_classes(splits.classes))

    with mock.patch.object(fit, "prepare_data", seen_only):
        run = cnnkit.train(**common)
        splits = seen_only(run.config, lambda *_: None)
    model, info = load_model(run.best_checkpoint)
    vectors = embed_images(model, splits.test.images, info.preprocessing, torch.device("cpu"), tta=info.test_time_flip)
    return retrieval_metrics(vectors, splits.test.labels, RECALL_AT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"classify features": [], "embed": []}
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            common = dict(data=args.data, model=args.model, epochs=args.epochs, seed=seed, out=out, verbose=False)
            results["classify features"].append(classify_on_seen_classes({**common, "name": f"classify{seed}"}))
            results["embed"].append(cnnkit.train(task="embed", name=f"embed{seed}", **common).test.metrics)
    print(f"{args.data}, {args.model}, {args.epochs} epochs, seeds {args.seeds}; held-out classes' test images")
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
