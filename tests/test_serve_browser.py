"""The web page in a real headless Chromium: pick an image, read the predicted label off the page."""

import shutil
import socket
import threading
import time

import pytest
from PIL import Image

import cnnkit

pytest.importorskip("fastapi", reason="the deploy extra provides fastapi")
from cnnkit.deploy.serve.app import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is missing: apt-get install chromium (as .ci/run does)"
)


@pytest.fixture
def start_server():
    """Serve an app on a free loopback port with uvicorn in a thread; returns its base URL. Stopped at teardown."""
    pytest.importorskip("uvicorn", reason="the deploy extra provides uvicorn")
    import uvicorn

    servers = []

    def start(app) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def browser():
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="the test extra provides playwright")
    with sync_playwright.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def digit_file(tmp_path):
    """A test digit at its own 8x8 pixels: the page must enlarge it to be seen."""
    from cnnkit.data import load_data

    path = tmp_path / "digit.png"
    Image.fromarray(load_data("digits").test.images[5, 0].numpy()).save(path)
    return path


def wait_for_label(page) -> None:
    page.wait_for_function("document.getElementById('top-label').textContent !== 'none yet'", timeout=15_000)


@pytest.mark.slow
def test_page_shows_the_model_and_the_predicted_label(start_server, browser, digits_export, digit_file):
    classifier = cnnkit.load(digits_export / "model.onnx")
    [expected] = classifier.predict(str(digit_file))
    page = browser.new_page()
    page.goto(start_server(create_app(classifier)) + "/")
    assert page.text_content("#top-label") == "none yet"
    assert page.text_content("#model-name") == classifier.info.model.name
    assert page.text_content("#classes") == ", ".join(classifier.classes)
    page.set_input_files("#file", str(digit_file))
    wait_for_label(page)
    assert page.text_content("#top-label") == expected.label
    assert page.is_hidden("#explanation")  # ONNX models cannot be explained: no overlay section
    rows = page.locator("#predictions li")
    assert rows.count() == 5
    assert rows.nth(0).locator(".label").text_content() == expected.label
    assert rows.nth(0).locator(".probability").text_content() == f"{100 * expected.probability:.1f}%"
    page.wait_for_function("document.getElementById('preview').complete")
    box = page.locator("#preview").bounding_box()
    assert box["width"] >= 128 and box["height"] >= 128  # 8x8 pixels, shown large enough to see
    assert page.eval_on_selector("#preview", "e => getComputedStyle(e).imageRendering") == "pixelated"


@pytest.mark.slow
def test_page_works_with_a_token_given_once(start_server, browser, digits_export, digit_file):
    classifier = cnnkit.load(digits_export / "model.onnx")
    url = start_server(create_app(classifier, token="page-token"))
    page = browser.new_page()
    assert page.goto(url + "/").status == 401
    page.goto(url + "/?token=page-token")
    assert "token" not in page.url  # moved out of the address bar and the history
    page.set_input_files("#file", str(digit_file))
    wait_for_label(page)
    assert page.text_content("#top-label") == classifier.predict(str(digit_file))[0].label


@pytest.mark.slow
def test_search_page_shows_the_neighbours_as_a_grid_of_pictures(start_server, browser, digits_run, tmp_path):
    from conftest import make_shapes_folder

    from cnnkit.deploy.index import build_index
    from cnnkit.deploy.serve.search import PAGE_K, create_search_app

    index = build_index(digits_run, make_shapes_folder(tmp_path / "shapes"), out=tmp_path / "indexes", name="shapes")
    page = browser.new_page()
    page.goto(start_server(create_search_app(index, token="grid-token")) + "/?token=grid-token")  # thumbnails too
    page.set_input_files("#file", str(index.file(4)))
    page.wait_for_function(
        f"[...document.querySelectorAll('#neighbours img')].filter(i => i.complete && i.naturalWidth > 0).length"
        f" === {PAGE_K}",
        timeout=15_000,
    )
    cells = page.locator("#neighbours figure")
    assert cells.count() == PAGE_K == 12
    assert cells.nth(0).locator(".path").text_content() == index.paths[4]  # the query itself, first
    assert cells.nth(0).locator(".score").text_content() == "1.000"
    scores = [float(text) for text in page.locator("#neighbours .score").all_text_contents()]
    assert scores == sorted(scores, reverse=True)
    box = cells.nth(0).locator("img").bounding_box()
    assert box["width"] >= 100 and box["height"] >= 100  # a 40x40 file, shown large enough to see


DROP_TEXT_FILE = """() => {
  const files = new DataTransfer();
  files.items.add(new File(["not pixels"], "notes.txt", { type: "text/plain" }));
  const drop = document.getElementById("drop");
  drop.dispatchEvent(new DragEvent("dragover", { dataTransfer: files, bubbles: true, cancelable: true }));
  const highlighted = drop.classList.contains("over");
  drop.dispatchEvent(new DragEvent("drop", { dataTransfer: files, bubbles: true, cancelable: true }));
  return highlighted && !drop.classList.contains("over");
}"""


@pytest.mark.slow
def test_page_takes_a_dropped_file_and_shows_the_refusal_in_one_line(start_server, browser, digits_export):
    page = browser.new_page()
    page.goto(
        start_server(create_app(cnnkit.load(digits_export / "model.onnx"), token="drop-token")) + "/?token=drop-token"
    )
    assert page.evaluate(DROP_TEXT_FILE)  # highlighted while dragged over, plain again once dropped
    page.wait_for_function("document.getElementById('status').className === 'error'", timeout=15_000)
    status = page.text_content("#status")  # 415, not 401: the token went along
    assert status.startswith("Could not classify notes.txt: not an image") and "\n" not in status
    assert page.text_content("#top-label") == "none yet"
