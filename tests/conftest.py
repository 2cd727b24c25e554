"""Images the tests make themselves: photo-like pictures, and every broken or odd file a real
folder holds (nothing is read from the network or committed)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# The same model run in bf16 by two sets of kernels (eager and Inductor-compiled) gave logits up to
# 2.5 % of their scale apart, and bf16 against fp32 up to 3.3 % (ResNet-20, three seeds, on a CPU
# with AVX-512-BF16 and with bf16 emulated on AVX2: 0.4-2.5 % and 1.0-3.3 %). A wrong model is off
# by the whole scale. fp32 keeps fp32's tolerance.
BF16_LOGITS_RTOL = 0.1
FP32_LOGITS_ATOL = 1e-4


def logits_tolerance(dtype, logits) -> float:
    """How far apart two correct runs of one model's `logits` may be in autocast `dtype` (None: fp32)."""
    return FP32_LOGITS_ATOL if dtype is None else BF16_LOGITS_RTOL * max(1.0, float(logits.abs().max()))


def photo(w: int = 96, h: int = 72, seed: int = 0, bright: bool = False) -> Image.Image:
    """Smooth gradients, a blob and sensor noise: compresses and resizes like a photo does.
    `bright` shifts the colours, so two classes are learnable."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w, y / h, (x + y) / (w + h)], -1) * 160 + (80 if bright else 0)
    cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.1, 0.3) * min(w, h)
    blob = ((y - cy) ** 2 + (x - cx) ** 2 < r * r)[..., None] * rng.uniform(-60, 60, 3)
    noise = rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(base + blob + noise, 0, 255).astype(np.uint8), "RGB")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(w: int, h: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))


def write_broken(folder: Path) -> dict[str, Path]:
    """One file of each broken kind; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    photo(200, 150, seed=99).save(buf, "JPEG", quality=90)
    files = {
        "zero_byte": (folder / "empty.jpg", b""),
        "truncated": (folder / "truncated.jpg", buf.getvalue()[: len(buf.getvalue()) // 2]),
        "text": (folder / "notes.jpg", b"this is not an image, just text saved as .jpg\n" * 20),
        "header_only_png": (folder / "header_only.png", png_header(64, 64)),
        "pixel_bomb": (folder / "bomb.png", png_header(40000, 40000) + png_chunk(
            b"IDAT", zlib.compress(b"\0" * 100)) + png_chunk(b"IEND", b"")),
    }
    for path, content in files.values():
        path.write_bytes(content)
    return {k: p for k, (p, _) in files.items()}


def write_odd(folder: Path, seed: int = 0) -> dict[str, tuple[Path, tuple[int, int]]]:
    """Odd but valid images; name -> (path, size after EXIF orientation)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = photo(80, 60, seed=seed)
    out: dict[str, tuple[Path, tuple[int, int]]] = {}

    def save(name: str, img: Image.Image, fname: str, size=(80, 60), **kw):
        path = folder / fname
        img.save(path, **kw)
        out[name] = (path, size)

    save("cmyk", base.convert("CMYK"), "cmyk.jpg", format="JPEG")
    sixteen = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    save("16bit", sixteen, "sixteen.png", format="PNG")
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    save("palette_transparent", pal, "palette.png", format="PNG", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown: 80x60 stored, 60x80 seen
    save("exif_rotated", base, "rotated.jpg", size=(60, 80), format="JPEG", exif=exif.tobytes())
    save("webp", base, "image.webp", format="WEBP")
    save("bmp", base, "image.bmp", format="BMP")
    save("gif", base.convert("P"), "image.gif", format="GIF")
    save("png_named_JPG", base, "actually_png.JPG", format="PNG")
    save("grey_alpha", base.convert("LA"), "grey_alpha.png", format="PNG")
    return out


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Training caches small datasets by itself: keep that out of the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def messy_folder(tmp_path: Path) -> tuple[Path, dict, dict]:
    """cats/ and dogs/ with 12 photos each, plus every odd and broken kind spread over them."""
    root = tmp_path / "messy"
    for c, bright in (("cats", False), ("dogs", True)):
        for i in range(12):
            (root / c).mkdir(parents=True, exist_ok=True)
            photo(96, 72, seed=i + (100 if bright else 0), bright=bright).save(root / c / f"{c}.{i}.jpg", quality=85)
    odd = write_odd(root / "cats")
    broken = write_broken(root / "dogs")
    # hidden files and folders (editors' and viewers' thumbnails): valid images, ignored all the same
    photo(96, 72, seed=7).save(root / "dogs" / ".hidden.jpg", quality=85)
    (root / "dogs" / ".thumbnails").mkdir()
    photo(96, 72, seed=8).save(root / "dogs" / ".thumbnails" / "dog.0.jpg", quality=85)
    return root, odd, broken


def write_tiny(root: Path) -> Path:
    """Two learnable classes of 16 small photos each, for quick training runs."""
    for c, bright in (("a", False), ("b", True)):
        (root / c).mkdir(parents=True)
        for i in range(16):
            photo(40, 40, seed=i + (50 if bright else 0), bright=bright).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return write_tiny(tmp_path / "tiny")


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, run folder) of a small ResNet-20 trained once for the whole session, in the
    precision chosen without timing (--deterministic): on a bf16 CPU a timed choice is a race that
    a loaded machine can decide either way, and the tests on it expect one."""
    from resnet.cli import main

    root = tmp_path_factory.mktemp("trained") / "data"
    for c, bright in (("a", False), ("b", True)):
        (root / c).mkdir(parents=True)
        for i in range(12):
            photo(40, 40, seed=i + (50 if bright else 0), bright=bright).save(root / c / f"{i}.png")
    out = root.parent / "run"
    assert main(["train", str(root), "--arch", "resnet20", "--img-size", "24", "--epochs", "3",
                 "--batch-size", "8", "--workers", "0", "--out", str(out), "--deterministic",
                 "--cache-dir", str(root.parent / "cache")]) == 0
    return root, out


class StepClock:
    """A run's clock (`budget.now`) that moves only with its training: `step_s` per training step
    at 24 px (times (crop / 24) ** `power`), nothing for the rest (set-up, validation, saving);
    forward + backward "measured" at `compute_s` a batch at 24 px, growing with pixels. A time
    budget then plans, refits and stops the same way on any machine, however loaded: no test
    waits on, or races, the wall clock."""

    def __init__(self, step_s: float = 0.5, compute_s: float = 0.4, power: float = 0.0):
        self.t, self.step_s, self.compute_s, self.power = 1000.0, step_s, compute_s, power

    def now(self) -> float:
        return self.t

    def compute(self, model, sizes, *args) -> tuple[float, float]:
        return self.compute_s * (min(sizes) / 24) ** 2, 2.0

    def install(self, set_attr=setattr) -> "StepClock":
        """The run's clock and timings replaced with this one (`set_attr`: monkeypatch's, in a test)."""
        from types import SimpleNamespace

        from resnet.training import budget, loop

        set_attr(budget, "time", SimpleNamespace(monotonic=self.now))
        set_attr(loop, "compute_time_by_size", self.compute)
        real = loop.forward_loss

        def forward_loss(net, criterion, batch, *args):  # a training step's
            self.t += self.step_s * (batch.images.shape[-1] / 24) ** self.power
            return real(net, criterion, batch, *args)

        set_attr(loop, "forward_loss", forward_loss)
        return self


@pytest.fixture
def step_clock(monkeypatch) -> StepClock:
    return StepClock().install(monkeypatch.setattr)


@pytest.fixture
def engine_clock(monkeypatch):
    """`pin(name)`: `--engine auto` finds engine `name` the fastest (fake timings, no clock), so
    that what a test sees never depends on which engine a loaded machine happened to time faster
    (int8 kernels of onnxruntime and OpenVINO round differently)."""
    from resnet.inference import runtime

    def pin(name: str) -> None:
        monkeypatch.setattr(runtime, "net_seconds", lambda net, *a: 0.1 if getattr(net, "name", "torch") == name else 0.2)

    return pin


def needs_datasets():
    return pytest.mark.skipif(not (DATASETS / "catsdogs").is_dir(), reason="../shared/datasets is absent")


def killed_before_epoch(monkeypatch, run, n: int = 2) -> None:
    """`run()` as a process that dies between epochs n - 1 and n (a KeyboardInterrupt when the
    sampler is set to epoch n): its last.pt holds epoch n - 1."""
    from resnet import data as D

    real = D.EpochSampler.set_epoch

    def dies(self, epoch, start=0, size=None):
        if epoch == n - 1:
            raise KeyboardInterrupt
        real(self, epoch, start, size)

    monkeypatch.setattr(D.EpochSampler, "set_epoch", dies)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(D.EpochSampler, "set_epoch", real)

