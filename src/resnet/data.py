"""From files on disk to batches: find images, split, decode robustly, cache, load.

A real folder has broken files. They are found at scan time where that is cheap (empty, not an
image, a decompression bomb: Pillow reads only the header) and otherwise when they are decoded
(truncated data): the dataset then hands back a failure instead of raising, the collate function
drops it from the batch and reports it, and the epoch goes on. Every skipped file is listed with
its reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import PIL
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from .errors import DataError
from .tuning import CACHE_POLL_S, MAX_WORKERS_CPU, MAX_WORKERS_GPU, PREFETCH_BATCHES
from .transforms import (EvalTransform, PadCropTransform, TrainTransform, pixels, resize_size_for, resized_crop,
                         shorter_side_size, warm_up)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VAL_DIR_NAMES = ("val", "valid", "validation", "test")


class UnreadableImage(OSError):
    """A file already known to be bad (its reason recorded in the decoded cache)."""


@dataclass
class Sample:
    path: str
    label: int


@dataclass
class DataSplit:
    """What `discover` found: samples per split, the class names (sorted, as ImageFolder does)
    and every file that was passed over, with the reason."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Finding files


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def find_images(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if is_image_name(f)]
    return found


def check_header(source: str | Path | BinaryIO) -> str | None:
    """The reason a file (a path or an open binary file) cannot be an image, from its size and
    header alone (cheap), or None."""
    try:
        if _byte_size(source) == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                w, h = im.size
        if w <= 0 or h <= 0:
            return "image has no pixels"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, OSError, ValueError,
            SyntaxError) as e:  # UnidentifiedImageError is an OSError
        return read_error(e)
    finally:
        if not isinstance(source, (str, Path)):
            source.seek(0)
    return None


def _byte_size(source: str | Path | BinaryIO) -> int:
    if isinstance(source, (str, Path)):
        return os.path.getsize(source)
    source.seek(0, os.SEEK_END)
    return source.tell()


def label_from_name(name: str, pattern: str | None) -> str | None:
    """Kaggle style `cat.123.jpg` -> `cat` (text before the first dot), or the first group (or the
    group named `label`) of `pattern` searched in the file name."""
    if pattern is None:
        return name.split(".", 1)[0] or None
    m = re.search(pattern, name)
    if not m:
        return None
    return m.group("label") if "label" in m.re.groupindex else (m.group(1) if m.groups() else m.group(0))


def _labelled_files(source: Path, label_pattern: str | None) -> list[tuple[str, str]]:
    """(path, class name) for one source: a CSV, a folder of class folders, or a flat folder."""
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise DataError(f"{source}: a data source is a folder or a CSV of path,label")
        rows = []
        with open(source, newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or (i == 0 and [c.strip().lower() for c in row[:2]] == ["path", "label"]):
                    continue
                if len(row) < 2 or not row[0].strip() or not row[1].strip():
                    raise DataError(f"{source}:{i + 1}: expected path,label with neither empty, got {row!r}")
                p = Path(row[0].strip())
                rows.append((str(p if p.is_absolute() else source.parent / p), row[1].strip()))
        return rows
    class_dirs = sorted(d for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_dirs:
        return [(str(p), d.name) for d in class_dirs for p in find_images(d)]
    files = [p for p in sorted(source.iterdir()) if p.is_file() and is_image_name(p.name)]
    out = []
    for p in files:
        label = label_from_name(p.name, label_pattern)
        if not label:
            raise DataError(f"{p}: no label in the file name (pattern {label_pattern!r})")
        out.append((str(p), label))
    labels = {label for _, label in out}
    if len(out) >= 4 and len(labels) > len(out) / 2:  # cat.1.jpg, cat.2.jpg... share their labels
        examples = ", ".join(sorted(labels)[:3])
        raise DataError(f"the file names in {source} do not carry labels ({len(labels)} different ones in "
                        f"{len(out)} files, e.g. {examples}): put the images in one folder per class, "
                        "or give --label-pattern")
    return out


class Scan(NamedTuple):
    good: list[tuple[str, str]]      # (path, class) of files whose header reads
    skipped: list[tuple[str, str]]   # (path, reason)
    labels: set[str]                 # every class named, readable files or not


def scan(source: str | Path, label_pattern: str | None = None) -> Scan:
    source = Path(source)
    if not source.exists():
        raise DataError(f"data not found: {source}")
    good, skipped, labels = [], [], set()
    for path, label in _labelled_files(source, label_pattern):
        labels.add(label)
        reason = "file not found" if not os.path.isfile(path) else check_header(path)
        (skipped.append((path, reason)) if reason else good.append((path, label)))
    if not labels:
        raise DataError(f"no images found in {source} (extensions: {', '.join(IMG_EXTENSIONS)})")
    return Scan(good, skipped, labels)


def _split_roots(root: Path) -> tuple[Path, Path] | None:
    if not root.is_dir() or not (root / "train").is_dir():
        return None
    for name in VAL_DIR_NAMES:
        if (root / name).is_dir():
            return root / "train", root / name
    return None


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val), the same class proportions in both, reproducible from the seed."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise DataError(f"--val-split must be between 0 and 1, not {fraction}")
    n_classes = len(set(labels))
    n_val = math.ceil(len(labels) * fraction)  # as scikit-learn rounds it
    if min(n_val, len(labels) - n_val) < n_classes:
        raise DataError(f"cannot hold out {fraction:.0%} of {len(labels)} images with every one of "
                        f"{n_classes} classes on both sides: give more images, another --val-split or --val DIR")
    idx = np.arange(len(labels))
    tr, va = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels)
    return sorted(tr.tolist()), sorted(va.tolist())


