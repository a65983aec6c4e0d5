"""The deployment commands of ``cnnkit``: export, benchmark and serve, each one library call."""

from __future__ import annotations

import argparse
import json

from cnnkit.cli.flags import number_type
from cnnkit.config import Range
from cnnkit.deploy.serve import LIMITS as SERVE_LIMITS
from cnnkit.errors import CnnkitError


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add export, benchmark and serve to the ``cnnkit`` parser."""
    export = commands.add_parser(
        "export",
        help="export to ONNX, verified against PyTorch; optionally int8",
        description="Export a run to ONNX (uint8 input, normalisation inside), then check it against PyTorch "
        "on the run's validation images.",
    )
    export.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    export.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default: onnx)")
    export.add_argument("--int8", action="store_true", help="also write a static int8 model (QDQ, per-channel)")
    export.add_argument(
        "--atol", type=float, default=1e-3, help="classifiers: largest allowed logit difference (default: 1e-3)"
    )
    export.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.5,
        help="int8: largest acceptable accuracy drop in points, shown with 95%% confidence on the validation and "
        "test images (default: 0.5)",
    )
    export.add_argument(
        "--out", default="runs", help="folder for the export directory, or the .onnx file to write (default: runs)"
    )
    export.add_argument("--name", help="export directory name under --out (default: export, export2, ...)")

    benchmark = commands.add_parser(
        "benchmark",
        help="latency and throughput: PyTorch eager, ONNX Runtime fp32 and int8",
        description="Batch-1 latency (p50/p99) and batch-32 throughput on this machine.",
    )
    benchmark.add_argument("target", metavar="RUN_OR_MODEL")
    benchmark.add_argument(
        "--seconds",
        type=number_type(Range(float, 0, 3600, low_open=True)),
        default=2.0,
        help="time per measurement (default: 2)",
    )
    benchmark.add_argument(
        "--threads",
        type=number_type(Range(int, 1, 1024)),
        help="intra-op threads for every runtime (default: all cores)",
    )
    benchmark.add_argument("--json", action="store_true", help="print the rows as JSON")

    serve = commands.add_parser(
        "serve",
        help="HTTP prediction or similarity-search service with a web page",
        description="Serve a model (POST /predict), a generator run (GET /generate?class=NAME: a PNG grid) or an "
        "index directory from `cnnkit index` (POST /search, GET /thumbnail/POSITION), with GET /health, GET / "
        "(a web page), an API reference at /docs and the OpenAPI schema at /openapi.json. Only this machine can "
        "connect unless --host says otherwise; then set a token.",
    )
    serve.add_argument("checkpoint", metavar="RUN_ONNX_OR_INDEX")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    for flag, default, text in (
        ("--port", 8000, "port"),
        ("--max-upload-mb", 10.0, "largest request body in MiB"),
        ("--max-concurrency", 2, "predictions run at once"),
        ("--max-queue", 64, "requests waiting before 503"),
        ("--timeout", 10.0, "seconds per request before 408 or 504"),
    ):
        limits = SERVE_LIMITS[flag[2:].replace("-", "_")]
        serve.add_argument(flag, type=number_type(limits), default=default, help=f"{text} (default: {default:g})")
    serve.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' on all but /health (visible in the process list: prefer "
        "--token-file or $CNNKIT_SERVE_TOKEN)",
    )
    serve.add_argument("--token-file", metavar="PATH", help="read the token from this file")
    serve.add_argument(
        "--cors",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages from ORIGIN (https://host[:port]) call the service; repeatable (default: no other site)",
    )


def run_export(args: argparse.Namespace) -> int:
    from cnnkit.tasks.detect.evaluate import is_detection_run
    from cnnkit.tasks.generate import is_generation_run

    if is_generation_run(args.checkpoint):  # noise and class in, images out: its own graph and parity check
        from cnnkit.deploy.generator_export import export_generator

        if args.int8:
            raise CnnkitError(f"--int8 quantizes classifiers; {args.checkpoint} is a generator (fp32): leave it out")
        export_generator(args.checkpoint, args.out, args.name)
        return 0
    if is_detection_run(args.checkpoint):  # boxes, not logits: its own graph and parity check
        from cnnkit.deploy.detect_export import export_detector

        if args.int8:
            raise CnnkitError(f"--int8 quantizes classifiers so far; {args.checkpoint} is a detector: leave it out")
        export_detector(args.checkpoint, args.out, args.name)
        return 0
    from cnnkit.deploy.export import export_onnx

    export_onnx(args.checkpoint, args.out, args.name, args.int8, args.atol, args.max_accuracy_drop)
    return 0


def run_benchmark(args: argparse.Namespace) -> int:
    from cnnkit.deploy.benchmark import benchmark, format_table

    rows = benchmark(args.target, args.seconds, threads=args.threads)
    print(json.dumps(rows) if args.json else format_table(rows))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from cnnkit.deploy.serve import serve

    serve(
        args.checkpoint,
        args.host,
        args.port,
        args.max_upload_mb,
        args.max_concurrency,
        args.max_queue,
        args.timeout,
        token=args.token,
        token_file=args.token_file,
        cors_origins=args.cors,
    )
    return 0


COMMANDS = {"export": run_export, "benchmark": run_benchmark, "serve": run_serve}
