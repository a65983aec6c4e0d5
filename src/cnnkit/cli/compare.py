"""``cnnkit compare``: CNN vs MLP on images, series or audio; with ``--synthetic RUN``, do a GAN's images help?"""

from __future__ import annotations

import argparse
import json
import sys

from cnnkit.cli.flags import config_type, number_type
from cnnkit.compare.budget import SYNTHETIC_MULTIPLE, SYNTHETIC_PER_CLASS, Budget
from cnnkit.config import COUNT, TrainConfig
from cnnkit.errors import CnnkitError


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add compare to the ``cnnkit`` parser."""
    compare = commands.add_parser(
        "compare",
        help="CNN vs MLP on the same data: accuracy, cost, data efficiency, robustness",
        description="Train the default CNN and an MLP with the same budget; write a report with a verdict. With "
        "--synthetic RUN: train the default CNN on --train-size real images per class, with and without RUN's "
        "generated images, and on the generated ones alone, over --seeds seeds; say whether they paid off.",
    )
    compare.add_argument(
        "--data", default="digits", help="built-in dataset name, image folder, time series or audio (default: digits)"
    )
    compare.add_argument("--data-dir", help="folder holding a built-in dataset's files")
    compare.add_argument("--keywords", help="speech-commands: its keyword task, as train takes it (standard, yes,no)")
    compare.add_argument(
        "--synthetic",
        metavar="RUN",
        help="a generator run (cnnkit train --task generate) of --data: do its images help? (docs/compare.md)",
    )
    for flag, kind, help_text in (
        ("--epochs", config_type("epochs"), "passes over the training images, for every model"),
        ("--batch-size", config_type("batch_size"), "images per training step"),
        ("--lr", config_type("lr"), "peak learning rate of the one-cycle schedule (AdamW)"),
        ("--train-size", number_type(COUNT), "use at most this many training images (stratified)"),
        ("--test-size", number_type(COUNT), "measure on at most this many test images"),
        ("--seed", config_type("seed"), "seed for weights, data order and subsets"),
        ("--seeds", number_type(COUNT), "series, audio and --synthetic: seeds per model, from --seed on"),
    ):
        default = getattr(Budget, flag[2:].replace("-", "_"))  # series and audio: epochs, batch and lr as in train
        signal = " for images" if flag in ("--epochs", "--batch-size", "--lr") else ""
        synthetic = {
            "--epochs": f"; with --synthetic {TrainConfig.epochs}, passes over the real + synthetic set",
            "--train-size": f"; with --synthetic: K, the real images per class, {SYNTHETIC_PER_CLASS}",
        }.get(flag, "")
        compare.add_argument(flag, type=kind, help=f"{help_text} (default: {default}{signal}{synthetic})")
    compare.add_argument(
        "--synthetic-size",
        type=number_type(COUNT),
        help=f"with --synthetic: generated images per class (default: {SYNTHETIC_MULTIPLE} x K)",
    )
    compare.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    compare.add_argument("--out", default="runs", help="folder that holds the report directory (default: runs)")
    compare.add_argument("--name", help="report directory name under --out (default: compare, compare2, ...)")
    compare.add_argument("--json", action="store_true", help="print the results as JSON")


def run_compare(args: argparse.Namespace) -> int:
    from cnnkit.compare.study import compare
    from cnnkit.training.prepare import data_modality

    keys = ("epochs", "batch_size", "lr", "train_size", "test_size", "seed", "seeds")
    given = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    if args.synthetic is not None:  # K real images per class, with and without the run's generated ones
        from cnnkit.compare.synthetic import compare_synthetic

        if args.keywords is not None:
            raise CnnkitError("--keywords is for speech-commands; --synthetic compares images: leave it out")
        results, out_dir = compare_synthetic(
            args.data, args.synthetic, given, args.synthetic_size, args.out, args.name, args.data_dir, args.device, say
        )
    elif args.synthetic_size is not None:
        raise CnnkitError("--synthetic-size is for --synthetic RUN: give the generator run, or leave it out")
    elif (modality := data_modality(args.data)) != "image":  # the default CNN of the kind vs Wang et al.'s MLP
        from cnnkit.compare.signals import compare_signals

        results, out_dir = compare_signals(
            args.data, modality, given, args.out, args.name, args.data_dir, args.device, say, args.keywords
        )
    elif args.keywords is not None:
        raise CnnkitError(f"--keywords: for speech-commands only; --data {args.data} holds images, leave it out")
    elif "seeds" in given:
        raise CnnkitError(f"--seeds is for time series and audio; --data {args.data} holds images: give --seed")
    else:
        results, out_dir = compare(args.data, Budget(**given), args.out, args.name, args.data_dir, args.device, say)
    if args.json:
        print(json.dumps(results))
    else:
        print("\n".join(["", *results["verdict"], "", f"report written to {out_dir / 'report.html'}"]))
    return 0


COMMANDS = {"compare": run_compare}
