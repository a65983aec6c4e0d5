"""The similarity-search service: neighbours of an upload, thumbnails by position only, each refusal in one line."""

import io
import time
import warnings

import pytest
from conftest import make_shapes_folder
from PIL import Image

pytest.importorskip("fastapi", reason="the deploy extra (pip install -e '.[test]') provides fastapi")
pytest.importorskip("httpx", reason="the test extra provides httpx")
with warnings.catch_warnings():
    # starlette 1.x suggests httpx2; httpx is what FastAPI documents
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient

from cnnkit.deploy.index import build_index, open_index
from cnnkit.deploy.serve.search import THUMBNAIL_SIDE, create_search_app, is_index


@pytest.fixture(scope="module")
def shapes_index(digits_run, tmp_path_factory):
    """The 36 shapes images indexed with the digits run's features (8x8 grayscale: tiny, but every image differs)."""
    root = make_shapes_folder(tmp_path_factory.mktemp("search") / "shapes")
    return build_index(digits_run, root, out=root.parent / "indexes", name="shapes")


@pytest.fixture(scope="module")
def client(shapes_index):
    return TestClient(create_search_app(shapes_index, max_upload_bytes=100_000))


def png_bytes(image: Image.Image) -> bytes:
    stream = io.BytesIO()
    image.save(stream, "PNG")
    return stream.getvalue()


def assert_one_line_refusal(response, status: int) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    return detail


def test_search_returns_k_neighbours_best_first_with_the_query_itself_first(client, shapes_index):
    rel = "square/square_003.png"
    response = client.post("/search?k=5", content=(shapes_index.root / rel).read_bytes())
    assert response.status_code == 200, response.text
    neighbours = response.json()["neighbours"]
    assert len(neighbours) == 5
    scores = [n["score"] for n in neighbours]
    assert scores == sorted(scores, reverse=True)
    first = neighbours[0]
    assert first["position"] == shapes_index.paths.index(rel) and first["path"] == rel
    assert first["score"] == pytest.approx(1.0, abs=1e-4) and first["label"] == "square"
    for n in neighbours:
        assert shapes_index.paths[n["position"]] == n["path"] and n["label"] == n["path"].split("/")[0]


def test_search_raw_body_and_multipart_agree_and_k_is_cut_to_the_index(client, shapes_index):
    data = (shapes_index.root / "circle/circle_000.jpg").read_bytes()
    raw = client.post("/search?k=3", content=data, headers={"content-type": "image/jpeg"})
    form = client.post("/search?k=3", files={"file": ("query.jpg", data, "image/jpeg")})
    assert raw.status_code == form.status_code == 200
    assert raw.json() == form.json()
    everything = client.post("/search?k=1000", content=data).json()["neighbours"]
    assert sorted(n["position"] for n in everything) == list(range(len(shapes_index)))


def test_thumbnail_serves_a_small_jpeg_of_the_file_at_a_position(client, shapes_index):
    response = client.get("/thumbnail/7")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as thumbnail, Image.open(shapes_index.file(7)) as original:
        assert thumbnail.format == "JPEG" and max(thumbnail.size) <= THUMBNAIL_SIDE
        assert thumbnail.size == original.size  # shapes are under 160 px: never enlarged, the page does that


@pytest.mark.parametrize(
    "position",
    ["36", "99999999999999999999999", "-1", "1.0", "0x1", "%EF%BC%91", "%2E%2E", "..%2F..%2Fetc%2Fpasswd", "circle"],
)
def test_thumbnail_refuses_anything_but_a_position_in_range(client, position):
    response = client.get(f"/thumbnail/{position}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")  # never a file's bytes


def test_thumbnail_out_of_range_says_which_positions_exist(client):
    detail = assert_one_line_refusal(client.get("/thumbnail/36"), 404)
    assert "0 to 35" in detail


def test_thumbnail_of_a_file_gone_or_changed_since_the_build_is_410(digits_run, tmp_path):
    root = make_shapes_folder(tmp_path / "shapes", per_class=2)
    index = build_index(digits_run, root, out=tmp_path / "indexes", name="small")
    app_client = TestClient(create_search_app(index))
    index.file(0).unlink()
    detail = assert_one_line_refusal(app_client.get("/thumbnail/0"), 410)
    assert index.paths[0] in detail and "cnnkit index" in detail and str(root) not in detail
    index.file(1).write_bytes(index.file(2).read_bytes())
    assert "has changed" in assert_one_line_refusal(app_client.get("/thumbnail/1"), 410)
    assert app_client.get("/thumbnail/2").status_code == 200
    outside = tmp_path / "outside.png"
    outside.write_bytes(index.file(2).read_bytes())
    index.file(3).unlink()
    index.file(3).symlink_to(outside)  # an indexed name now leading out of the folder
    assert "no longer a file inside" in assert_one_line_refusal(app_client.get("/thumbnail/3"), 410)


