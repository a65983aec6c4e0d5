"""Serving a trained or exported model, or a similarity-search index, over HTTP: ``cnnkit serve RUN_ONNX_OR_INDEX``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from cnnkit.config import Range
from cnnkit.errors import CnnkitError

# One home for serve's numbers: the command line's flag types and serve()'s own check both read them.
LIMITS = {
    "port": Range(int, 1, 65535),
    "max_upload_mb": Range(float, 0, 4096, low_open=True),
    "max_concurrency": Range(int, 1, 1024),
    "max_queue": Range(int, 0, 1_000_000),
    "timeout": Range(float, 0, 86_400, low_open=True),  # a day
}


def check_limits(**values: float) -> None:
    """Refuse, in one line naming the flag and its range, a number the service cannot run with.

    Example:
        >>> check_limits(port=99999)
        Traceback (most recent call last):
        cnnkit.errors.CnnkitError: --port must be an integer in [1, 65535] (got 99999)
    """
    for key, value in values.items():
        problem = LIMITS[key].problem(value)
        if problem:
            raise CnnkitError(f"--{key.replace('_', '-')} {problem}")


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 10.0,
    max_concurrency: int = 2,
    max_queue: int = 64,
    timeout: float = 10.0,
    token: str | None = None,
    token_file: str | Path | None = None,
    cors_origins: Sequence[str] = (),
) -> None:
    """Serve a run, checkpoint or ``.onnx`` model, or an index directory, with uvicorn until interrupted.

    A model answers ``POST /predict`` (:mod:`cnnkit.deploy.serve.app`; a detector's boxes,
    :mod:`cnnkit.deploy.serve.detect`); an index built by
    ``cnnkit index`` answers ``POST /search`` and serves thumbnails (:mod:`cnnkit.deploy.serve.search`); a generator
    run draws a grid of a chosen class at ``GET /generate`` (:mod:`cnnkit.deploy.serve.generate`).

    Args:
        checkpoint: A run directory, ``.safetensors`` checkpoint, ``.onnx`` model or index directory.
        host: Address to listen on. Defaults to ``127.0.0.1`` (this machine only).
        port: Port, 1 to 65535. Defaults to 8000.
        max_upload_mb: Largest request body in MiB. Defaults to 10.
        max_concurrency: Predictions running at once. Defaults to 2.
        max_queue: Requests waiting for a worker before new ones get 503. Defaults to 64.
        timeout: Seconds per request (408 while uploading, 504 while predicting). Defaults to 10.
        token: Require ``Authorization: Bearer <token>`` on every endpoint but ``/health``. Defaults to None.
        token_file: Read the token from this file instead. Without either, ``$CNNKIT_SERVE_TOKEN`` is used
            when set.
        cors_origins: Origins whose pages may call the service from a browser. Defaults to none.

    Raises:
        CnnkitError: A number out of range, an unreadable token file or a malformed origin, before
            anything is loaded.
    """
    from cnnkit.deploy.serve.access import TOKEN_ENV, check_origins, is_loopback, read_token

    check_limits(
        port=port, max_upload_mb=max_upload_mb, max_concurrency=max_concurrency, max_queue=max_queue, timeout=timeout
    )
    token = read_token(token, token_file)
    origins = check_origins(tuple(cors_origins))

    from cnnkit.deploy.onnx_runtime import require

    require("fastapi", "uvicorn", "multipart")
    import uvicorn

    from cnnkit.deploy.serve.search import is_index
    from cnnkit.tasks.generate import is_generation_run

    limits = (int(max_upload_mb * 2**20), max_concurrency, max_queue, timeout)
    if is_index(checkpoint):
        from cnnkit.deploy.index import open_index
        from cnnkit.deploy.serve.search import create_search_app

        app = create_search_app(open_index(checkpoint), None, *limits, token=token, cors_origins=origins)
    elif is_generation_run(checkpoint):  # nothing uploaded, images drawn: GET /generate and its own page
        from cnnkit.deploy.serve.generate import create_generation_app
        from cnnkit.tasks.generate.sampling import load_generator

        model, info = load_generator(checkpoint, "cpu")
        app = create_generation_app(model, info, *limits[1:], token=token, cors_origins=origins)
    else:
        from cnnkit.deploy.detector import ImageDetector
        from cnnkit.deploy.load import load_predictor

        model = load_predictor(checkpoint, device="cpu", threads=1)  # requests run in parallel, each ONNX on one core
        if (modality := model.preprocessing.modality) == "series":  # one file per request; a series file holds many
            raise CnnkitError(f"{checkpoint} reads {modality}, and cnnkit serve takes image and audio models so far")
        if isinstance(model, ImageDetector):  # boxes: its own /predict answer and page
            from cnnkit.deploy.serve.detect import create_detection_app as create_app
        else:
            from cnnkit.deploy.serve.app import create_app
        app = create_app(model, *limits, token=token, cors_origins=origins)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    print(f"serving {checkpoint} on {url} (API reference at /docs); Ctrl-C stops", flush=True)
    if token is not None:
        print(
            f"a bearer token is required (GET /health excepted); open the web page as {url}?token=<token>", flush=True
        )
    elif not is_loopback(host):
        print(
            f"warning: {host} accepts connections from other machines and no token is set, so anyone who can "
            f"reach port {port} can use the model; set --token-file or ${TOKEN_ENV}, or serve on "
            "127.0.0.1",
            file=sys.stderr,
        )
    uvicorn.run(app, host=host, port=port, timeout_keep_alive=5, log_level="warning")
