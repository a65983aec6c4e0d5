"""The prediction service: ``POST /predict``, ``GET /health``, ``GET /`` (a web page) and the OpenAPI schema.

Every way a request can go wrong has its own status, and none of them can take the
server down:

- a body over ``max_upload_bytes``: 413, decided from Content-Length before anything is
  read, or as soon as a streamed body passes the limit (the body is never stored whole);
- an empty body or a multipart form without a file: 400; bytes that are not an image:
  415; an image that is truncated or corrupt: 400 (an audio model's WAV uploads alike:
  :mod:`cnnkit.deploy.serve.audio`);
- more pixels than ``max_pixels`` (a decompression bomb: a small file that decodes to
  gigabytes): 413, decided from the header before any pixel is decoded;
- more than ``max_concurrency + max_queue`` requests in progress: 503 with Retry-After;
- a body that does not arrive within ``timeout``: 408; a prediction that takes longer:
  504 (the worker slot stays taken until that prediction ends, so load stays bounded);
- with a token (:mod:`cnnkit.deploy.serve.access`), a request without it: 401.

Requests run in parallel on one shared model, which is safe because a plain prediction
only reads it. A Grad-CAM overlay hooks a layer and runs a backward pass, so it runs on a
private copy of the model (:class:`~cnnkit.deploy.serve.explainer.Explainer`): its hook never
sees another request's image and never fires inside a plain prediction. Cross-origin requests are refused (no
CORS headers) unless ``cors_origins`` names the origins allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from string import Template

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel
from starlette.requests import Request as StarletteRequest

from cnnkit import __version__
from cnnkit.data.decode import ImageDecodeError
from cnnkit.deploy.serve.access import add_access_control
from cnnkit.deploy.serve.audio import decode_upload, page_values
from cnnkit.deploy.serve.explainer import Explainer
from cnnkit.deploy.serve.reference import render_reference

RETRY_AFTER_SECONDS = 1
DEFAULT_MAX_PIXELS = 40_000_000  # a 40-megapixel photo is fine; a 100-megapixel 1-bit PNG of 12 kB is not
PAGE_CLASSES = 30  # the web page names this many classes; /health lists them all


class PredictionResponse(BaseModel):
    """Top-k labels with their probabilities, most likely first."""

    label: str
    labels: list[str]
    probabilities: list[float]
    overlay: str | None = None  # with ?explain=true: a PNG data URL of the Grad-CAM of the top label
    note: str | None = None  # an audio model's: the recording was longer than its clip, and only part was heard


class Health(BaseModel):
    status: str
    runtime: str
    classes: list[str]
    in_progress: int
    capacity: int
    explain: bool  # whether /predict?explain=true can return a Grad-CAM overlay (checkpoints, not ONNX)


class Gate:
    """Bounded concurrency: ``max_concurrency`` predictions at once, ``max_queue`` more waiting, the rest 503."""

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self.capacity = max_concurrency + max_queue
        self.in_progress = 0
        self.slots = asyncio.Semaphore(max_concurrency)
        self.executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="cnnkit-predict")

    @contextlib.asynccontextmanager
    async def admit(self):
        if self.in_progress >= self.capacity:
            raise HTTPException(
                503,
                f"server busy: {self.in_progress} requests in progress; retry after {RETRY_AFTER_SECONDS} s",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1

    async def run(self, work, deadline: float, timeout: float, operation: str):
        """Run ``work`` on a worker thread; 503 if no worker frees up, 504 if it ends after ``deadline``.

        Args:
            work: What to run, called with no arguments.
            deadline: Event-loop time by which it must end.
            timeout: The request's limit in seconds, for the 504's message.
            operation: What ``work`` makes (``prediction``, ``search``, ``thumbnail``), for the 504's message.
        """
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self.slots.acquire(), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise HTTPException(
                503, "server busy: no worker free in time", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
            ) from None
        future = loop.run_in_executor(self.executor, work)
        future.add_done_callback(lambda _: self.slots.release())
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise HTTPException(504, f"the {operation} took longer than the {timeout:g} s limit") from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes``."""
    too_large = HTTPException(413, f"upload too large: the limit is {max_bytes:,} bytes")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > max_bytes):
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    return bytes(body)


