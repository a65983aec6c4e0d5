"""The similarity-search service: ``POST /search``, ``GET /thumbnail/{position}``, ``GET /health`` and a page.

``cnnkit serve INDEX`` serves an index directory (:mod:`cnnkit.deploy.index`): an uploaded
image is embedded by the model that built the index and its nearest indexed images come
back as JSON. Uploads go through the prediction service's machinery
(:mod:`cnnkit.deploy.serve.app`), so the same limits hold: body size (413), pixels before
decoding (413), not an image (415), corrupt (400), a bounded queue (503), timeouts (408,
504), and the token and CORS rules of :mod:`cnnkit.deploy.serve.access`.

Thumbnails are served only for the files of the index, named by their position in it
(``/thumbnail/0`` .. ``/thumbnail/N-1``): a request never names a path, so it cannot reach
any other file. A position that is not a whole number or is out of range is 404; a file that
was deleted, moved out of the folder or no longer decodes since the index was built is 410,
saying to rebuild the index.
"""

from __future__ import annotations

import asyncio
import html
import io
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from cnnkit import __version__
from cnnkit.data.decode import ImageDecodeError, load_image
from cnnkit.deploy.serve.app import (
    DEFAULT_MAX_PIXELS,
    PREDICT_BODY,
    UPLOAD_RESPONSES,
    Gate,
    check_image,
    fill_page,
    finish_app,
    receive_image,
)

THUMBNAIL_SIDE = 160  # pixels, longer side: sharp in the page's 10rem grid cells on a 2x screen
THUMBNAIL_QUALITY = 85
PAGE_K = 12  # neighbours the page asks for: a 4x3 or 6x2 grid


class Neighbour(BaseModel):
    """One indexed image near the query."""

    position: int  # row in the index: GET /thumbnail/{position} shows it
    path: str  # relative to the indexed folder
    score: float  # cosine similarity to the query, 1 for the same image
    label: str | None = None  # its class subfolder, when the folder has class subfolders


class SearchResponse(BaseModel):
    """The nearest indexed images, most similar first."""

    neighbours: list[Neighbour]


class SearchHealth(BaseModel):
    status: str
    model: str
    images: int
    dim: int
    approximate: bool  # whether a FAISS index answers (large indexes) rather than exact search
    labels: bool
    in_progress: int
    capacity: int


def is_index(path: str | Path) -> bool:
    """Whether ``path`` is an index directory (``cnnkit index`` output) rather than a run or a model file."""
    path = Path(path).expanduser()
    if not path.is_dir():  # a model file: serving an ONNX model imports no torch, which the index package needs
        return False
    from cnnkit.deploy.index.store import INDEX_FILE

    return (path / INDEX_FILE).is_file()


