"""Bounded load test of ``cnnkit serve`` on loopback: concurrent clients, a fixed number of requests, a time cap.

Starts ``python -m cnnkit serve MODEL`` on a free 127.0.0.1 port, sends ``--requests``
POST /predict requests from ``--clients`` concurrent connections (each a real test image),
and reports every status seen, the latency p50/p99 and the throughput. Any status other
than 200 counts as an error; the exit code is 1 when there is one. The server runs with
a fresh bearer token, so the check of every request is part of what is measured; with a
checkpoint, ``--explain-share`` of the requests ask for a Grad-CAM overlay, as the web page does.

    python benchmarks/load_test.py runs/export/model.onnx --clients 50 --requests 3000
    python benchmarks/load_test.py runs/train --clients 16 --requests 400 --explain-share 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_images(count: int = 32) -> list[bytes]:
    from sklearn.datasets import load_digits

    images = []
    for pixels in load_digits().images[:count]:
        stream = io.BytesIO()
        Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8)).save(stream, "PNG")
        images.append(stream.getvalue())
    return images


async def load(
    url: str, images: list[bytes], clients: int, requests: int, time_limit: float, token: str, explain_share: float
) -> dict:
    """Send ``requests`` requests from ``clients`` workers, stopping early at ``time_limit`` seconds."""
    statuses: collections.Counter = collections.Counter()
    latencies: list[float] = []
    sent = 0
    start = time.perf_counter()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() - start < time_limit:
            body = images[sent % len(images)]
            explain = (sent * explain_share) % 1 + explain_share >= 1  # every 1/share-th request, spread evenly
            sent += 1
            began = time.perf_counter()
            try:
                response = await client.post(url + "/predict", content=body, params={"explain": str(explain).lower()})
                statuses[str(response.status_code)] += 1
            except httpx.HTTPError as error:
                statuses[type(error).__name__] += 1
            latencies.append(time.perf_counter() - began)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(limits=limits, timeout=30.0, headers=headers) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    seconds = time.perf_counter() - start
    milliseconds = np.array(latencies) * 1000.0
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": round(seconds, 2),
        "statuses": dict(statuses),
        "errors": sum(count for status, count in statuses.items() if status != "200"),
        "p50_ms": round(float(np.percentile(milliseconds, 50)), 2),
        "p99_ms": round(float(np.percentile(milliseconds, 99)), 2),
        "requests_per_s": round(len(latencies) / seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="run directory, checkpoint or .onnx model to serve")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--time-limit", type=float, default=120.0, help="stop sending after this many seconds")
    parser.add_argument("--explain-share", type=float, default=0.0, help="share of requests with ?explain=true")
    parser.add_argument("--max-concurrency", type=int, default=2, help="the server's --max-concurrency")
    args = parser.parse_args()

    port = free_port()
    token = secrets.token_urlsafe(16)
    command = [sys.executable, "-m", "cnnkit", "serve", args.model, "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--max-concurrency", str(args.max_concurrency)],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "CNNKIT_SERVE_TOKEN": token},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print("the server did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)
        result = asyncio.run(
            load(url, test_images(), args.clients, args.requests, args.time_limit, token, args.explain_share)
        )
        result["server_alive"] = server.poll() is None and httpx.get(url + "/health").status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps(result))
    return 0 if result["errors"] == 0 and result["server_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
