"""The prediction service: every status it promises, and that it keeps answering after each of them."""

import asyncio
import io
import re
import time
import warnings

import numpy as np
import pytest
from PIL import Image

import cnnkit

pytest.importorskip("fastapi", reason="the deploy extra (pip install -e '.[test]') provides fastapi")
httpx = pytest.importorskip("httpx", reason="the test extra provides httpx")
with warnings.catch_warnings():
    warnings.simplefilter(
        "ignore", DeprecationWarning
    )  # starlette 1.x suggests httpx2; httpx is what FastAPI documents
    from fastapi.testclient import TestClient

from cnnkit.deploy.serve.app import create_app  # noqa: E402


def png_bytes(image: Image.Image) -> bytes:
    stream = io.BytesIO()
    image.save(stream, "PNG")
    return stream.getvalue()


@pytest.fixture(scope="module")
def onnx_classifier(digits_export):
    return cnnkit.load(digits_export / "model.onnx")


@pytest.fixture(scope="module")
def client(onnx_classifier):
    return TestClient(create_app(onnx_classifier, max_upload_bytes=100_000))


@pytest.fixture(scope="module")
def digit_png():
    from cnnkit.data import load_data

    return png_bytes(Image.fromarray(load_data("digits").test.images[0, 0].numpy()))


def assert_still_serving(client, digit_png):
    assert client.get("/health").json()["status"] == "ok"
    assert client.post("/predict", content=digit_png).status_code == 200


def test_predict_raw_body_and_multipart_agree_with_the_model(client, onnx_classifier, digit_png):
    raw = client.post("/predict?top_k=3", content=digit_png, headers={"content-type": "image/png"})
    form = client.post("/predict?top_k=3", files={"file": ("seven.png", digit_png, "image/png")})
    assert raw.status_code == form.status_code == 200
    assert raw.json() == form.json()
    [expected] = onnx_classifier.predict(digit_png, top_k=3)
    assert raw.json()["labels"] == expected.labels and raw.json()["label"] == expected.label
    np.testing.assert_allclose(raw.json()["probabilities"], expected.probabilities, rtol=1e-6)


def test_health_openapi_and_page(client):
    health = client.get("/health").json()
    assert health["runtime"] == "onnxruntime" and health["classes"] == [str(d) for d in range(10)]
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/octet-stream"} <= set(body)
    assert {"413", "415", "503"} <= set(schema["paths"]["/predict"]["post"]["responses"])
    page = client.get("/")
    assert page.status_code == 200 and 'id="top-label"' in page.text and 'id="explanation"' in page.text


