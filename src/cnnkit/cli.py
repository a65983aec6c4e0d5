"""The ``cnnkit`` command: parse arguments and call one library function per command.

Every user mistake surfaces as a :class:`CnnkitError` and is printed as one line with
exit code 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cnnkit import __version__
from cnnkit.config import TrainConfig
from cnnkit.errors import CnnkitError

PREVIEW_ROWS = 20


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig key; flags not given leave the config value alone."""
    for spec in dataclasses.fields(TrainConfig):
        kind = int if "int" in str(spec.type) else float if "float" in str(spec.type) else str
        default = spec.default
        if spec.type == "bool":
            parser.add_argument(
                f"--{spec.name}",
                dest=spec.name,
                action="store_true",
                default=argparse.SUPPRESS,
                help=spec.metadata["help"],
            )
            continue
        parser.add_argument(
            f"--{spec.name.replace('_', '-')}",
            dest=spec.name,
            type=kind,
            default=argparse.SUPPRESS,
            help=f"{spec.metadata['help']} (default: {default})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnkit", description="Train, understand and deploy CNNs.")
    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a model (default: the built-in digits)",
        description="Train a model and write a run directory under --out.",
    )
    train.add_argument("--config", type=Path, help="YAML file of config keys; flags override it")
    _add_config_flags(train)

    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy, per-class report and confusion matrix",
        description="Evaluate a trained model on labelled data.",
    )
    evaluate.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    evaluate.add_argument("--data", help="dataset name or folder (default: the data the model was trained on)")
    evaluate.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="split to evaluate (default: test)"
    )
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")

    predict = commands.add_parser(
        "predict",
        help="top-k labels for images or folders of images",
        description="Predict labels; a folder writes predictions.csv under --out.",
    )
    predict.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    predict.add_argument("--top-k", type=int, default=3, help="labels to show per image (default: 3)")
    predict.add_argument("--json", action="store_true", help="print one JSON record per image")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    predict.add_argument("--out", default="runs", help="folder for the CSV of a folder's predictions (default: runs)")
    predict.add_argument("--name", help="run directory name under --out (default: predict, predict2, ...)")
    predict.add_argument("--pretrained", action="store_true", help="MODEL is an architecture: use its ImageNet weights")
    predict.add_argument("--weights", help="MODEL is an architecture: its ImageNet weights from this local file")

    commands.add_parser("models", help="list the available architectures")

    summary = commands.add_parser(
        "summary",
        help="layers, shapes, parameters, multiply-adds, receptive fields",
        description="Per layer: output shape, parameters, multiply-adds, receptive field and, for convolutions, "
        "the parameters a fully connected layer of the same sizes would need.",
    )
    summary.add_argument("model", metavar="MODEL", help="architecture name, layer spec (string or file), or checkpoint")
    summary.add_argument("--img-size", type=int, help="input side (default: 224; checkpoints use their own)")
    summary.add_argument("--channels", type=int, help="input channels (default: 3)")
    summary.add_argument("--num-classes", type=int, help="output classes (default: 10)")
    summary.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def run_train(args: argparse.Namespace) -> int:
    from cnnkit.training import fit

    options = {key: value for key, value in vars(args).items() if key not in ("command", "config")}
    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    run = fit(config, **options)
    return 130 if run.interrupted else 0


def run_evaluate(args: argparse.Namespace) -> int:
    from cnnkit.predict import load

    classifier = load(args.checkpoint, device=args.device)
    result, skipped = classifier.evaluate(args.data, args.split)
    for item in skipped:
        print(f"warning: skipped {item.path}: {item.reason}", file=sys.stderr)
    if result.count == 0:
        raise CnnkitError(f"the {args.split} split of {args.data or 'the training data'} holds no images")
    print(json.dumps({"split": args.split, **result.to_dict()}) if args.json else result.format())
    return 0


def _expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], bool]:
    """Files as given, folders expanded to their images (recursively, sorted); also whether a folder was seen."""
    from cnnkit.data.decode import IMAGE_EXTENSIONS

    paths, saw_folder = [], False
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            saw_folder = True
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise CnnkitError(f"no images found in folder {path}")
            paths += found
        elif path.exists():
            paths.append(path)
        else:
            raise CnnkitError(f"image not found: {path}")
    return paths, saw_folder


def run_predict(args: argparse.Namespace) -> int:
    from cnnkit.checkpoint import new_run_dir
    from cnnkit.predict import load

    if args.top_k < 1:
        raise CnnkitError("--top-k must be at least 1")
    classifier = load(args.checkpoint, device=args.device, pretrained=args.pretrained, weights=args.weights)
    paths, saw_folder = _expand_inputs(args.inputs)
    predictions, failures = classifier.predict_files(paths, args.top_k)
    if len(paths) == 1 and failures:
        raise CnnkitError(failures[0][1])
    for path, reason in failures:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    if not predictions:
        raise CnnkitError(f"none of the {len(paths)} images could be read; see the warnings above")
    if args.json:
        for prediction in predictions:
            print(json.dumps(prediction.to_dict()))
    else:
        for prediction in predictions[: PREVIEW_ROWS if saw_folder else None]:
            ranked = "  ".join(f"{label} ({p:.1%})" for label, p in zip(prediction.labels, prediction.probabilities))
            print(f"{prediction.source}  {ranked}")
        if saw_folder and len(predictions) > PREVIEW_ROWS:
            print(f"... {len(predictions) - PREVIEW_ROWS} more")
    if saw_folder:
        csv_path = new_run_dir(args.out, args.name, "predict") / "predictions.csv"
        with open(csv_path, "w", newline="") as stream:
            writer = csv.writer(stream)
            k = len(predictions[0].labels)
            writer.writerow(
                ["path", *[f"{column}_{rank}" for rank in range(1, k + 1) for column in ("label", "probability")]]
            )
            for prediction in predictions:
                writer.writerow(
                    [
                        prediction.source,
                        *[
                            value
                            for pair in zip(prediction.labels, (f"{p:.6f}" for p in prediction.probabilities))
                            for value in pair
                        ],
                    ]
                )
        print(f"{len(predictions)} predictions written to {csv_path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def run_models(_: argparse.Namespace) -> int:
    from cnnkit.models import create_model, list_models

    print(f"{'model':<20} {'parameters':>12}   (10 classes, 3x32x32 input)")
    for name in list_models():
        parameters = sum(p.numel() for p in create_model(name, num_classes=10, in_channels=3, img_size=32).parameters())
        print(f"{name:<20} {parameters:>12,}")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from cnnkit.summary import summarize_model

    summary = summarize_model(args.model, args.img_size, args.channels, args.num_classes)
    print(json.dumps(summary.to_dict()) if args.json else summary.format())
    return 0


COMMANDS = {
    "train": run_train,
    "evaluate": run_evaluate,
    "predict": run_predict,
    "models": run_models,
    "summary": run_summary,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CnnkitError as error:
        print(f"cnnkit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ncnnkit: interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        print(f"cnnkit: error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