def create_search_app(
    index,
    embedder=None,
    max_upload_bytes: int = 10 * 2**20,
    max_concurrency: int = 2,
    max_queue: int = 64,
    timeout: float = 10.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    token: str | None = None,
    cors_origins: Sequence[str] = (),
) -> FastAPI:
    """A FastAPI app that finds the indexed images nearest to an uploaded one.

    Args:
        index: An opened :class:`cnnkit.deploy.index.SearchIndex`.
        embedder: The index's model; defaults to ``index.embedder()`` (refused if its weights changed).
        max_upload_bytes: Largest request body. Defaults to 10 MiB.
        max_concurrency: Searches and thumbnails made at once. Defaults to 2.
        max_queue: Requests allowed to wait for a worker; beyond that 503. Defaults to 64.
        timeout: Seconds a request may take, upload included (408, then 504). Defaults to 10.
        max_pixels: Largest image, in pixels, before decoding. Defaults to 40 million.
        token: When set, every request but ``GET /health`` needs ``Authorization: Bearer <token>``
            (the page also takes ``?token=``). Defaults to None.
        cors_origins: Origins whose pages may call the service from a browser. Defaults to none.

    Example:
        >>> from cnnkit.deploy.index import open_index
        >>> app = create_search_app(open_index("runs/index_photos"))
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    embedder = index.embedder() if embedder is None else embedder
    app = FastAPI(
        title="cnnkit similarity search",
        summary="The indexed images nearest to an uploaded image, and their thumbnails.",
        version=__version__,
        docs_url=None,  # Swagger UI loads from a CDN; /docs is the offline page
        redoc_url=None,
    )
    gate = Gate(max_concurrency, max_queue)
    root = index.root.resolve()

    def search_image(data: bytes, k: int) -> SearchResponse:
        check_image(data, max_pixels)
        try:
            vectors = embedder.embed_images([data])  # (1, D)
        except ImageDecodeError as error:
            raise HTTPException(400, f"cannot decode the image: {error}") from None
        scores, rows = index.search(vectors, k)  # (1, k) each, best first
        return SearchResponse(
            neighbours=[
                Neighbour(
                    position=row,
                    path=index.paths[row],
                    score=round(float(score), 6),
                    label=index.labels[row] if index.labels else None,
                )
                for score, row in zip(scores[0].tolist(), rows[0].tolist())
                if row >= 0  # FAISS marks the places it could not fill with -1
            ]
        )

    def thumbnail_bytes(row: int) -> bytes:
        rel = index.paths[row]
        path = index.file(row)
        # The message names the file as the index does (relative), never the server's own folders.
        gone = f"the image at position {row} ({rel}) {{}}; rebuild the index with `cnnkit index`"
        try:
            inside = path.resolve(strict=True).is_relative_to(root)
        except (OSError, RuntimeError):
            raise HTTPException(410, gone.format("is gone from the indexed folder")) from None
        if not inside or not path.is_file():
            raise HTTPException(410, gone.format("is no longer a file inside the indexed folder"))
        status = path.stat()
        if (status.st_size, status.st_mtime_ns) != (index.sizes[row], index.mtimes_ns[row]):
            raise HTTPException(410, gone.format("has changed since the index was built"))  # scores are the old file's
        try:
            image = load_image(path, min_side=THUMBNAIL_SIDE)
        except ImageDecodeError:
            raise HTTPException(410, gone.format("can no longer be decoded")) from None
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        stream = io.BytesIO()
        image.save(stream, "JPEG", quality=THUMBNAIL_QUALITY)
        return stream.getvalue()

    @app.post(
        "/search",
        response_model=SearchResponse,
        openapi_extra=PREDICT_BODY,
        responses=UPLOAD_RESPONSES,
    )
    async def search(
        request: Request, k: int = Query(10, ge=1, le=1000, description="how many neighbours to return")
    ) -> SearchResponse:
        """The ``k`` indexed images nearest to one image sent as the raw body or as the multipart field ``file``."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with gate.admit():
            data = await receive_image(request, max_upload_bytes, timeout)
            return await gate.run(lambda: search_image(data, min(k, len(index))), deadline, timeout, "search")

    @app.get(
        "/thumbnail/{position}",
        response_class=Response,
        responses={
            200: {"content": {"image/jpeg": {}}, "description": "a JPEG at most 160 pixels a side"},
            404: {"description": "no image at this position"},
            410: {"description": "the file is gone or changed since the index was built"},
        },
    )
    async def thumbnail(position: str) -> Response:
        """A small JPEG of the indexed image at ``position`` (a neighbour's ``position``, 0 to N-1)."""
        count = len(index)
        if not (position.isascii() and position.isdigit() and len(position) <= 18) or int(position) >= count:
            raise HTTPException(
                404, f"no image at position {position[:40]!r}: positions are whole numbers from 0 to {count - 1}"
            )
        deadline = asyncio.get_running_loop().time() + timeout
        async with gate.admit():
            data = await gate.run(lambda: thumbnail_bytes(int(position)), deadline, timeout, "thumbnail")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=600"})

    @app.get("/health", response_model=SearchHealth)
    async def health() -> SearchHealth:
        """Liveness and what is being served."""
        return SearchHealth(
            status="ok",
            model=embedder.identity["name"],
            images=len(index),
            dim=index.dim,
            approximate=index.approximate is not None,
            labels=index.labels is not None,
            in_progress=gate.in_progress,
            capacity=gate.capacity,
        )

    return finish_app(app, render_search_page(index, embedder.identity["name"]), gate, token, cors_origins)


def render_search_page(index, model: str) -> str:
    """The web page, naming the model, the indexed folder and its size."""
    return fill_page(
        "search_page.html",
        model=html.escape(model),
        folder=html.escape(index.root.name),
        count=len(index),
        k=min(PAGE_K, len(index)),
    )