async def uploaded_image(request: Request, body: bytes) -> bytes:
    """The image bytes: the ``file`` field of a multipart form, or the raw body."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await StarletteRequest(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception as error:  # Starlette raises several types for malformed multipart bodies
        raise HTTPException(400, f"malformed multipart form: {error}") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(400, "a multipart upload needs the image in a file field named 'file'")
    return await upload.read()


async def receive_image(request: Request, max_bytes: int, timeout: float) -> bytes:
    """The uploaded image's bytes (raw body or form field ``file``): 408 unless the body arrives within ``timeout``."""
    try:
        body = await asyncio.wait_for(read_body(request, max_bytes), timeout)
    except asyncio.TimeoutError:
        raise HTTPException(408, f"the upload did not arrive within {timeout:g} s") from None
    return await uploaded_image(request, body)


def check_image(data: bytes, max_pixels: int) -> None:
    """Read only the image header: 400 for nothing, 415 for not an image, 413 for too many pixels."""
    if not data:
        raise HTTPException(400, "empty body: send an image (JPEG, PNG, ...) as the body or as the form field 'file'")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except UnidentifiedImageError:
        raise HTTPException(415, "not an image: send a JPEG, PNG, GIF, BMP, TIFF or WebP file") from None
    except Image.DecompressionBombError as error:
        raise HTTPException(413, f"image refused as a possible decompression bomb: {error}") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise HTTPException(400, f"cannot read the image header: {error}") from None
    if width * height > max_pixels:
        raise HTTPException(
            413, f"image refused: {width}x{height} pixels is over the {max_pixels:,}-pixel limit (decompression bomb?)"
        )


def upload_body(media_type: str) -> dict:
    """The OpenAPI request body of an upload: the multipart field ``file``, or the raw bytes of ``media_type``."""
    binary = {"type": "string", "format": "binary"}
    content = {"multipart/form-data": {"schema": {"type": "object", "properties": {"file": binary}}}}
    return {
        "requestBody": {
            "required": True,
            "content": {**content, "application/octet-stream": {"schema": binary}, media_type: {"schema": binary}},
        }
    }


PREDICT_BODY = upload_body("image/*")
# The statuses an endpoint taking an image upload can answer (the schema's list; /predict and /search alike).
UPLOAD_RESPONSES = {
    400: {"description": "empty, malformed or undecodable upload"},
    408: {"description": "the upload did not arrive in time"},
    413: {"description": "upload too large, or too many pixels"},
    415: {"description": "not an image"},
    503: {"description": "busy; retry after the Retry-After header's seconds"},
    504: {"description": "the answer took longer than the timeout"},
}