def test_search_refuses_bad_uploads_with_one_line_4xx(client):
    png = png_bytes(Image.new("RGB", (20, 20), "red"))
    cases = [
        (client.post("/search", content=b""), 400),
        (client.post("/search", content=b"just some text"), 415),
        (client.post("/search", content=png[: len(png) // 2]), 400),
        (client.post("/search", content=b"\x00" * 200_000), 413),
        (client.post("/search", files={"other": ("x.png", png, "image/png")}), 400),
    ]
    for response, status in cases:
        assert_one_line_refusal(response, status)
    assert client.post("/search?k=0", content=png).status_code == 422
    assert client.post("/search", content=png).status_code == 200  # still serving


def test_search_health_and_page_describe_the_index_and_load_nothing_from_elsewhere(client, shapes_index):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["images"] == len(shapes_index) == 36
    assert health["model"] == shapes_index.meta["model"]["name"] and health["labels"] is True
    page = client.get("/").text
    assert 'id="neighbours"' in page and ">36<" in page and shapes_index.meta["model"]["name"] in page
    assert "<script src" not in page and "://" not in page  # works offline: no CDN, no external script
    assert "/search" in client.get("/docs").text


def test_both_pages_inline_the_one_shared_upload_script(client, digits_run):
    from importlib import resources

    import cnnkit
    from cnnkit.deploy.serve.app import create_app

    shared = resources.files("cnnkit.deploy.serve").joinpath("upload_script.html").read_text(encoding="utf-8")
    prediction_page = TestClient(create_app(cnnkit.load(digits_run, device="cpu"))).get("/").text
    for page in (prediction_page, client.get("/").text):
        assert page.count(shared) == 1 and "$upload_script" not in page
        assert page.count("sessionStorage.setItem") == 1 and page.count('addEventListener("drop"') == 1


class SlowEmbedder:
    """The index's embedder, taking ``seconds`` longer per query."""

    def __init__(self, embedder, seconds: float) -> None:
        self.embedder, self.seconds = embedder, seconds

    def __getattr__(self, name: str):  # identity and the rest: the real embedder's
        return getattr(self.embedder, name)

    def embed_images(self, images):
        time.sleep(self.seconds)
        return self.embedder.embed_images(images)


@pytest.mark.slow
def test_slow_search_and_thumbnail_time_out_with_504_naming_the_operation(shapes_index, monkeypatch):
    import cnnkit.deploy.serve.search as search_module

    app = create_search_app(shapes_index, SlowEmbedder(shapes_index.embedder(), 0.3), timeout=0.1)
    with TestClient(app) as client:  # one event loop throughout, as under uvicorn: the one the slots live on
        slow_search = client.post("/search", content=shapes_index.file(0).read_bytes())
        assert assert_one_line_refusal(slow_search, 504) == "the search took longer than the 0.1 s limit"
        load_image = search_module.load_image
        monkeypatch.setattr(search_module, "load_image", lambda *args, **kw: time.sleep(0.3) or load_image(*args, **kw))
        slow_thumbnail = client.get("/thumbnail/0")
        assert assert_one_line_refusal(slow_thumbnail, 504) == "the thumbnail took longer than the 0.1 s limit"
        monkeypatch.undo()
        time.sleep(0.35)  # both workers finish and free their slots, and the server answers again
        assert client.get("/thumbnail/0").status_code == 200


def test_search_app_with_a_token_guards_search_and_thumbnails_but_not_health(shapes_index):
    guarded = TestClient(create_search_app(shapes_index, token="secret"))
    data = (shapes_index.root / "circle/circle_000.jpg").read_bytes()
    assert guarded.post("/search", content=data).status_code == 401
    assert guarded.get("/thumbnail/0").status_code == 401
    assert guarded.get("/health").status_code == 200
    bearer = {"Authorization": "Bearer secret"}
    assert guarded.post("/search", content=data, headers=bearer).status_code == 200
    assert guarded.get("/thumbnail/0", headers=bearer).status_code == 200


def test_is_index_tells_an_index_from_a_run_and_a_file(shapes_index, digits_run):
    assert is_index(shapes_index.directory)
    assert not is_index(digits_run)
    assert not is_index(shapes_index.file(0))
    assert open_index(shapes_index.directory).paths == shapes_index.paths


def test_serve_given_an_index_directory_serves_the_search_app(shapes_index, monkeypatch, capsys):
    import uvicorn

    from cnnkit.deploy.serve import serve

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append(app))
    serve(shapes_index.directory, port=8124, max_upload_mb=1)
    [app] = started
    data = (shapes_index.root / "triangle/triangle_003.png").read_bytes()
    neighbours = TestClient(app).post("/search?k=2", content=data).json()["neighbours"]
    assert neighbours[0]["path"] == "triangle/triangle_003.png"
    assert f"serving {shapes_index.directory}" in capsys.readouterr().out


def test_concurrent_searches_and_thumbnails_each_get_their_own_answer(shapes_index):
    from concurrent.futures import ThreadPoolExecutor

    rows = list(range(0, len(shapes_index), 3))  # 12 queries, each an indexed file
    queries = [shapes_index.file(row).read_bytes() for row in rows]
    with TestClient(create_search_app(shapes_index, max_concurrency=4), raise_server_exceptions=False) as app_client:

        def send(job: int):
            if job % 2:
                return app_client.get(f"/thumbnail/{rows[job // 2]}")
            return app_client.post("/search?k=3", content=queries[job // 2])

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, range(2 * len(rows))))
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers if a.status_code != 200][:2]
    for job, answer in enumerate(answers):
        if job % 2:
            assert answer.headers["content-type"] == "image/jpeg"
        else:
            assert answer.json()["neighbours"][0]["position"] == rows[job // 2]