def discover(data: str | Path, val: str | Path | None = None, val_split: float | None = None,
             seed: int = 0, label_pattern: str | None = None) -> DataSplit:
    """Resolve DATA (and an optional --val source) into train/val samples per DESIGN.md.
    Without a validation source, `val_split` (default 0.2) of DATA is held out; 0 keeps none."""
    data = Path(data)
    roots = _split_roots(data) if val is None else None
    train_src, val_src = roots if roots else (data, Path(val) if val is not None else None)
    train_files, skipped, all_classes = scan(train_src, label_pattern)
    val_files: list[tuple[str, str]] = []
    if val_src is not None:
        val_files, more, _ = scan(val_src, label_pattern)
        skipped += more
    classes = sorted({c for _, c in train_files})
    if val_src is not None:
        val_classes = sorted({c for _, c in val_files})
        if val_classes != classes:
            only_t = sorted(set(classes) - set(val_classes))
            only_v = sorted(set(val_classes) - set(classes))
            raise DataError(f"train and validation classes differ: only in train {only_t}, "
                            f"only in validation {only_v}")
    empty = sorted(all_classes - set(classes))
    if empty:
        raise DataError(f"no readable image in class(es): {', '.join(empty)}")
    if len(classes) < 2:
        raise DataError(f"{train_src} holds a single class ({', '.join(classes) or 'none'}): a classifier "
                        "needs at least two, as class folders, labelled file names or a CSV")
    index = {c: i for i, c in enumerate(classes)}
    train = [Sample(p, index[c]) for p, c in train_files]
    vals = [Sample(p, index[c]) for p, c in val_files]
    fraction = 0.2 if val_split is None else val_split
    if val_src is None and fraction > 0:
        counts = np.bincount([s.label for s in train], minlength=len(classes))
        few = [f"{classes[i]} ({n})" for i, n in enumerate(counts) if n < 2]
        if few:
            raise DataError(f"to hold out a validation part, every class needs 2 images or more; these have "
                            f"fewer: {', '.join(few)} (give --val DIR, or --val-split 0)")
        tr, va = stratified_split([s.label for s in train], fraction, seed)
        train, vals = [train[i] for i in tr], [train[i] for i in va]
    return DataSplit(classes, train, vals, skipped)


