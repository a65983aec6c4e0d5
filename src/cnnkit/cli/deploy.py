"""The deployment commands of ``cnnkit``: export, benchmark and serve, each one library call."""

from __future__ import annotations

import argparse
import json


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
    export.add_argument("--atol", type=float, default=1e-3, help="largest allowed logit difference (default: 1e-3)")
    export.add_argument(
        "--max-accuracy-drop", type=float, default=0.5, help="int8: largest allowed accuracy drop in points (0.5)"
    )
    export.add_argument("--out", default="runs", help="folder for the export directory (default: runs)")
    export.add_argument("--name", help="export directory name under --out (default: export, export2, ...)")

    benchmark = commands.add_parser(
        "benchmark",
        help="latency and throughput: PyTorch eager, ONNX Runtime fp32 and int8",
        description="Batch-1 latency (p50/p99) and batch-32 throughput on this machine.",
    )
    benchmark.add_argument("target", metavar="RUN_OR_MODEL")
    benchmark.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default: 2)")
    benchmark.add_argument("--threads", type=int, help="intra-op threads for every runtime (default: all cores)")
    benchmark.add_argument("--json", action="store_true", help="print the rows as JSON")

    serve = commands.add_parser(
        "serve",
        help="HTTP prediction service with a web page",
        description="Serve POST /predict, GET /health, GET / (a web page) and the OpenAPI schema at /docs.",
    )
    serve.add_argument("checkpoint", metavar="RUN_OR_ONNX")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body (default: 10)")
    serve.add_argument("--max-concurrency", type=int, default=2, help="predictions run at once (default: 2)")
    serve.add_argument("--max-queue", type=int, default=64, help="requests waiting before 503 (default: 64)")
    serve.add_argument("--timeout", type=float, default=10.0, help="seconds per request before 504 (default: 10)")


def run_export(args: argparse.Namespace) -> int:
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

    serve(args.checkpoint, args.host, args.port, args.max_upload_mb, args.max_concurrency, args.max_queue, args.timeout)
    return 0


COMMANDS = {"export": run_export, "benchmark": run_benchmark, "serve": run_serve}
