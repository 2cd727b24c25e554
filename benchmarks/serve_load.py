"""`resnet serve` under load: concurrent clients on this machine's loopback, one photo per request,
a bounded number of requests and a time limit for each level; requests per second and the median
and 95th-percentile latency at each number of clients, for each engine, with the server's batching
as it is (requests that wait are run together, up to constants.SERVE_BATCH images).

    python benchmarks/serve_load.py [MODEL] [--engines auto,torch,onnxruntime,openvino]
                                    [--clients 1,8,32] [--requests 160] [--seconds 60]

MODEL defaults to a ResNet-18 at 224 px with random weights (speed does not depend on them); the
photo is a 500x375 JPEG, the size of a Kaggle dogs-vs-cats photo. The server and the clients
share this machine's cores, as they would on a 2-core box serving its own users: the figures are
what one such box serves, not the model alone. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

HOST = "127.0.0.1"  # loopback only


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def photo() -> bytes:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500]
    pixels = np.stack([x / 2, y / 1.5, (x + y) / 3.5], -1) + rng.normal(0, 12, (375, 500, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def wait_ready(url: str, server: subprocess.Popen, limit_s: float = 180) -> dict:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return httpx.get(f"{url}/info", timeout=5).json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer within {limit_s:.0f} s")


def load(url: str, body: bytes, clients: int, requests: int, seconds: float) -> dict[str, float]:
    """`clients` threads, each sending one photo at a time until `requests` were sent in all or
    `seconds` passed; every answer must be a 200 with a label."""
    latencies: list[float] = []
    errors: list[str] = []
    left = [requests]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < deadline:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                t = time.perf_counter()
                r = http.post(f"{url}/predict", files={"file": ("photo.jpg", body, "image/jpeg")})
                elapsed = time.perf_counter() - t
                if r.status_code != 200 or not r.json()["predictions"][0].get("label"):
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    return
                with lock:
                    latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors or not latencies:
        raise SystemExit(f"{len(errors)} requests failed: {errors[:1]}")
    latencies.sort()
    return {"requests": len(latencies), "rps": len(latencies) / wall, "p50": statistics.median(latencies) * 1e3,
            "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1e3}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?")
    p.add_argument("--engines", default="auto,torch,onnxruntime,openvino")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--requests", type=int, default=160, help="requests per level, at most")
    p.add_argument("--seconds", type=float, default=60, help="time per level, at most")
    a = p.parse_args()
    from resnet import create_model
    from machine import cpu_description
    from resnet.throughput import save_benchmark_checkpoint

    body = photo()
    with tempfile.TemporaryDirectory() as tmp:
        model = a.model or str(save_benchmark_checkpoint(Path(tmp) / "resnet18.pt",
                                                         create_model("resnet18", num_classes=1000), "resnet18", 224))
        rows = []
        for engine in a.engines.split(","):
            port = free_port()
            url = f"http://{HOST}:{port}"
            server = subprocess.Popen([sys.executable, "-m", "resnet", "serve", model, "--host", HOST,
                                       "--port", str(port), "--engine", engine],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                info = wait_ready(url, server)
                load(url, body, 1, 3, 30)  # warm-up: first requests pay for kernel selection
                for clients in (int(c) for c in a.clients.split(",")):
                    r = load(url, body, clients, a.requests, a.seconds)
                    rows.append((engine, f"{info['engine']}, {info['precision']}", clients, r))
                    print(f"{engine} {clients} clients: {r['rps']:.1f} req/s, p50 {r['p50']:.0f} ms, "
                          f"p95 {r['p95']:.0f} ms ({r['requests']} requests)", flush=True)
            finally:
                server.terminate()
                server.wait(30)
    print(cpu_description())
    print(f"resnet serve {Path(model).name}, one {len(body) // 1024} KiB JPEG per request, loopback")
    print("| --engine | runs as | clients | requests/s | p50 ms | p95 ms | requests |")
    print("|---|---|---|---|---|---|---|")
    for engine, runs, clients, r in rows:
        print(f"| {engine} | {runs} | {clients} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['requests']} |")


if __name__ == "__main__":
    main()
