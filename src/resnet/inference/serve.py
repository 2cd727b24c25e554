"""`resnet serve`: a web page and a JSON API around a `Classifier` (FastAPI + uvicorn).

- `GET /` the page: drop or pick photos, see the top classes and the Grad-CAM overlay;
- `POST /predict` multipart field `file` (one or more), `?top_k=K&cam=1`; JSON top-k per file;
- `GET /health`, `GET /info` (classes, input size, how the model runs).

Safe by default: binds 127.0.0.1; a request body over `max_upload_mb` is refused with 413 before
it is read in full; anything that is not an image, or a decompression bomb, gets 415 with the
reason. The model runs on one thread of its own, off the event loop; requests that arrive while
it is busy wait in a queue and are run together as one batch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .. import data as D
from ..constants import SERVE_BATCH
from ..errors import ConfigError, MachineError
from ..outputs import jsonable
from .predict import Classifier

MAX_FILES = 32     # per request: a page sends one photo per request, a script a few


class Rejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class _Job:
    images: list[np.ndarray]
    top_k: int
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class BatchingPredictor:
    """Runs `Classifier` work on one thread: queued prediction requests are merged into batches of
    up to `max_batch` images (one forward pass instead of one per request); Grad-CAM runs on the
    same thread, between batches, since the model is not shared between threads."""

    def __init__(self, clf: Classifier, max_batch: int = SERVE_BATCH):
        self.clf, self.max_batch = clf, max_batch
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.queue: asyncio.Queue[_Job] | None = None
        self.worker: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        self.executor.shutdown(wait=True)

    async def predict(self, images: list[np.ndarray], top_k: int) -> list[dict[str, Any]]:
        job = _Job(images, top_k)
        await self.queue.put(job)
        return await job.done

    async def explain(self, image: np.ndarray) -> str:
        """The Grad-CAM overlay as a PNG data URI."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, _cam_data_uri, self.clf, image)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Job | None = None
        while True:
            jobs = [carry or await self.queue.get()]
            carry, count = None, len(jobs[0].images)
            while not self.queue.empty():
                job = self.queue.get_nowait()
                if count + len(job.images) > self.max_batch:
                    carry = job  # first in the next batch
                    break
                jobs.append(job)
                count += len(job.images)
            try:
                images = [img for job in jobs for img in job.images]
                probs = await loop.run_in_executor(self.executor, self._probabilities, images)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the failure
                for job in jobs:
                    if not job.done.done():
                        job.done.set_exception(e)
                continue
            start = 0
            for job in jobs:
                if not job.done.done():  # a request whose client left is cancelled
                    job.done.set_result(self.clf.top(probs[start:start + len(job.images)], job.top_k))
                start += len(job.images)

    def _probabilities(self, images: list[np.ndarray]):
        return self.clf.logits(images).softmax(1)


def _cam_data_uri(clf: Classifier, image: np.ndarray) -> str:
    buf = io.BytesIO()
    clf.explain(image).overlay().save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def decode_upload(content: bytes, name: str) -> np.ndarray:
    """An upload's RGB pixels by the data module's rules, or `Rejected` 415 with the reason."""
    try:
        return np.asarray(D.load_image(io.BytesIO(content)))
    except Exception as e:  # noqa: BLE001 - whatever the decoder says, the client sent a bad file
        raise Rejected(415, f"{name or 'upload'}: not a readable image ({D.read_error(e)})") from e


async def read_bounded(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes: from
    Content-Length before reading, or while reading a body sent without one."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejected(413, f"upload of {int(declared) / 2**20:.1f} MiB is over the limit of {limit / 2**20:.1f} MiB")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Rejected(413, f"upload is over the limit of {limit / 2**20:.1f} MiB")
    return bytes(body)


def create_app(clf: Classifier, max_upload_mb: float = 10.0) -> FastAPI:
    predictor = BatchingPredictor(clf)
    limit = int(max_upload_mb * 2**20)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        predictor.start()
        yield
        await predictor.stop()

    app = FastAPI(title="resnet", lifespan=lifespan)
    page = resources.files(__package__).joinpath("page.html").read_text()

    @app.exception_handler(Rejected)
    async def rejected(request, exc: Rejected):
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {**clf.describe(), "max_upload_mb": max_upload_mb, "max_files": MAX_FILES}

    @app.post("/predict")
    async def predict(request: Request, top_k: int = 3, cam: bool = False) -> dict[str, Any]:
        body = await read_bounded(request, limit)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=MAX_FILES)
        except Exception as e:  # noqa: BLE001 - a malformed multipart body
            raise Rejected(400, f"expected a multipart form with images in field 'file': {e}") from e
        uploads = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
        if not uploads:
            raise Rejected(400, "no images: send them as multipart form field 'file'")
        if top_k < 1:
            raise Rejected(400, f"top_k must be at least 1, not {top_k}")
        images = [await run_in_threadpool(decode_upload, await f.read(), f.filename or "") for f in uploads]
        rows = await predictor.predict(images, top_k)
        for f, img, row in zip(uploads, images, rows):
            row["filename"] = f.filename
            if cam and clf.model is not None:
                row["cam"] = await predictor.explain(img)
        return {"predictions": [jsonable(r) for r in rows]}

    return app


def serve(clf: Classifier, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 10.0) -> None:
    import uvicorn

    print(f"serving {clf.source} on http://{host}:{port}/ ({len(clf.classes)} classes, "
          f"{clf.transform.img_size} px, {clf.describe()['precision']} on {clf.engine.name}, {clf.net.device.type})")
    if not is_loopback(host):
        print(f"warning: --host {host} makes the page and the API reachable from the network, without "
              "authentication: anyone who can reach this machine can use them", file=sys.stderr)
    uvicorn.run(create_app(clf, max_upload_mb), host=host, port=port, log_level="warning")


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is on this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress
    import socket

    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
    except (OSError, ValueError):
        return False


def check_listening(host: str, port: int, max_upload_mb: float) -> None:
    """Before the model is loaded: a port in range, an upload limit that lets a photo in, a host
    that resolves (exit 2), and a port free to listen on (exit 1: the machine's, not the flag's)."""
    import socket

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be in 1..65535, not {port}")
    if not max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb must be positive, not {max_upload_mb}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: {e.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as e:
            raise MachineError(f"cannot listen on {host}:{port}: {e.strerror}") from None
