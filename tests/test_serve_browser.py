"""The web page in a real headless Chromium: pick an image, read the predicted label off the page."""

import shutil
import socket
import threading
import time

import pytest
from PIL import Image

import cnnkit

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
def live_server(digits_export):
    """The app on a free loopback port, served by uvicorn in a thread; yields its base URL."""
    pytest.importorskip("uvicorn", reason="the deploy extra provides uvicorn")
    import uvicorn

    from cnnkit.deploy.serve.app import create_app

    app = create_app(cnnkit.load(digits_export / "model.onnx"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.slow
def test_page_shows_the_predicted_label(live_server, digits_export, tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="the test extra provides playwright")
    from cnnkit.data import load_data

    test = load_data("digits").test
    Image.fromarray(test.images[5, 0].numpy()).resize((64, 64), Image.Resampling.NEAREST).save(tmp_path / "digit.png")
    [expected] = cnnkit.load(digits_export / "model.onnx").predict(str(tmp_path / "digit.png"))
    with sync_playwright.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(live_server + "/")
            assert page.text_content("#top-label") == "none yet"
            page.set_input_files("#file", str(tmp_path / "digit.png"))
            page.wait_for_function("document.getElementById('top-label').textContent !== 'none yet'", timeout=15_000)
            assert page.text_content("#top-label") == expected.label
            assert page.is_hidden("#explanation")  # ONNX models cannot be explained: no overlay section
            rows = page.locator("#predictions li")
            assert rows.count() == 5
            assert rows.nth(0).locator(".label").text_content() == expected.label
            assert rows.nth(0).locator(".probability").text_content() == f"{100 * expected.probability:.1f}%"
        finally:
            browser.close()