def labelled_files(source: str | Path, label_pattern: str | None = None
                   ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(path, class name) of every image of a labelled source to score (for evaluate: a
    `train/`+`val/` root means its validation part), and the entries skipped with their reasons."""
    source = Path(source)
    roots = _split_roots(source)
    files, skipped, _ = scan(roots[1] if roots else source, label_pattern)
    return files, skipped


def samples_for(files: Sequence[tuple[str, str]], classes: Sequence[str]) -> list[Sample]:
    """`labelled_files` scored against a model's classes: labels it does not know are an error
    naming them."""
    unknown = sorted({c for _, c in files} - set(classes))
    if unknown:
        raise DataError(f"labels not among the model's classes {list(classes)}: {unknown}")
    index = {c: i for i, c in enumerate(classes)}
    return [Sample(p, index[c]) for p, c in files]


def write_samples(path: str | Path, samples: Sequence[Sample], classes: Sequence[str]) -> None:
    """A `path,label` CSV: itself a valid DATA source, so a run's split can be scored again."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows((os.path.abspath(s.path), classes[s.label]) for s in samples)


def write_skipped(path: str | Path, skipped: Sequence[tuple[str, str]]) -> None:
    with open(path, "w") as f:
        f.writelines(f"{p}\t{reason}\n" for p, reason in skipped)


# ---------------------------------------------------------------------------------------------
# Decoding


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB. Transparency is composited on white (what a viewer shows);
    16/32-bit grey is scaled to 8 bits instead of clipped."""
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info or im.mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    if im.mode.startswith("I") or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        elif a.max(initial=0) > 255:
            a = a / 257.0  # 16-bit range to 8-bit
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def decode(source: str | Path | BinaryIO, draft_size: int | None = None) -> Image.Image:
    """Open by content (not extension), let a JPEG decode at 1/2, 1/4 or 1/8 scale in the DCT
    domain when the shorter side it needs (`draft_size`) is at most half the source (much less
    work, a slightly softer image), apply the EXIF orientation and convert to RGB."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as im:
            if draft_size and im.format == "JPEG" and min(im.size) >= 2 * draft_size:
                im.draft(im.mode, (draft_size, draft_size))
            return _upright_rgb(im)


def _upright_rgb(im: Image.Image) -> Image.Image:
    if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation: rotate/flip as a viewer would
        im = ImageOps.exif_transpose(im)
    im.load()  # decode now (inside the caller's `with`; exif_transpose alone would copy every image)
    return to_rgb(im)


ImageInput = str | Path | BinaryIO | Image.Image | np.ndarray


def load_image(item: ImageInput, draft_size: int | None = None) -> Image.Image | np.ndarray:
    """Any input a user may hand over, through the same decoding rules as a file on disk:
    - a path or an open binary file: checked, decoded (`decode`);
    - a Pillow image opened from a file and not loaded yet (`Image.open(path)`): read from its file,
      exactly as the path would be, without touching the caller's object;
    - any other Pillow image: EXIF orientation, alpha on white, 16-bit scaled, palette expanded;
    - an HxWx3 uint8 array: RGB pixels as they are; other arrays (HxW grey, HxWx4, uint16) as the
      Pillow image `Image.fromarray` makes of them.
    Returns RGB pixels (a Pillow image or an HxWx3 uint8 array); raises on anything unreadable."""
    if isinstance(item, np.ndarray):
        if item.ndim == 3 and item.shape[2] == 3 and item.dtype == np.uint8:
            return item
        if item.ndim not in (2, 3) or min(item.shape[:2]) == 0:
            raise ValueError(f"an image array is HxW or HxWxC, not of shape {item.shape}")
        return to_rgb(Image.fromarray(item))
    if isinstance(item, Image.Image):
        filename = getattr(item, "filename", "")
        if getattr(item, "tile", None) and filename and os.path.isfile(filename):
            item = filename
        else:
            return _upright_rgb(item)
    reason = "file not found" if isinstance(item, (str, Path)) and not os.path.isfile(item) else check_header(item)
    if reason:
        raise UnreadableImage(reason)
    return decode(item, draft_size)


def read_error(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, UnreadableImage):
        return text
    if isinstance(e, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"decompression bomb: {text}"
    if isinstance(e, UnidentifiedImageError):
        return "not an image or unreadable header (unknown format)"
    return f"unreadable: {text}"


def read_images(items: Sequence[ImageInput], draft_size: int | None = None
                ) -> list[Image.Image | np.ndarray | str]:
    """`load_image` over a list; an entry is the RGB image or the reason it could not be read."""
    out: list[Image.Image | np.ndarray | str] = []
    for item in items:
        try:
            out.append(load_image(item, draft_size))
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file, reported
            out.append(read_error(e))
    return out


# ---------------------------------------------------------------------------------------------
# Decoded cache


# Part of every cache's key: bump it whenever the pixels a cache holds would change (decoding,
# resampling, what is stored), so no run reads pixels made by older code. 2: evaluation crops are
# decoded at full resolution (no JPEG draft).
CACHE_FORMAT = 2


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
        self.paths = list(paths)
        self._array: np.ndarray | None = None
        self.entries: list[list] = []  # [offset, h, w] per path, or [-1, reason]
        self.load_index()

    def load_index(self) -> None:
        if self.index_file.exists():
            self.entries = json.loads(self.index_file.read_text())["entries"]

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
        os.replace(tmp, self.dir / "pixels.u8")
        index_tmp = self.dir / f"index.{os.getpid()}.tmp"
        index_tmp.write_text(json.dumps({"size": self.size, "entries": entries}))
        os.replace(index_tmp, self.index_file)
        self.entries = entries

    def get(self, i: int) -> np.ndarray:
        """The stored HWC uint8 pixels: a view of the (copy-on-write) memory map, no copy."""
        entry = self.entries[i]
        if entry[0] < 0:
            raise UnreadableImage(entry[1])
        if self._array is None:  # opened lazily, so each DataLoader worker maps it itself
            # copy-on-write: torch accepts the views as writable; nothing writes, so nothing copies
            self._array = np.memmap(self.dir / "pixels.u8", dtype=np.uint8, mode="c")
        offset, h, w = entry
        return self._array[offset:offset + h * w * 3].reshape(h, w, 3)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


def _decode_all(paths: Sequence[str], draft_size: int | None) -> Iterator[Image.Image | np.ndarray | str]:
    for p in paths:
        yield read_images([p], draft_size)[0]


# ---------------------------------------------------------------------------------------------
# Dataset, sampler, loader


class Batch(NamedTuple):
    images: torch.Tensor          # uint8 NCHW; `transforms.normalize` makes it model input
    labels: torch.Tensor
    indices: torch.Tensor         # positions in the dataset, to name files
    failures: list[tuple[int, str]]  # (dataset index, reason) of samples dropped from this batch


class Draw(NamedTuple):
    """What `EpochSampler` asks the dataset for: a sample, the seed of its augmentation (so results
    do not depend on workers, and resuming repeats them), and the crop size of the epoch when it
    has its own (progressive resizing: persistent workers never see attributes changed in the main
    process, but they see every draw)."""

    index: int
    seed: int = 0
    size: int | None = None


class Item(NamedTuple):
    """One sample as the dataset hands it to `collate`: the uint8 CHW image, or None and the
    reason the file could not be read."""

    image: torch.Tensor | None
    label: int
    index: int
    failure: str | None = None


class ImageDataset(Dataset):
    """Samples -> `Item`s, for an index or a `Draw`."""

    def __init__(self, samples: Sequence[Sample], transform: EvalTransform | TrainTransform | PadCropTransform,
                 cache: DecodedCache | None = None):
        if cache is not None and cache.crop is not None and cache.crop != transform:
            raise ValueError(f"the cache holds the output of {cache.crop}, not of {transform}")
        self.samples = list(samples)
        self.transform = transform
        self.cache = cache
        # Evaluation decodes every pixel, as `predict` does with any input, so that a photo gets the
        # same logits whichever way it arrives; training lets big JPEGs decode at a reduced DCT scale.
        self.draft_size = None if isinstance(transform, EvalTransform) else transform.img_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | Draw) -> Item:
        index, seed, size = item if isinstance(item, Draw) else Draw(item)
        sample = self.samples[index]
        transform = self.transform
        if size is not None and isinstance(transform, (TrainTransform, PadCropTransform)):
            transform = replace(transform, img_size=size)
        try:
            if self.cache is not None and self.cache.crop is not None:  # already the transform's output
                return Item(torch.from_numpy(self.cache.get(index)).permute(2, 0, 1), sample.label, index)
            img = self.cache.get(index) if self.cache else decode(sample.path, self.draft_size)
        except Exception as e:  # noqa: BLE001 - a bad file must not stop the epoch
            return Item(None, sample.label, index, read_error(e))
        # Outside the `try`: a transform that fails on a decoded image is a bug or a bad setting,
        # not a bad file, and must not quietly turn every image into a "skipped" one.
        return Item(transform(img, torch.Generator().manual_seed(seed)), sample.label, index)


def collate(items: list[Item]) -> Batch:
    """Stack the images as NHWC, the layout they were decoded in (so the copy is a straight one),
    and hand them over as NCHW with channels_last strides, the layout the model runs in. In a
    worker, the batch is stacked straight into shared memory, as default_collate does, instead of
    being copied there when it is sent."""
    good = [it for it in items if it.failure is None]
    failures = [(it.index, it.failure) for it in items if it.failure is not None]
    if not good:
        empty = torch.empty(0, dtype=torch.uint8)
        return Batch(empty, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), failures)
    hwc = [it.image.permute(1, 2, 0) for it in good]
    shape = (len(hwc), *hwc[0].shape)
    if torch.utils.data.get_worker_info() is not None:
        storage = hwc[0]._typed_storage()._new_shared(math.prod(shape), device="cpu")
        out = hwc[0].new(storage).resize_(shape)
    else:
        out = torch.empty(shape, dtype=torch.uint8)
    torch.stack(hwc, out=out)
    return Batch(out.permute(0, 3, 1, 2),
                 torch.tensor([it.label for it in good], dtype=torch.long),
                 torch.tensor([it.index for it in good], dtype=torch.long), failures)


