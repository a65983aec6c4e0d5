"""The ``cnnkit`` command: parse arguments and call one library function per command.

Every user mistake surfaces as a :class:`CnnkitError`, or a flag's range check while parsing, and is
printed as one line with exit code 2; Ctrl-C exits with 130, and a closed pipe (``| head``) quietly with
141, as Unix tools killed by SIGPIPE do.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cnnkit import __version__
from cnnkit.cli import compare as cli_compare
from cnnkit.cli import deploy as cli_deploy
from cnnkit.cli import detect as cli_detect
from cnnkit.cli import generate as cli_generate
from cnnkit.cli import inference as cli_inference
from cnnkit.cli import search as cli_search
from cnnkit.cli import spot as cli_spot
from cnnkit.cli.complete import add_completion_command, completion_script
from cnnkit.cli.flags import CommandParser, add_config_flags, config_default, config_type, number_type
from cnnkit.config import Range, TrainConfig
from cnnkit.errors import CnnkitError, describe_error


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="cnnkit", description="Train, understand and deploy CNNs.")
    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a model (default: the built-in digits)",
        description="Train a model and write a run directory under --out.",
    )
    train.add_argument(
        "--config",
        type=Path,
        help="YAML file of config keys (a run's config.yaml repeats it); flags override it",
    )
    train.add_argument(
        "--resume", metavar="RUN", help="continue RUN exactly where it stopped; --epochs N extends a finished run"
    )
    add_config_flags(train)

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

    cli_inference.add_commands(commands)
    cli_search.add_commands(commands)
    cli_spot.add_commands(commands)
    cli_generate.add_commands(commands)

    check = commands.add_parser(
        "check",
        help="scan an image folder for unreadable, misnamed, duplicate or unsafe files",
        description="Scan an image folder the way training does and report every problem; files are only read.",
    )
    check.add_argument("data", metavar="DATA")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--max-bad-share",
        type=config_type("max_bad_share"),
        default=config_default("max_bad_share"),
        help=f"exit 1 when more than this share is bad (default: {config_default('max_bad_share')})",
    )
    check.add_argument("--no-cache", action="store_true", help="rescan even if the files did not change")
    check.add_argument(
        "--near-duplicates",
        action="store_true",
        help="also find resized, re-encoded or cropped copies by embedding, and copies across splits (leaks)",
    )
    check.add_argument(
        "--model",
        metavar="MODEL",
        help="--near-duplicates: a run, a checkpoint or a pretrained architecture (default: efficientnet_lite0)",
    )
    check.add_argument(
        "--threshold",
        type=number_type(Range(float, 0, 1, low_open=True)),
        help="--near-duplicates: smallest cosine similarity of a pair (default: 0.8, measured for efficientnet_lite0)",
    )
    cli_compare.add_commands(commands)

    models = commands.add_parser("models", help="list the available architectures and their facts")
    models.add_argument("--json", action="store_true", help="print one JSON record per architecture")
    models.add_argument(
        "--task", choices=["classify", "detect", "generate"], help="only the models for this task (default: all)"
    )
    cli_deploy.add_commands(commands)

    summary = commands.add_parser(
        "summary",
        help="layers, shapes, parameters, multiply-adds, receptive fields",
        description="Per layer: output shape, parameters, multiply-adds, receptive field and, for convolutions, "
        "the parameters a fully connected layer of the same sizes would need.",
    )
    summary.add_argument("model", metavar="MODEL", help="architecture name, layer spec (string or file), or checkpoint")
    summary.add_argument(
        "--img-size", type=config_type("img_size"), help="input side (default: 224; checkpoints record theirs)"
    )
    summary.add_argument("--channels", type=number_type(Range(int, 1, 1024)), help="input channels (default: 3)")
    summary.add_argument("--num-classes", type=number_type(Range(int, 1, 100_000)), help="output classes (default: 10)")
    summary.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_completion_command(commands)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from cnnkit.training import distributed

    options = {key: value for key, value in vars(args).items() if key not in ("command", "config", "resume", "argv")}
    config = TrainConfig.load(args.config) if args.config else None
    if devices := distributed.devices_to_launch(options, config, args.resume):
        return distributed.launch(args.argv, devices)  # N workers of this same command, through torchrun
    from cnnkit.training.fit import fit  # after the launch: the launcher needs no models (torchvision) of its own

    reserved = None
    leader = distributed.World.from_environment().leader  # of torchrun's workers, rank 0 alone names the run
    if config and config.name and "name" not in options and args.resume is None and leader:
        # A run's own config.yaml repeats it: the name it records is where to start, not a demand.
        reserved = _reserve_next_run(Path(options.get("out", config.out)).expanduser(), config.name)
        options["name"] = reserved.name if reserved else config.name
    try:
        with distributed.worker_errors():
            run = fit(config, resume=args.resume, **options)
    except BaseException:
        if reserved and reserved.is_dir() and not any(reserved.iterdir()):
            reserved.rmdir()
        raise
    return 130 if run.interrupted else 0


def _reserve_next_run(out: Path, name: str) -> Path | None:
    """None when ``out/name`` is free; else create and return the next free ``name2``, ``name3``, ... (``x2`` -> x3)."""
    from cnnkit.rundir import new_run_dir

    taken = out / name
    if Path(name).name != name or not taken.exists() or not any(taken.iterdir()):
        return None
    stem = name.rstrip("0123456789")
    reserved = new_run_dir(out, None, stem if stem and (out / stem).is_dir() else name)
    print(f"note: {taken} exists; this run is {reserved}", file=sys.stderr)
    return reserved


def run_evaluate(args: argparse.Namespace) -> int:
    from cnnkit.deploy.load import is_onnx, load
    from cnnkit.tasks.detect.evaluate import is_detection_run

    if not is_onnx(args.checkpoint) and is_detection_run(args.checkpoint):  # COCO mAP, not accuracy
        return cli_detect.run_evaluate_detection(args)
    if args.report and is_onnx(args.checkpoint):
        raise CnnkitError(
            f"--report draws Grad-CAM with PyTorch, which {args.checkpoint} (an ONNX export) cannot do; "
            "give the run or checkpoint it was exported from"
        )
    classifier = load(args.checkpoint, device=args.device)
    modality = classifier.preprocessing.modality
    series = modality == "series"
    split = classifier.evaluated_split(args.data, args.split)  # None: a folder without split subfolders, read whole
    where = f"the {split} split of {args.data or 'the training data'}" if split else f"{args.data} (whole folder)"
    embed = classifier.info.extra.get("config", {}).get("task") == "embed"  # Recall@K and MAP@R, not accuracy
    if embed:
        from cnnkit.tasks.embed.evaluate import embedding_images, evaluate_embedding

        result, skipped = evaluate_embedding(classifier, args.data, args.split)
    else:
        result, skipped = classifier.evaluate(args.data, args.split)
    for item in skipped:
        print(f"warning: skipped {item.path}: {item.reason}", file=sys.stderr)
    if result.count == 0:
        raise CnnkitError(f"{where} holds no images")
    if split is None:
        own, trained, items = (
            ("subfolders or TEST file", "data", "series")
            if series
            else ("subfolders", "folder", "clips" if modality == "audio" else "images")
        )
        print(
            f"note: {args.data} has no train/val/test {own} and is not the model's training {trained}, "
            f"so all {result.count} {items} were evaluated and --split {args.split} does not apply",
            file=sys.stderr,
        )
    print(json.dumps({"split": split, **result.to_dict()}) if args.json else result.format())
    if args.report:
        from cnnkit.rundir import new_run_dir
        from cnnkit.tasks.embed.report import write_retrieval_report
        from cnnkit.understand.report import write_report

        out_dir = new_run_dir(args.out, args.name, "evaluate")
        if embed:
            images, _ = embedding_images(classifier, args.data, args.split)
        else:
            images, _ = classifier.labelled_images(args.data, args.split)
        title = f"{classifier.info.model.name} on {where}"
        tta = classifier.info.test_time_flip
        write = write_retrieval_report if embed else write_report
        write(classifier.model, images, classifier.preprocessing, classifier.device, out_dir, title, tta=tta)
        print(f"report written to {out_dir / 'report.html'}", file=sys.stderr if args.json else sys.stdout)
    return 0


def run_check(args: argparse.Namespace) -> int:
    from cnnkit.data.annotations import has_annotations
    from cnnkit.data.check import scan_folder

    if has_annotations(args.data):  # a detection dataset: its annotation problems too (cli/detect.py)
        return cli_detect.run_check_detection(args)
    if not args.near_duplicates and (args.model is not None or args.threshold is not None):
        raise CnnkitError("--model and --threshold set how --near-duplicates embeds the images; add --near-duplicates")
    report = scan_folder(args.data, use_cache=not args.no_cache)
    share = len(report.bad) / max(1, report.files)
    near = None
    if args.near_duplicates:
        from cnnkit.deploy.index.duplicates import DEFAULT_MODEL, DEFAULT_THRESHOLD, find_near_duplicates

        threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
        say = functools.partial(print, file=sys.stderr)
        near = find_near_duplicates(args.data, args.model or DEFAULT_MODEL, threshold, report.digests, "auto", say)
    if args.json:
        extra = {"near_duplicates": near.to_dict()} if near else {}
        print(json.dumps({**report.to_dict(), "digests": len(report.digests), **extra}))
    else:
        print(report.summary())
        for item in report.bad:
            print(f"bad: {item.path}: {item.reason}")
        for warning in report.warnings:
            print(f"warning: {warning}")
        for line in near.lines() if near else []:
            print(line)
    return 1 if share > args.max_bad_share else 0


# The input `models` counts parameters with, (in_channels, img_size) and as shown: RGB 32x32 images, 3-channel
# series of 32 steps, 1 s of mono 16 kHz audio (an MLP's count depends on the length; a CNN's does not).
COUNTED_WITH = {"image": (3, 32), "series": (3, 32), "audio": (1, 16000)}
SHOWN_INPUT = {"image": "3x32x32", "series": "3x32", "audio": "1x16000"}


def run_models(args: argparse.Namespace) -> int:
    import torch

    from cnnkit.models import create_model, list_models, model_entry

    pretrained = set(list_models(pretrained=True))
    rows = []
    for name in list_models(task=args.task):
        channels, size = COUNTED_WITH[model_entry(name).modality]
        try:
            with torch.device("meta"):  # shapes only: no memory and no weight initialisation, ~10x faster
                model = create_model(name, num_classes=10, in_channels=channels, img_size=size)
        except (RuntimeError, NotImplementedError):  # a builder that computes with tensors cannot run on meta
            model = create_model(name, num_classes=10, in_channels=channels, img_size=size)
        rows.append(
            {
                "name": name,
                "parameters": sum(p.numel() for p in model.parameters()),
                "pretrained": name in pretrained,
                "modality": model_entry(name).modality,
                "task": model_entry(name).task,
                "input": SHOWN_INPUT.get(model_entry(name).modality),
            }
        )
    if args.json:
        print(json.dumps(rows))
        return 0
    print(
        f"{'model':<20} {'input':<14} {'task':<9} {'parameters':>12}  pretrained   "
        "(10 classes; the series and audio CNNs take any length)"
    )
    for row in rows:
        pretrained = "ImageNet" if row["pretrained"] else "-"
        shown = f"{row['modality']} {row['input']}"
        print(f"{row['name']:<20} {shown:<14} {row['task']:<9} {row['parameters']:>12,}  {pretrained}")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from cnnkit.understand.summary import summarize_model

    summary = summarize_model(args.model, args.img_size, args.channels, args.num_classes)
    print(json.dumps(summary.to_dict()) if args.json else summary.format())
    return 0


def run_completion(args: argparse.Namespace) -> int:
    print(completion_script(build_parser(), args.shell))
    return 0


COMMANDS = {
    "train": run_train,
    "evaluate": run_evaluate,
    "check": run_check,
    "models": run_models,
    **cli_deploy.COMMANDS,
    **cli_inference.COMMANDS,
    **cli_search.COMMANDS,
    **cli_spot.COMMANDS,
    **cli_generate.COMMANDS,
    **cli_compare.COMMANDS,
    "summary": run_summary,
    "completion": run_completion,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `train --devices N` gives its workers
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that left (`| head`) shows here, inside the handlers, not at exit
        return code
    except BrokenPipeError:
        # Quiet, as a Unix tool killed by SIGPIPE (128 + 13); stdout goes to devnull so the exit flush cannot fail.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CnnkitError as error:
        print(f"cnnkit: error: {describe_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ncnnkit: interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        print(f"cnnkit: error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
