"""The detection service: ``POST /predict`` returns an image's boxes, and the page draws them over the upload.

It is :mod:`cnnkit.deploy.serve.app` for a detector (a run's
:class:`~cnnkit.deploy.torch_runtime.TorchDetector` or an export's
:class:`~cnnkit.deploy.onnx_detector.OnnxDetector`): the same upload checks, statuses,
bounded concurrency, access control and API reference, one JSON record per image as
``cnnkit predict RUN image --json`` prints it (boxes in the upload's original pixels), plus
the image's upright width and height so a client can scale the boxes to how it shows it.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Sequence

from fastapi import FastAPI, HTTPException, Query, Request
from pydantic import BaseModel

from cnnkit import __version__
from cnnkit.data.decode import ImageDecodeError
from cnnkit.data.placement import upright_size
from cnnkit.deploy.detector import ImageDetector
from cnnkit.deploy.drawing import PALETTE
from cnnkit.deploy.serve.app import (
    DEFAULT_MAX_PIXELS,
    PREDICT_BODY,
    UPLOAD_RESPONSES,
    Gate,
    check_image,
    fill_page,
    finish_app,
    receive_image,
    shown_classes,
)
from cnnkit.tasks.detect.records import MAX_BOXES, THRESHOLD


class Box(BaseModel):
    """One detection: its class, score in [0, 1] and ``[x1, y1, x2, y2]`` in the image's original pixels."""

    label: str
    score: float
    box: list[float]


class DetectionResponse(BaseModel):
    """The boxes of one image, best score first (``cnnkit predict --json``'s record), and the image's size."""

    path: str
    width: int
    height: int
    boxes: list[Box]


class DetectionHealth(BaseModel):
    status: str
    runtime: str
    task: str
    classes: list[str]
    in_progress: int
    capacity: int


def create_detection_app(
    detector: ImageDetector,
    max_upload_bytes: int = 10 * 2**20,
    max_concurrency: int = 2,
    max_queue: int = 64,
    timeout: float = 10.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    token: str | None = None,
    cors_origins: Sequence[str] = (),
) -> FastAPI:
    """A FastAPI app serving one detector; the arguments are :func:`cnnkit.deploy.serve.app.create_app`'s.

    Example:
        >>> app = create_detection_app(load_detector("runs/export/model.onnx"))
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    app = FastAPI(
        title="cnnkit detection service",
        summary="Boxes, labels and scores for an uploaded image.",
        version=__version__,
        docs_url=None,  # /docs is the offline page finish_app adds
        redoc_url=None,
    )
    gate = Gate(max_concurrency, max_queue)
    runtime = "onnxruntime" if getattr(detector, "session", None) is not None else "pytorch"

    def detect_image(data: bytes, threshold: float, max_boxes: int) -> DetectionResponse:
        check_image(data, max_pixels)
        try:
            [prediction] = detector.predict([data], threshold, max_boxes)
        except ImageDecodeError as error:
            raise HTTPException(400, f"cannot decode the image: {error}") from None
        width, height = upright_size(data)  # a str only for headers check_image already refused
        record = {**prediction.to_dict(), "path": "<upload>", "width": width, "height": height}
        return DetectionResponse(**record)

    @app.post("/predict", response_model=DetectionResponse, openapi_extra=PREDICT_BODY, responses=UPLOAD_RESPONSES)
    async def predict(
        request: Request,
        threshold: float = Query(THRESHOLD, ge=0, le=1, description="lowest box score returned"),
        max_boxes: int = Query(MAX_BOXES, ge=1, description="most boxes returned"),
    ) -> DetectionResponse:
        """Detect objects in one image sent as the raw body or as the multipart field ``file``."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with gate.admit():
            data = await receive_image(request, max_upload_bytes, timeout)
            return await gate.run(lambda: detect_image(data, threshold, max_boxes), deadline, timeout, "prediction")

    @app.get("/health", response_model=DetectionHealth)
    async def health() -> DetectionHealth:
        """Liveness and what is being served."""
        return DetectionHealth(
            status="ok",
            runtime=runtime,
            task="detect",
            classes=detector.classes,
            in_progress=gate.in_progress,
            capacity=gate.capacity,
        )

    return finish_app(app, render_detection_page(detector, runtime), gate, token, cors_origins)


def render_detection_page(detector: ImageDetector, runtime: str) -> str:
    """The web page, naming the model, its input and classes, with the palette the boxes are drawn in."""
    prep, classes = detector.preprocessing, detector.classes
    return fill_page(
        "detect_page.html",
        model=html.escape(detector.info.model.name),
        runtime=runtime,
        input=f"{prep.img_size}x{prep.img_size}",
        count=len(classes),
        classes=html.escape(shown_classes(classes)),
        threshold=THRESHOLD,
        # JSON inside <script>: "</" escaped so no class name can end the script
        palette=json.dumps(PALETTE),
        class_names=json.dumps(classes).replace("</", "<\\/"),
    )
