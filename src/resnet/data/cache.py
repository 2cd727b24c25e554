"""The decoded cache: a folder's images decoded once into one flat uint8 memory map plus a JSON
index, keyed by the file list, sizes, mtimes and resolution (a changed file means a new key, so a
stale cache is never read), built by one process per machine, and kept under a size limit by
dropping the least recently used caches that no running process holds."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import PIL
from PIL import Image
from tqdm import tqdm

from ..constants import CACHE_DIGEST_BLOCK_BYTES, CACHE_DIGEST_BLOCKS, CACHE_LIMIT_BYTES, CACHE_POLL_S
from ..errors import ConfigError
from ..outputs import write_text_atomically
from .decode import UnreadableImage, read_images
from .files import Sample
from .transforms import EvalTransform, pixels, resize_size_for, resized_crop, shorter_side_size


# Part of every cache's key: bump it whenever the pixels a cache holds would change (decoding,
# resampling, what is stored), so no run reads pixels made by older code. 2: evaluation crops are
# decoded at full resolution (no JPEG draft). 3: the index records the pixels' sampled digest.
CACHE_FORMAT = 3

# The decoded caches of a user are kept under this many GiB (default `constants.CACHE_LIMIT_BYTES`).
CACHE_LIMIT_ENV = "RESNET_CACHE_LIMIT_GB"

# Open lock files of the caches this process uses, held for its lifetime (and by its forked
# workers, which inherit them): a shared `flock` on each says "in use" to every other process.
_HELD: dict[Path, int] = {}


class DecodedCache:
    """Every image decoded once and resized (shorter side `size`, the long side capped at twice
    that by a centre crop) into one uint8 memory-mapped file: later epochs and evaluations read
    pixels instead of decoding JPEGs. With `crop`, an evaluation transform, what is stored is that
    transform's own output: evaluation from the cache is then a copy, and only a dataset with that
    same transform may read it. Keyed by the file list, sizes, mtimes, `size`, `crop`, the cache
    format and Pillow's major version, so any change makes a new cache."""

    def __init__(self, root: str | Path, paths: Sequence[str], size: int, crop: EvalTransform | None = None):
        self.size, self.crop = size, crop
        crop_key = [crop.img_size, crop.resize_size] if crop is not None else None
        key = hashlib.sha256(json.dumps([CACHE_FORMAT, PIL.__version__.split(".")[0], size, crop_key] + [
            [p, os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in paths]).encode()).hexdigest()[:16]
        self.dir = Path(root) / key
        self.index_file = self.dir / "index.json"
        self.pixels_file = self.dir / "pixels.u8"
        self.paths = list(paths)
        self._array: np.ndarray | None = None
        self.entries: list[list] = []  # [offset, h, w] per path, or [-1, reason]
        self.damage: str | None = None  # why the cache on disk cannot be read, when it cannot
        self.load_index()

    def load_index(self) -> None:
        """The index, when it is there and whole, with the pixels it describes (`damage`): a cache
        is a copy, so a damaged one is decoded again, never read or blamed on the user."""
        self.entries, self.damage = [], None
        if not self.index_file.exists():
            return
        try:
            index = json.loads(self.index_file.read_text())
            entries, digest = index["entries"], index["digest"]
        except (OSError, ValueError, TypeError, KeyError) as e:
            self.damage = f"its index cannot be read ({type(e).__name__})"
            return
        self.damage = _damage(entries, len(self.paths), self.pixels_file, digest)
        if self.damage is None:
            self.entries = entries

    @property
    def ready(self) -> bool:
        return bool(self.entries)

    def _fit(self, im: Image.Image) -> np.ndarray:
        if self.crop is not None:
            return self.crop(im).permute(1, 2, 0).numpy()
        a = pixels(im)
        h, w = a.shape[:2]
        rw, rh = shorter_side_size(w, h, self.size)
        cw, ch = min(rw, 2 * self.size), min(rh, 2 * self.size)  # the long side capped: centre crop
        return resized_crop(a, (0, 0, w, h), (rw, rh), ((rw - cw) // 2, (rh - ch) // 2, cw, ch))

    def build(self, progress: Callable[[Iterator], Iterator] = iter) -> None:
        """Decode everything once (failures recorded, not raised); written to a temporary name and
        renamed, so an interrupted build is simply rebuilt."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"pixels.{os.getpid()}.tmp"
        entries, offset = [], 0
        with open(tmp, "wb") as f:
            for img in progress(_decode_all(self.paths, None if self.crop is not None else self.size)):
                if isinstance(img, str):
                    entries.append([-1, img])
                    continue
                a = self._fit(img)
                f.write(a.tobytes())
                entries.append([offset, a.shape[0], a.shape[1]])
                offset += a.size
        digest = _sampled_digest(tmp)
        os.replace(tmp, self.pixels_file)
        write_text_atomically(self.index_file, json.dumps({"size": self.size, "entries": entries, "digest": digest}))
        self.entries, self.damage = entries, None

    def get(self, i: int) -> np.ndarray:
        """The stored HWC uint8 pixels: a view of the (copy-on-write) memory map, no copy."""
        entry = self.entries[i]
        if entry[0] < 0:
            raise UnreadableImage(entry[1])
        if self._array is None:  # opened lazily, so each DataLoader worker maps it itself
            # copy-on-write: torch accepts the views as writable; nothing writes, so nothing copies
            self._array = np.memmap(self.pixels_file, dtype=np.uint8, mode="c")
        offset, h, w = entry
        return self._array[offset:offset + h * w * 3].reshape(h, w, 3)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


def _damage(entries: Any, count: int, pixels: Path, digest: Any) -> str | None:
    """What is wrong with a cache whose index lists `entries` for `count` images (None: nothing):
    an entry per image, each [offset, h, w] following the last or [-1, reason], the pixels file
    as long as they add up to, and its sampled digest the one the index recorded."""
    if not isinstance(entries, list) or len(entries) != count:
        return "its index does not list every image"
    end = 0
    for e in entries:
        if isinstance(e, list) and len(e) == 2 and e[0] == -1 and isinstance(e[1], str):
            continue
        if not (isinstance(e, list) and len(e) == 3 and all(isinstance(v, int) for v in e) and e[0] == end
                and e[1] > 0 and e[2] > 0):
            return "its index is inconsistent"
        end += e[1] * e[2] * 3
    try:
        size = pixels.stat().st_size
    except OSError:
        return "its pixels file is missing"
    if size != end:
        return f"its pixels file holds {size} bytes, not the {end} its index lists"
    if _sampled_digest(pixels) != digest:
        return "its pixels differ from those it was written with"
    return None


def _sampled_digest(path: Path) -> str:
    """A checksum of `CACHE_DIGEST_BLOCKS` blocks spread evenly over a pixels file, and of its
    size: reading a few hundred KiB tells a file overwritten or zeroed in place from the one
    written, where hashing every byte of a multi-GiB cache would cost seconds each run."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with open(path, "rb") as f:
        for k in range(CACHE_DIGEST_BLOCKS):
            f.seek(size * k // CACHE_DIGEST_BLOCKS)
            digest.update(f.read(CACHE_DIGEST_BLOCK_BYTES))
    return digest.hexdigest()


def _decode_all(paths: Sequence[str], draft_size: int | None) -> Iterator[Image.Image | np.ndarray | str]:
    for p in paths:
        yield read_images([p], draft_size)[0]


def build_cache(samples: Sequence[Sample], cache_root: str | Path, size: int,
                progress: Callable[[Iterator], Iterator] = iter, crop: EvalTransform | None = None,
                builder: bool = True) -> DecodedCache:
    """The cache of `samples`, built unless it exists. Of several processes on one machine, one is
    the `builder`; the others wait for its finished index (written last, by an atomic rename), so
    the images are decoded once per machine and nobody reads a half-written cache. No collective
    is used for the wait: a long build cannot run into the process group's timeout."""
    cache = DecodedCache(cache_root, [s.path for s in samples], size, crop)
    hold(cache.dir)
    if not cache.ready and builder:
        if cache.damage:
            tqdm.write(f"decoded cache {cache.dir}: {cache.damage}: decoding it again")
        cache.build(progress)
    while not cache.ready:  # if the builder fails, torchrun stops us all
        time.sleep(CACHE_POLL_S)
        cache.load_index()
    if builder:
        prune(cache_root, cache_limit())
    return cache


def hold(folder: Path) -> None:
    """Mark the cache in `folder` used now (its last use) and in use by this process until it ends."""
    folder.mkdir(parents=True, exist_ok=True)
    if folder not in _HELD:
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _HELD[folder] = fd
    os.utime(folder / "lock")


def cache_limit() -> int:
    """Bytes the decoded caches may take: `RESNET_CACHE_LIMIT_GB`, or `constants.CACHE_LIMIT_BYTES`."""
    value = os.environ.get(CACHE_LIMIT_ENV, "").strip()
    if not value:
        return CACHE_LIMIT_BYTES
    try:
        gb = float(value)
    except ValueError:
        gb = -1.0
    if gb < 0:
        raise ConfigError(f"{CACHE_LIMIT_ENV}={value!r}: give the GiB the decoded caches may take, e.g. 20")
    return int(gb * 1024**3)


def cache_entries(root: str | Path) -> list[dict]:
    """Every cache in `root`, least recently used first: folder, bytes, last use, in use."""
    entries = []
    for folder in sorted(Path(root).glob("*")) if Path(root).is_dir() else []:
        try:
            size, last = _bytes(folder), _last_used(folder)
        except (FileNotFoundError, NotADirectoryError):  # removed by another process's prune meanwhile
            continue
        entries.append({"path": str(folder), "bytes": size, "last_used": last, "in_use": _in_use(folder)})
    return sorted(entries, key=lambda e: e["last_used"])


def _bytes(folder: Path) -> int:
    """The bytes of the files in `folder`. Another process may be building the same cache: a
    temporary file it renames or removes between the listing and its `stat` is not counted."""
    total = 0
    for entry in os.scandir(folder):
        try:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total


def _last_used(folder: Path) -> float:
    try:
        return (folder / "lock").stat().st_mtime
    except FileNotFoundError:
        return folder.stat().st_mtime


def _in_use(folder: Path) -> bool:
    """Another process holds the cache (a shared lock on its lock file). This process's own hold
    counts too."""
    if folder in _HELD:
        return True
    try:
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def prune(root: str | Path, limit: int) -> list[str]:
    """Drop the least recently used caches of `root` until they take at most `limit` bytes, never
    one a running process holds (workers open its pixels lazily). Returns the folders removed."""
    entries = cache_entries(root)
    total = sum(e["bytes"] for e in entries)
    removed = []
    for entry in entries:
        if total <= limit:
            break
        if entry["in_use"]:
            continue
        shutil.rmtree(entry["path"], ignore_errors=True)
        total -= entry["bytes"]
        removed.append(entry["path"])
    return removed


def cache_size_for(img_size: int) -> int:
    return resize_size_for(img_size)


def cache_bytes(n_images: int, size: int) -> int:
    """Estimated size of a cache: shorter side `size`, typical 4:3 photos."""
    return int(n_images * size * size * 4 / 3 * 3)


def default_cache_dir(kind: str = "decoded") -> str:
    """Where this user's caches of `kind` live: decoded images, ONNX exports."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "resnet", kind)
