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
from cnnkit.cli import deploy as cli_deploy
from cnnkit.compare.budget import Budget
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
    train.add_argument(
        "--resume", metavar="RUN", help="continue RUN exactly where it stopped; --epochs N extends a finished run"
    )
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
    evaluate.add_argument("--report", action="store_true", help="also write an HTML report under --out")
    evaluate.add_argument("--out", default="runs", help="folder that holds the report directory (default: runs)")
    evaluate.add_argument("--name", help="report directory name under --out (default: evaluate, evaluate2, ...)")

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

    check = commands.add_parser(
        "check",
        help="scan an image folder for unreadable, misnamed, duplicate or unsafe files",
        description="Scan an image folder the way training does and report every problem; files are only read.",
    )
    check.add_argument("data", metavar="DATA")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--max-bad-share", type=float, default=0.01, help="exit 1 when more than this share is bad (default: 0.01)"
    )
    check.add_argument("--no-cache", action="store_true", help="rescan even if the files did not change")
    explain = commands.add_parser(
        "explain",
        help="Grad-CAM, saliency, feature maps and filters for images",
        description="Show what a model looks at: heatmaps, feature maps and filters, tied together in index.html.",
    )
    explain.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    explain.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    explain.add_argument("--top-k", type=int, default=3, help="classes to explain per image (default: 3)")
    explain.add_argument("--class", dest="class_name", help="explain this class instead of the top-k")
    explain.add_argument("--layer", help="target layer name (default: the last convolution)")
    explain.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    explain.add_argument("--out", default="runs", help="folder that holds the output directory (default: runs)")
    explain.add_argument("--name", help="output directory name under --out (default: explain, explain2, ...)")

    compare = commands.add_parser(
        "compare",
        help="CNN vs MLP on the same data: accuracy, cost, data efficiency, robustness",
        description="Train the default CNN and an MLP with the same budget; write a report with a verdict.",
    )
    compare.add_argument("--data", default="digits", help="built-in dataset name or image folder (default: digits)")
    compare.add_argument("--data-dir", help="folder holding a built-in dataset's files")
    for flag, kind, help_text in (
        ("--epochs", int, "passes over the training images, for every model"),
        ("--batch-size", int, "images per training step"),
        ("--lr", float, "peak learning rate of the one-cycle schedule (AdamW)"),
        ("--train-size", int, "use at most this many training images (stratified)"),
        ("--test-size", int, "measure on at most this many test images"),
        ("--seed", int, "seed for weights, data order and subsets"),
    ):
        default = getattr(Budget, flag[2:].replace("-", "_"))
        compare.add_argument(flag, type=kind, default=default, help=f"{help_text} (default: {default})")
    compare.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    compare.add_argument("--out", default="runs", help="folder that holds the report directory (default: runs)")
    compare.add_argument("--name", help="report directory name under --out (default: compare, compare2, ...)")
    compare.add_argument("--json", action="store_true", help="print the results as JSON")

    commands.add_parser("models", help="list the available architectures")
    cli_deploy.add_commands(commands)

    summary = commands.add_parser(
        "summary",
        help="layers, shapes, parameters, multiply-adds, receptive fields",
        description="Per layer: output shape, parameters, multiply-adds, receptive field and, for convolutions, "
        "the parameters a fully connected layer of the same sizes would need.",
    )
    summary.add_argument("model", metavar="MODEL", help="architecture name, layer spec (string or file), or checkpoint")
    summary.add_argument("--img-size", type=int, help="input side (default: 224; checkpoints record theirs)")
    summary.add_argument("--channels", type=int, help="input channels (default: 3)")
    summary.add_argument("--num-classes", type=int, help="output classes (default: 10)")
    summary.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def run_train(args: argparse.Namespace) -> int:
    from cnnkit.training.fit import fit

    options = {key: value for key, value in vars(args).items() if key not in ("command", "config", "resume")}
    config = TrainConfig.load(args.config) if args.config else None
    run = fit(config, resume=args.resume, **options)
    return 130 if run.interrupted else 0


def run_evaluate(args: argparse.Namespace) -> int:
    from cnnkit.deploy.load import load

    classifier = load(args.checkpoint, device=args.device)
    result, skipped = classifier.evaluate(args.data, args.split)
    for item in skipped:
        print(f"warning: skipped {item.path}: {item.reason}", file=sys.stderr)
    if result.count == 0:
        raise CnnkitError(f"the {args.split} split of {args.data or 'the training data'} holds no images")
    print(json.dumps({"split": args.split, **result.to_dict()}) if args.json else result.format())
    if args.report:
        from cnnkit.rundir import new_run_dir
        from cnnkit.understand.report import write_report

        out_dir = new_run_dir(args.out, args.name, "evaluate")
        images, _ = classifier.labelled_images(args.data, args.split)
        title = f"{classifier.info.model.name} on the {args.split} split of {args.data or 'its training data'}"
        write_report(classifier.model, images, classifier.preprocessing, classifier.device, out_dir, title)
        print(f"report written to {out_dir / 'report.html'}", file=sys.stderr if args.json else sys.stdout)
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
    from cnnkit.deploy.load import load
    from cnnkit.rundir import new_run_dir

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


def run_check(args: argparse.Namespace) -> int:
    from cnnkit.data.check import scan_folder

    report = scan_folder(args.data, use_cache=not args.no_cache)
    share = len(report.bad) / max(1, report.files)
    if args.json:
        print(json.dumps({**report.to_dict(), "digests": len(report.digests)}))
    else:
        print(report.summary())
        for item in report.bad:
            print(f"bad: {item.path}: {item.reason}")
        for warning in report.warnings:
            print(f"warning: {warning}")
    return 1 if share > args.max_bad_share else 0


def run_explain(args: argparse.Namespace) -> int:
    from cnnkit.deploy.load import load
    from cnnkit.rundir import new_run_dir
    from cnnkit.understand.explain import explain_images

    if args.top_k < 1:
        raise CnnkitError("--top-k must be at least 1")
    classifier = load(args.checkpoint, device=args.device)
    paths, _ = _expand_inputs(args.inputs)
    explanation = explain_images(
        classifier, paths, new_run_dir(args.out, args.name, "explain"), args.top_k, args.class_name, args.layer
    )
    for path, reason in explanation.skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    print(f"{len(explanation.images)} image(s) explained (layer {explanation.layer}); open {explanation.page}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from cnnkit.compare.study import compare

    budget = Budget(args.epochs, args.batch_size, args.lr, args.train_size, args.test_size, args.seed)
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    results, out_dir = compare(args.data, budget, args.out, args.name, args.data_dir, args.device, say)
    if args.json:
        print(json.dumps(results))
    else:
        print("\n".join(["", *results["verdict"], "", f"report written to {out_dir / 'report.html'}"]))
    return 0


def run_models(_: argparse.Namespace) -> int:
    from cnnkit.models import create_model, list_models

    print(f"{'model':<20} {'parameters':>12}   (10 classes, 3x32x32 input)")
    for name in list_models():
        parameters = sum(p.numel() for p in create_model(name, num_classes=10, in_channels=3, img_size=32).parameters())
        print(f"{name:<20} {parameters:>12,}")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from cnnkit.understand.summary import summarize_model

    summary = summarize_model(args.model, args.img_size, args.channels, args.num_classes)
    print(json.dumps(summary.to_dict()) if args.json else summary.format())
    return 0


COMMANDS = {
    "train": run_train,
    "evaluate": run_evaluate,
    "predict": run_predict,
    "check": run_check,
    "models": run_models,
    **cli_deploy.COMMANDS,
    "explain": run_explain,
    "compare": run_compare,
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
