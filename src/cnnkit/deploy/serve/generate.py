"""The generation service: ``GET /generate?class=NAME&count=16&seed=S`` returns a PNG grid of fresh images.

It is :mod:`cnnkit.deploy.serve.app` for a generator run: the same bounded concurrency,
timeouts, access control, page at ``/`` and API reference at ``/docs``. The grid's images are
:func:`cnnkit.tasks.generate.sampling.sample_class`'s, so with the same seed they are the first
``count`` files ``cnnkit generate RUN --num count --class NAME --seed S`` writes (on the same
device); without a seed each request draws a new one, and the ``X-Seed`` header says which, so
a grid a person liked can be written to files. Images are laid out row by row, enlarged by a
whole factor to at least :data:`MIN_TILE` pixels (nearest neighbour: an 8x8 digit stays sharp).
"""

from __future__ import annotations

import asyncio
import html
import io
import math
import secrets
from collections.abc import Sequence

import numpy as np
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel

from cnnkit import __version__
from cnnkit.deploy.serve.app import Gate, fill_page, finish_app, shown_classes
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo
from cnnkit.models.gan import ConditionalGAN
from cnnkit.tasks.generate.sampling import SEEDS, class_index, sample_class

MAX_COUNT = 64  # images per grid: an 8x8 grid, drawn in well under a second on one core at 32 px
DEFAULT_COUNT = 16
MIN_TILE = 64  # pixels per image side in the grid, at least
GAP = 2  # pixels between images
CURL_EXAMPLE = (
    "curl -o grid.png -D - 'http://HOST:PORT/generate?class=NAME&count=16'   # X-Seed: the seed drawn\n"
    "curl -H 'Authorization: Bearer TOKEN' -o grid.png 'http://HOST:PORT/generate?class=NAME&seed=3'  # with a token"
)
GRID_RESPONSES = {
    200: {"content": {"image/png": {}}, "description": "a PNG grid, row by row; X-Seed names the noise seed"},
    400: {"description": "a class the run does not have"},
    503: {"description": "busy; retry after the Retry-After header's seconds"},
    504: {"description": "the images took longer than the timeout"},
}


class GenerationHealth(BaseModel):
    status: str
    runtime: str
    task: str
    classes: list[str]
    latent_dim: int
    in_progress: int
    capacity: int


def draw_grid(images: np.ndarray) -> Image.Image:
    """Images uint8 (N, C, H, W) laid out row by row in a near-square grid, each enlarged to at least MIN_TILE px."""
    count, channels, height, width = images.shape
    scale = max(1, math.ceil(MIN_TILE / max(height, width)))
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    mode = "L" if channels == 1 else "RGB"
    tile_w, tile_h = width * scale, height * scale
    grid = Image.new(mode, (GAP + columns * (tile_w + GAP), GAP + rows * (tile_h + GAP)), 255 if channels == 1 else 0)
    for index, image in enumerate(images):
        pixels = image[0] if channels == 1 else image.transpose(1, 2, 0)  # (H, W) or (H, W, 3)
        tile = Image.fromarray(np.ascontiguousarray(pixels)).resize((tile_w, tile_h), Image.Resampling.NEAREST)
        row, column = divmod(index, columns)
        grid.paste(tile, (GAP + column * (tile_w + GAP), GAP + row * (tile_h + GAP)))
    return grid


def create_generation_app(
    model: ConditionalGAN,
    info: CheckpointInfo,
    max_concurrency: int = 2,
    max_queue: int = 64,
    timeout: float = 10.0,
    token: str | None = None,
    cors_origins: Sequence[str] = (),
) -> FastAPI:
    """A FastAPI app serving one generator run; the limits are :func:`cnnkit.deploy.serve.app.create_app`'s.

    Args:
        model: The run's generator in eval mode (:func:`cnnkit.tasks.generate.sampling.load_generator`).
        info: Its checkpoint description (the class names).
        max_concurrency: Grids drawn at once. Defaults to 2.
        max_queue: Requests allowed to wait for a worker; beyond that 503. Defaults to 64.
        timeout: Seconds a request may take (504 beyond). Defaults to 10.
        token: Require ``Authorization: Bearer <token>`` on all but ``GET /health``. Defaults to None.
        cors_origins: Origins whose pages may call the service from a browser. Defaults to none.

    Example:
        >>> app = create_generation_app(*load_generator("runs/train"))
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    app = FastAPI(
        title="cnnkit generation service",
        summary="A grid of fresh images of a chosen class from a trained generator.",
        version=__version__,
        docs_url=None,  # /docs is the offline page finish_app adds
        redoc_url=None,
    )
    gate = Gate(max_concurrency, max_queue)

    def draw(label: int, count: int, seed: int) -> bytes:
        stream = io.BytesIO()
        draw_grid(sample_class(model, label, count, seed).numpy()).save(stream, format="PNG")
        return stream.getvalue()

    @app.get("/generate", response_class=Response, responses=GRID_RESPONSES)
    async def generate(
        class_name: str = Query(..., alias="class", description="the class to draw, one of /health's classes"),
        count: int = Query(DEFAULT_COUNT, ge=1, le=MAX_COUNT, description="how many images"),
        seed: int | None = Query(
            None, ge=SEEDS.low, le=SEEDS.high, description="noise seed (default: a new one; X-Seed says which)"
        ),
    ) -> Response:
        """Draw ``count`` images of one class as a PNG grid; the same seed gives the same grid."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with gate.admit():
            try:
                label = class_index(info, class_name)
            except CnnkitError as error:  # its one line names the run's classes
                raise HTTPException(400, str(error).replace("--class", "class", 1)) from None
            seed = secrets.randbelow(int(SEEDS.high) + 1) if seed is None else seed
            png = await gate.run(lambda: draw(label, count, seed), deadline, timeout, "generation")
        headers = {"X-Seed": str(seed), "Cache-Control": "no-store"}
        return Response(png, media_type="image/png", headers=headers)

    @app.get("/health", response_model=GenerationHealth)
    async def health() -> GenerationHealth:
        """Liveness and what is being served."""
        return GenerationHealth(
            status="ok",
            runtime="pytorch",
            task="generate",
            classes=info.classes,
            latent_dim=model.latent_dim,
            in_progress=gate.in_progress,
            capacity=gate.capacity,
        )

    return finish_app(app, render_generation_page(model, info), gate, token, cors_origins, CURL_EXAMPLE)


def render_generation_page(model: ConditionalGAN, info: CheckpointInfo) -> str:
    """The web page: the model, a class picker, count and seed, and the grid the service draws."""
    colour = {1: "grayscale", 3: "RGB"}.get(model.channels, f"{model.channels}-channel")
    options = "".join(f'<option value="{html.escape(name)}">{html.escape(name)}</option>' for name in info.classes)
    return fill_page(
        "generate_page.html",
        model=html.escape(info.model.name),
        output=f"{model.img_size}x{model.img_size} {colour}",
        count=len(info.classes),
        classes=html.escape(shown_classes(info.classes)),
        options=options,
        default_count=DEFAULT_COUNT,
        max_count=MAX_COUNT,
        max_seed=int(SEEDS.high),
    )
