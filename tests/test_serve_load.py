"""Bounded load tests on loopback: concurrent clients against a real ``cnnkit serve`` process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

LOAD_TEST = Path(__file__).resolve().parents[1] / "benchmarks" / "load_test.py"


@pytest.mark.slow
def test_fifty_concurrent_clients_get_no_errors(digits_export):
    pytest.importorskip("uvicorn", reason="the deploy extra provides uvicorn")
    command = [
        sys.executable,
        str(LOAD_TEST),
        str(digits_export / "model.onnx"),
        "--clients",
        "50",
        "--requests",
        "600",
    ]
    result = subprocess.run([*command, "--time-limit", "60"], capture_output=True, text=True, timeout=180)
    report = json.loads(result.stdout.splitlines()[-1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["statuses"] == {"200": 600} and report["errors"] == 0 and report["server_alive"]
    assert 0 < report["p50_ms"] <= report["p99_ms"]


@pytest.mark.slow
def test_sixteen_clients_mixing_explanations_get_no_server_errors(digits_run):
    """The web page's mix (every other request asks for Grad-CAM) against a checkpoint, 4 predictions at once."""
    pytest.importorskip("uvicorn", reason="the deploy extra provides uvicorn")
    command = [sys.executable, str(LOAD_TEST), str(digits_run), "--clients", "16", "--requests", "160"]
    command += ["--explain-share", "0.5", "--max-concurrency", "4", "--time-limit", "120"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout.splitlines()[-1])
    assert set(report["statuses"]) <= {"200", "503"} and report["server_alive"], result.stdout + result.stderr
    assert report["statuses"].get("200", 0) > 0
