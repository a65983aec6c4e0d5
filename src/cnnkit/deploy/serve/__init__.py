"""Serving a trained or exported model over HTTP: ``cnnkit serve RUN_OR_ONNX``."""

from __future__ import annotations

from pathlib import Path

from cnnkit.errors import CnnkitError


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 10.0,
    max_concurrency: int = 2,
    max_queue: int = 64,
    timeout: float = 10.0,
) -> None:
    """Serve a run, checkpoint or ``.onnx`` model with uvicorn until interrupted.

    Args:
        checkpoint: A run directory, ``.safetensors`` checkpoint or ``.onnx`` model.
        host: Address to listen on. Defaults to ``127.0.0.1`` (this machine only).
        port: Port. Defaults to 8000.
        max_upload_mb: Largest request body in MiB. Defaults to 10.
        max_concurrency: Predictions running at once. Defaults to 2.
        max_queue: Requests waiting for a worker before new ones get 503. Defaults to 64.
        timeout: Seconds per request (408 while uploading, 504 while predicting). Defaults to 10.
    """
    from cnnkit.deploy.onnx_runtime import require

    require("fastapi", "uvicorn", "multipart")
    import uvicorn

    from cnnkit.deploy.load import load
    from cnnkit.deploy.serve.app import create_app

    if max_upload_mb <= 0 or max_concurrency < 1 or max_queue < 0 or timeout <= 0:
        raise CnnkitError(
            "--max-upload-mb and --timeout must be positive, --max-concurrency at least 1, --max-queue >= 0"
        )
    classifier = load(checkpoint, device="cpu", threads=1)  # requests run in parallel, each ONNX one on one core
    app = create_app(classifier, int(max_upload_mb * 2**20), max_concurrency, max_queue, timeout)
    print(f"serving {checkpoint} on http://{host}:{port}/ (API schema at /docs); Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, timeout_keep_alive=5, log_level="warning")