def create_app(
    classifier,
    max_upload_bytes: int = 10 * 2**20,
    max_concurrency: int = 2,
    max_queue: int = 64,
    timeout: float = 10.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    token: str | None = None,
    cors_origins: Sequence[str] = (),
) -> FastAPI:
    """A FastAPI app serving one classifier (a checkpoint's :class:`Classifier` or an ``OnnxClassifier``).

    An image model takes image uploads; an audio model takes WAV files and its page records from the
    microphone (:mod:`cnnkit.deploy.serve.audio`).

    Args:
        classifier: What :func:`cnnkit.load` returns.
        max_upload_bytes: Largest request body. Defaults to 10 MiB.
        max_concurrency: Predictions running at once. Defaults to 2 (one per core of a small machine).
        max_queue: Requests allowed to wait for a worker; beyond that 503. Defaults to 64.
        timeout: Seconds a request may take, upload included (408 while receiving, 504 while predicting).
            Defaults to 10.
        max_pixels: Largest image, in pixels, before decoding. Defaults to 40 million.
        token: When set, every request but ``GET /health`` needs ``Authorization: Bearer <token>``
            (the pages also take ``?token=``); see :mod:`cnnkit.deploy.serve.access`. Defaults to None.
        cors_origins: Origins (``https://app.example.org``) whose pages may call the service from a
            browser. Defaults to none: other sites' scripts cannot read the answers.

    Example:
        >>> app = create_app(cnnkit.load("runs/export/model.onnx"))
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    audio = classifier.preprocessing.modality == "audio"
    app = FastAPI(
        title="cnnkit prediction service",
        summary=f"Top-k labels for an uploaded {'WAV file' if audio else 'image'}.",
        version=__version__,
        docs_url=None,  # FastAPI's Swagger UI loads from a CDN; /docs is the offline page below
        redoc_url=None,
    )
    gate = Gate(max_concurrency, max_queue)
    runtime = "onnxruntime" if getattr(classifier, "session", None) is not None else "pytorch"
    num_classes = len(classifier.classes)

    explainer = Explainer(classifier) if runtime == "pytorch" and not audio else None

    def predict_image(data: bytes, top_k: int, explain: bool) -> PredictionResponse:
        note = None
        if audio:
            inputs, note = decode_upload(classifier, data)
        else:
            check_image(data, max_pixels)
            try:
                inputs = classifier.pixels([data])  # decoded once: the prediction and the overlay share it
            except ImageDecodeError as error:
                raise HTTPException(400, f"cannot decode the image: {error}") from None
        [prediction] = classifier.rank(classifier.probabilities(inputs), ["<upload>"], top_k)
        overlay = None
        if explain and explainer is not None:
            overlay = explainer.overlay(inputs, classifier.classes.index(prediction.label))
        return PredictionResponse(
            label=prediction.label,
            labels=prediction.labels,
            probabilities=prediction.probabilities,
            overlay=overlay,
            note=note,
        )

    @app.post(
        "/predict",
        response_model=PredictionResponse,
        openapi_extra=upload_body("audio/wav") if audio else PREDICT_BODY,
        responses=UPLOAD_RESPONSES,
    )
    async def predict(
        request: Request,
        top_k: int = Query(5, ge=1, description="how many labels to return"),
        explain: bool = Query(False, description="add a Grad-CAM overlay of the top label (checkpoints only)"),
    ) -> PredictionResponse:
        """Classify one image (an audio model: one WAV file) sent as the raw body or as the multipart field ``file``."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with gate.admit():
            data = await receive_image(request, max_upload_bytes, timeout)
            return await gate.run(
                lambda: predict_image(data, min(top_k, num_classes), explain), deadline, timeout, "prediction"
            )

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """Liveness and what is being served."""
        return Health(
            status="ok",
            runtime=runtime,
            classes=classifier.classes,
            in_progress=gate.in_progress,
            capacity=gate.capacity,
            explain=explainer is not None,
        )

    return finish_app(app, render_page(classifier, runtime), gate, token, cors_origins)


def finish_app(
    app: FastAPI, page: str, gate: Gate, token: str | None, cors_origins: Sequence[str], example: str | None = None
) -> FastAPI:
    """What every cnnkit service ends with: its web page at ``/``, the API reference at ``/docs``, access control.

    The classifier and search services both call it, so their pages and guards cannot drift apart; ``example``
    is the reference page's curl lines (:func:`~cnnkit.deploy.serve.reference.render_reference`'s default if None).
    """

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page_view() -> str:
        return page

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def reference() -> str:
        return render_reference(app.openapi(), example)

    add_access_control(app, token, cors_origins)
    app.state.gate = gate
    return app


def render_page(classifier, runtime: str) -> str:
    """The web page, naming the model, its input and its classes; an audio model's also records."""
    prep, classes = classifier.preprocessing, classifier.classes
    if prep.modality == "audio":
        values = page_values(classifier)
    else:
        colour = {1: "grayscale", 3: "RGB"}.get(prep.channels, f"{prep.channels}-channel")
        values = {
            "subject": "an image",
            "input": f"{prep.img_size}x{prep.img_size} {colour}",
            "pick": "an image",
            "accept": "image/*",
            "preview": '<img id="preview" alt="" hidden>',
            "recorder": "",
        }
    return fill_page(
        "page.html",
        model=html.escape(classifier.info.model.name),
        runtime=runtime,
        count=len(classes),
        classes=html.escape(shown_classes(classes)),
        **values,
    )


def shown_classes(classes: Sequence[str]) -> str:
    """The first :data:`PAGE_CLASSES` class names, comma-separated, and how many more there are."""
    shown = ", ".join(classes[:PAGE_CLASSES])
    return shown + (f" and {len(classes) - PAGE_CLASSES} more" if len(classes) > PAGE_CLASSES else "")


def fill_page(name: str, **values: object) -> str:
    """The package's page ``name`` with ``values`` put in, and the script both pages share in ``$upload_script``.

    The shared script (token, image picking) is inlined rather than served at a route of its own, so each
    page stays one self-contained document: it loads nothing else, with or without a token.
    """
    package = resources.files("cnnkit.deploy.serve")
    template = Template(package.joinpath(name).read_text(encoding="utf-8"))
    return template.substitute(values, upload_script=package.joinpath("upload_script.html").read_text(encoding="utf-8"))