EXTERNAL_REFERENCE = re.compile(  # an attribute, a CSS url() or an @import that leaves the server
    r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import"""
)


@pytest.mark.parametrize("path", ["/docs", "/"])
def test_pages_load_nothing_from_the_network(client, path):
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert EXTERNAL_REFERENCE.search(page.text) is None and "<script src" not in page.text


def test_api_reference_describes_every_operation(client):
    page = client.get("/docs").text
    assert "POST /predict" in page and "GET /health" in page and "top_k" in page and "PredictionResponse" in page
    assert all(f"<td>{status}</td>" in page for status in ("400", "413", "415", "503", "504"))
    assert client.get("/redoc").status_code == 404  # FastAPI's CDN-backed pages are off


def test_page_names_the_model_and_its_classes(client, onnx_classifier):
    page = client.get("/").text
    assert f'<strong id="model-name">{onnx_classifier.info.model.name}</strong>' in page
    assert "10 classes" in page and '<span id="classes">0, 1, 2, 3, 4, 5, 6, 7, 8, 9</span>' in page
    assert "8x8 grayscale input" in page


def truncated_jpeg() -> bytes:
    from sklearn.datasets import load_sample_image

    stream = io.BytesIO()
    Image.fromarray(load_sample_image("flower.jpg")).save(stream, "JPEG")
    return stream.getvalue()[:5000]  # the header reads; the pixels do not


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        ({"content": b""}, 400, "empty body"),
        ({"content": b"%PDF-1.4 not an image"}, 415, "not an image"),
        ({"content": truncated_jpeg()}, 400, "cannot decode"),
        ({"files": {"upload": ("a.png", b"x", "image/png")}}, 400, "field named 'file'"),
        ({"content": b"\0" * 100_001}, 413, "upload too large"),
        ({"content": (b"\0" * 10_000 for _ in range(20))}, 413, "upload too large"),  # streamed, no Content-Length
        ({"content": png_bytes(Image.new("L", (300, 300)))}, 200, ""),
    ],
    ids=["empty", "not-image", "truncated", "no-file-field", "too-large", "too-large-streamed", "fine"],
)
def test_bad_uploads_get_clear_errors(client, digit_png, request_kwargs, status, message):
    response = client.post("/predict", **request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.json().get("detail", "")
    assert_still_serving(client, digit_png)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_refused_before_decoding(client, digit_png):
    bomb = png_bytes(Image.new("1", (10_000, 10_000)))  # 100 megapixels in about 12 kB
    assert len(bomb) < 100_000
    response = client.post("/predict", content=bomb)
    assert response.status_code == 413 and "pixel limit" in response.json()["detail"]
    assert_still_serving(client, digit_png)


class SlowClassifier:
    """The real classifier, taking ``seconds`` longer per prediction."""

    def __init__(self, classifier, seconds: float) -> None:
        self.classifier, self.seconds = classifier, seconds

    def __getattr__(self, name: str):  # decoding, ranking, classes: the real classifier's
        return getattr(self.classifier, name)

    def probabilities(self, pixels):
        time.sleep(self.seconds)
        return self.classifier.probabilities(pixels)


async def post_many(app, count: int, content: bytes) -> list:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await asyncio.gather(*(client.post("/predict", content=content) for _ in range(count)))


@pytest.mark.slow
def test_full_queue_gets_503_with_retry_after(onnx_classifier, digit_png):
    app = create_app(SlowClassifier(onnx_classifier, 0.3), max_concurrency=1, max_queue=1)
    responses = asyncio.run(post_many(app, 6, digit_png))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503, 503, 503, 503]
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
    assert asyncio.run(post_many(app, 1, digit_png))[0].status_code == 200  # the queue drains


@pytest.mark.slow
def test_slow_prediction_times_out_with_504(onnx_classifier, digit_png):
    app = create_app(SlowClassifier(onnx_classifier, 0.5), timeout=0.1)
    [response] = asyncio.run(post_many(app, 1, digit_png))
    assert response.status_code == 504
    assert response.json()["detail"] == "the prediction took longer than the 0.1 s limit"
    time.sleep(0.5)  # the worker finishes, frees its slot, and the server answers again
    assert app.state.gate.in_progress == 0


def test_slow_upload_times_out_with_408(onnx_classifier, digit_png):
    async def trickle():
        for _ in range(5):
            await asyncio.sleep(0.1)
            yield b"\0"

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(onnx_classifier, timeout=0.2))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/predict", content=trickle())

    response = asyncio.run(send())
    assert response.status_code == 408 and "did not arrive" in response.json()["detail"]


def test_checkpoint_backed_service_runs_pytorch(digits_run, digit_png):
    client = TestClient(create_app(cnnkit.load(digits_run, device="cpu")))
    assert client.get("/health").json()["runtime"] == "pytorch"
    [expected] = cnnkit.load(digits_run).predict(digit_png, top_k=5)
    assert client.post("/predict", content=digit_png).json()["labels"] == expected.labels


def test_checkpoint_service_explains_with_a_gradcam_overlay(digits_run, digit_png):
    import base64
    import io

    from PIL import Image

    client = TestClient(create_app(cnnkit.load(digits_run, device="cpu")))
    assert client.get("/health").json()["explain"] is True
    plain = client.post("/predict", content=digit_png).json()
    assert plain["overlay"] is None  # only on request: it costs a backward pass
    explained = client.post("/predict?explain=true", content=digit_png).json()
    assert explained["label"] == plain["label"]
    prefix = "data:image/png;base64,"
    assert explained["overlay"].startswith(prefix)
    overlay = Image.open(io.BytesIO(base64.b64decode(explained["overlay"][len(prefix) :])))
    assert overlay.size == (224, 224) and overlay.mode == "RGB"
    colours = np.asarray(overlay).reshape(-1, 3)
    assert len(np.unique(colours, axis=0)) > 4  # a heatmap, not a flat square


def test_onnx_service_has_no_overlay(client, digit_png):
    assert client.get("/health").json()["explain"] is False
    assert client.post("/predict?explain=true", content=digit_png).json()["overlay"] is None


def overlay_pixels(response: dict) -> np.ndarray:
    import base64

    png = base64.b64decode(response["overlay"].split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32)


@pytest.mark.slow
def test_concurrent_explain_and_plain_requests_each_get_their_own_answer(digits_run):
    from concurrent.futures import ThreadPoolExecutor

    from cnnkit.data import load_data

    classifier = cnnkit.load(digits_run, device="cpu")
    images = [png_bytes(Image.fromarray(image[0].numpy())) for image in load_data("digits").test.images[:6]]
    # 16 workers, so up to 16 requests run on the model at once; one event loop for the app (the context manager)
    with TestClient(create_app(classifier, max_concurrency=16), raise_server_exceptions=False) as client:
        sequential = [client.post("/predict?explain=true", content=image).json() for image in images]
        jobs = [(index, explain) for _ in range(8) for index in range(len(images)) for explain in (True, False)]

        def send(job: tuple[int, bool]):
            return client.post(f"/predict?explain={str(job[1]).lower()}", content=images[job[0]])

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(send, jobs))
    failed = [answer.text for answer in answers if answer.status_code != 200]
    assert not failed, failed[:2]
    references = [overlay_pixels(answer) for answer in sequential]
    for (index, explain), answer in zip(jobs, answers):
        result = answer.json()
        assert result["label"] == sequential[index]["label"]
        if explain:
            distances = [np.abs(overlay_pixels(result) - reference).mean() for reference in references]
            assert int(np.argmin(distances)) == index  # the overlay of its own image, not another request's
        else:
            assert result["overlay"] is None
