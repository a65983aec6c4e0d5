"""Who may call the service: the bearer token, CORS, the start-up warning and the checks on serve's flags."""

import hmac
import warnings

import pytest
from conftest import run_cli

import cnnkit

pytest.importorskip("fastapi", reason="the deploy extra (pip install -e '.[test]') provides fastapi")
pytest.importorskip("httpx", reason="the test extra provides httpx")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # starlette 1.x suggests httpx2; FastAPI documents httpx
    from fastapi.testclient import TestClient

from cnnkit.deploy.serve import serve
from cnnkit.deploy.serve.access import TOKEN_ENV, is_loopback, read_token
from cnnkit.deploy.serve.app import create_app
from cnnkit.errors import CnnkitError

TOKEN = "s3cret-token"
ORIGIN = "https://app.example.org"


@pytest.fixture(scope="module")
def onnx_classifier(digits_export):
    return cnnkit.load(digits_export / "model.onnx")


@pytest.fixture(scope="module")
def guarded(onnx_classifier):
    return TestClient(create_app(onnx_classifier, token=TOKEN))


@pytest.fixture(scope="module")
def digit_png():
    import io

    from PIL import Image

    stream = io.BytesIO()
    Image.new("L", (8, 8), 128).save(stream, "PNG")
    return stream.getvalue()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["none", "wrong", "no-scheme", "basic"],
)
@pytest.mark.parametrize(
    ("method", "path"), [("post", "/predict"), ("get", "/"), ("get", "/docs"), ("get", "/openapi.json")]
)
def test_token_required_on_every_endpoint_but_health(guarded, digit_png, headers, method, path):
    response = getattr(guarded, method)(path, headers=headers, **({"content": digit_png} if method == "post" else {}))
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in response.json()["detail"]
    assert guarded.get("/health").json()["status"] == "ok"  # a load balancer's probe needs no token


def test_token_admits_the_right_caller(guarded, digit_png):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert guarded.post("/predict", content=digit_png, headers=bearer).status_code == 200
    assert guarded.get("/openapi.json", headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
    assert guarded.get(f"/?token={TOKEN}").status_code == 200  # a browser opening the page cannot send a header
    assert guarded.get(f"/docs?token={TOKEN}").status_code == 200
    assert guarded.post(f"/predict?token={TOKEN}", content=digit_png).status_code == 401  # pages only


def test_token_is_compared_in_constant_time(guarded, digit_png, monkeypatch):
    calls = []

    def spy(given, expected):
        calls.append((given, expected))
        return hmac_compare(given, expected)

    hmac_compare = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert guarded.post("/predict", content=digit_png, headers={"Authorization": "Bearer guess"}).status_code == 401
    assert calls == [(b"guess", TOKEN.encode())]


def test_read_token_from_flag_file_or_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert read_token() is None
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert read_token() == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert read_token(token_file=tmp_path / "token") == "from-file"  # a flag wins over the environment
    assert read_token("from-flag") == "from-flag"


def test_read_token_refuses_unusable_tokens(tmp_path):
    (tmp_path / "blank").write_text("  \n")
    with pytest.raises(CnnkitError, match="not both"):
        read_token("a", tmp_path / "blank")
    with pytest.raises(CnnkitError, match=r"--token-file .*blank gives an empty token"):
        read_token(token_file=tmp_path / "blank")
    with pytest.raises(CnnkitError, match=r"--token-file .*missing cannot be read"):
        read_token(token_file=tmp_path / "missing")
    with pytest.raises(CnnkitError, match="printable ASCII"):
        read_token("caf\u00e9")


def test_cors_is_off_by_default(onnx_classifier):
    client = TestClient(create_app(onnx_classifier))
    preflight = client.options("/predict", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in client.get("/health", headers={"Origin": ORIGIN}).headers


def test_cors_allows_only_the_named_origins(onnx_classifier):
    client = TestClient(create_app(onnx_classifier, token=TOKEN, cors_origins=[ORIGIN]))
    request = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    preflight = client.options("/predict", headers={"Origin": ORIGIN, **request})  # browsers send no token here
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    refused = client.options("/predict", headers={"Origin": "https://evil.example.com", **request})
    assert "access-control-allow-origin" not in refused.headers
    denied = client.get("/openapi.json", headers={"Origin": ORIGIN})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ORIGIN


def test_is_loopback_tells_this_machine_from_the_network():
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.org"]))


@pytest.mark.parametrize(
    ("host", "token", "warned"), [("0.0.0.0", None, True), ("0.0.0.0", TOKEN, False), ("127.0.0.1", None, False)]
)
def test_serve_warns_when_reachable_from_other_machines_without_a_token(
    digits_export, monkeypatch, capsys, host, token, warned
):
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append(options))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    serve(digits_export / "model.onnx", host=host, port=8123, token=token)
    output = capsys.readouterr()
    assert started[0]["host"] == host and started[0]["port"] == 8123
    assert ("other machines and no token" in output.err) is warned
    assert ("bearer token is required" in output.out) is (token is not None)


@pytest.mark.parametrize(
    "flags",
    [
        ["--port", "99999"],
        ["--port", "0"],
        ["--max-upload-mb", "-1"],
        ["--max-concurrency", "0"],
        ["--max-queue", "-5"],
        ["--timeout", "nan"],
        ["--cors", "https://app.example.org/page"],
        ["--token-file", "/nonexistent/token"],
    ],
    ids=lambda flags: flags[0],
)
def test_serve_cli_refuses_bad_flags_in_one_line(tmp_path, flags):
    result = run_cli("serve", str(tmp_path / "missing.onnx"), *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and flags[0] in result.stderr
