"""`resnet serve` over real HTTP on 127.0.0.1: answers, limits, concurrency, and the page in a
real headless browser."""

import asyncio
import base64
import io
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import photo, write_broken
from resnet import Classifier

MAX_UPLOAD_MB = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained):
    import uvicorn

    from resnet.inference.serve import create_app

    clf = Classifier.from_checkpoint(trained[1] / "best.pt", device="cpu")
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(clf, MAX_UPLOAD_MB), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", clf
    srv.should_exit = True
    thread.join(10)


def jpeg(seed: int = 0, size=(64, 48), bright: bool = False) -> bytes:
    buf = io.BytesIO()
    photo(*size, seed=seed, bright=bright).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_photo_gets_the_classifiers_answer(server):
    url, clf = server
    content = jpeg(3, bright=True)
    r = httpx.post(f"{url}/predict?top_k=2", files={"file": ("b.jpg", content, "image/jpeg")})
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    expected = clf.predict([io.BytesIO(content)], top_k=2)[0]
    assert p["filename"] == "b.jpg" and p["label"] == expected["label"]
    assert p["probability"] == pytest.approx(expected["probability"], abs=1e-6)
    assert [t["label"] for t in p["top_k"]] == [c for c, _ in expected["top_k"]]
    assert "cam" not in p


def test_several_files_and_grad_cam(server):
    url, clf = server
    files = [("file", (f"{i}.jpg", jpeg(i), "image/jpeg")) for i in range(3)]
    r = httpx.post(f"{url}/predict?cam=1", files=files)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["filename"] for p in preds] == ["0.jpg", "1.jpg", "2.jpg"]
    for i, p in enumerate(preds):  # each file's own heatmap: the one `Classifier.explain` draws for it
        assert p["cam"].startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(p["cam"].split(",", 1)[1]))) as served:
            own = np.asarray(clf.explain(io.BytesIO(jpeg(i))).overlay().convert("RGB"))
            assert np.array_equal(np.asarray(served.convert("RGB")), own)


def test_a_failing_batch_fails_its_requests_and_the_next_batch_is_served(trained):
    """Two requests merged into one batch whose forward pass raises: both get the error (none
    waits forever), and the model's thread goes on to serve the next request."""
    from resnet.inference.serve import BatchingPredictor

    clf = Classifier.from_checkpoint(trained[1] / "best.pt", device="cpu")
    image = np.asarray(photo(48, 48, seed=1))

    async def scenario():
        predictor = BatchingPredictor(clf)
        predictor.start()
        real, calls = predictor._probabilities, []

        def fails_once(images):
            calls.append(len(images))
            if len(calls) == 1:
                raise RuntimeError("out of memory")
            return real(images)

        predictor._probabilities = fails_once
        first = await asyncio.gather(predictor.predict([image], 1), predictor.predict([image, image], 1),
                                     return_exceptions=True)
        after = await predictor.predict([image], 1)
        await predictor.stop()
        return first, after, calls

    first, after, calls = asyncio.run(scenario())
    assert [str(e) for e in first] == ["out of memory"] * 2 and calls == [3, 1]
    assert after[0]["label"] == clf.predict([image], top_k=1)[0]["label"]


def test_info_and_health(server):
    url, clf = server
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    info = httpx.get(f"{url}/info").json()
    assert info["classes"] == ["a", "b"] and info["input_size"] == clf.transform.img_size
    assert info["max_upload_mb"] == MAX_UPLOAD_MB and info["explain"] is True


def test_bad_uploads_get_clear_refusals(server, tmp_path):
    url, _ = server
    big = b"\xff\xd8" + b"\0" * int(MAX_UPLOAD_MB * 2**20 + 1000)
    r = httpx.post(f"{url}/predict", files={"file": ("huge.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        boundary = b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"s.jpg\"\r\n\r\n"
        yield boundary
        for _ in range(int(MAX_UPLOAD_MB * 16) + 2):
            yield b"\0" * 65536

    r = httpx.post(f"{url}/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413

    r = httpx.post(f"{url}/predict", files={"file": ("notes.txt", b"just some text\n" * 10, "text/plain")})
    assert r.status_code == 415 and "notes.txt" in r.json()["detail"]
    broken = write_broken(tmp_path)
    r = httpx.post(f"{url}/predict", files={"file": ("bomb.png", broken["pixel_bomb"].read_bytes(), "image/png")})
    assert r.status_code == 415 and "decompression bomb" in r.json()["detail"]
    r = httpx.post(f"{url}/predict", data={"other": "x"})
    assert r.status_code == 400
    assert httpx.get(f"{url}/health").status_code == 200


def test_a_hundred_concurrent_requests_all_answered(server):
    url, clf = server
    bodies = [jpeg(i % 10, bright=i % 2 == 1) for i in range(100)]

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            return await asyncio.gather(*(client.post(f"{url}/predict", files={"file": (f"{i}.jpg", b, "image/jpeg")})
                                          for i, b in enumerate(bodies)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 100
    expected = [row["label"] for row in clf.predict([io.BytesIO(b) for b in bodies])]
    assert [r.json()["predictions"][0]["label"] for r in responses] == expected
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_page_in_a_real_browser_shows_the_label(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    url, clf = server
    path = tmp_path / "dog.jpg"
    path.write_bytes(jpeg(5, size=(120, 90), bright=True))
    expected = clf.predict([path])[0]["label"]
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('px')")
            page.set_input_files("#files", str(path))
            label = page.locator(".card .label:not(.pending)")
            label.wait_for(timeout=30_000)
            assert label.text_content() == expected
            assert page.locator(".card .bar").count() == 2  # both classes, with their bars
            page.wait_for_function("document.querySelector('.card figure:nth-child(2) img').src.startsWith('data:')")
        finally:
            browser.close()