class EpochSampler(Sampler):
    """A permutation fixed by (seed, epoch), sharded over `world_size` ranks as DistributedSampler
    does (rank r takes every world_size-th sample from r), yielding a `Draw` per sample: its index,
    its augmentation's seed, and the epoch's crop size when it has its own. `start` skips the first samples of the epoch: a run
    resumed mid-epoch continues with exactly the batches it missed."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch, self.start, self.size = 0, 0, None
        # Training pads the shards to one length (every rank takes the same number of steps);
        # evaluation does not (each image counted once: the ranks' counts are summed).
        self.per_rank = math.ceil(n / world_size) if pad else len(range(rank, n, world_size))

    def set_epoch(self, epoch: int, start: int = 0, size: int | None = None) -> None:
        self.epoch, self.start, self.size = epoch, start, size

    def __len__(self) -> int:
        return self.per_rank - self.start

    def __iter__(self) -> Iterator[Draw]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        order = order.tolist()
        if self.pad:
            order += order[: self.per_rank * self.world_size - self.n]
        mine = order[self.rank::self.world_size]
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        for index in mine[self.start:]:
            seed = (base + index) % (2**63)
            yield Draw(index, seed, self.size)


def default_workers(device: str) -> int:
    """On a GPU, decoding is the bottleneck: use the cores. On a CPU the same cores also train, so
    a worker or two only overlaps decoding with compute."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device == "cuda":
        return min(MAX_WORKERS_GPU, max(1, cpus - 1))
    return max(1, min(MAX_WORKERS_CPU, cpus // 2))


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random
    random.seed(seed)


def make_loader(dataset: ImageDataset, batch_size: int, shuffle: bool, workers: int,
                seed: int = 0, pin_memory: bool = False, rank: int = 0, world_size: int = 1,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader over `dataset` with the sampler above. A dataset served from a crop cache is
    loaded in-process whatever `workers` says: no per-image work is left to spread over cores,
    and a worker would only add a copy through shared memory (measured on 2 cores, 224 px:
    17,000 images/s in-process against 5,600 with 2 workers)."""
    if dataset.cache is not None and dataset.cache.crop is not None:
        workers = 0
    elif workers > 0:
        warm_up()  # load the compiled resampler once, here: forked workers inherit it
    # A training loader (shuffled) pads its shards; an evaluation loader counts every image once.
    sampler = EpochSampler(len(dataset), shuffle, seed, rank, world_size, pad=shuffle)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=workers > 0, worker_init_fn=_seed_worker,
                      prefetch_factor=PREFETCH_BATCHES if workers > 0 else None)


def build_cache(samples: Sequence[Sample], cache_root: str | Path, size: int,
                progress: Callable[[Iterator], Iterator] = iter, crop: EvalTransform | None = None,
                builder: bool = True) -> DecodedCache:
    """The cache of `samples`, built unless it exists. Of several processes on one machine, one is
    the `builder`; the others wait for its finished index (written last, by an atomic rename), so
    the images are decoded once per machine and nobody reads a half-written cache. No collective
    is used for the wait: a long build cannot run into the process group's timeout."""
    cache = DecodedCache(cache_root, [s.path for s in samples], size, crop)
    if not cache.ready and builder:
        cache.build(progress)
    while not cache.ready:  # if the builder fails, torchrun stops us all
        time.sleep(CACHE_POLL_S)
        cache.load_index()
    return cache


def cache_size_for(img_size: int) -> int:
    return resize_size_for(img_size)


def cache_bytes(n_images: int, size: int) -> int:
    """Estimated size of a cache: shorter side `size`, typical 4:3 photos."""
    return int(n_images * size * size * 4 / 3 * 3)


def default_cache_dir(kind: str = "decoded") -> str:
    """Where this user's caches of `kind` live: decoded images, ONNX exports."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "resnet", kind)
