"""Finding labelled images and splitting them: class folders, train/ + val/ folders, flat
Kaggle-style folders and CSVs of path,label; bad files found from their headers at scan time
(empty, not an image, a decompression bomb: Pillow reads only the header), each with its reason."""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..outputs import replace_atomically
from .decode import check_header

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VAL_DIR_NAMES = ("val", "valid", "validation", "test")


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
    notes: list[str] = field(default_factory=list)  # how the validation part was held out, where not as asked


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def find_images(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if is_image_name(f)]
    return found


def check_label_pattern(pattern: str | None) -> None:
    """`--label-pattern` must compile and hold a group around the label."""
    if pattern is None:
        return
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"--label-pattern {pattern!r} is not a regular expression: {e}") from None
    if not compiled.groups:
        raise ConfigError(f"--label-pattern {pattern!r} needs a group around the label, "
                          "e.g. '^([a-z]+)_' (or a group named label)")


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
    """Indices (train, val), the same class proportions in both, reproducible from the seed. The
    fraction, in (0, 1), is checked where the user gives it (`config.check_config`)."""
    from sklearn.model_selection import train_test_split

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
    notes: list[str] = []
    if val_src is None and fraction > 0:
        tr, va, notes = held_out_split([s.label for s in train], fraction, seed, classes)
        train, vals = [train[i] for i in tr], [train[i] for i in va]
    return DataSplit(classes, train, vals, skipped, notes)


def held_out_split(labels: Sequence[int], fraction: float, seed: int, classes: Sequence[str]
                   ) -> tuple[list[int], list[int], list[str]]:
    """Indices (train, val) holding out `fraction` of the images, and what was done otherwise, a
    line each. Held out what can be: a class with a single image trains only (it has nothing to
    spare); the rest is split by scikit-learn, stratified, where that gives every class images on
    both sides (every folder of a few images a class or more: its split as before), and else class
    by class, at least one image of each out and one in (a hundred classes of a few photos each)."""
    counts = np.bincount(labels, minlength=len(classes))
    single = [c for c, n in zip(classes, counts) if n == 1]
    rest = [i for i, y in enumerate(labels) if counts[y] >= 2]
    notes = [f"{len(single)} class{'es' if len(single) > 1 else ''} with a single image, trained on and not "
             f"validated: {', '.join(single[:5])}{', ...' if len(single) > 5 else ''}"] if single else []
    if not rest:
        return list(range(len(labels))), [], notes + ["no class has two images: nothing is held out"]
    try:
        val = [rest[i] for i in stratified_split([labels[i] for i in rest], fraction, seed)[1]]
        if {labels[i] for i in val} != {labels[i] for i in rest}:  # a class of 2 or 3 left out
            raise DataError("a class without a validation image")
    except DataError:
        rng = np.random.default_rng(seed)
        val = []
        for c in np.unique([labels[i] for i in rest]):
            members = [i for i in rest if labels[i] == c]
            val += rng.choice(members, min(len(members) - 1, max(1, round(len(members) * fraction))),
                              replace=False).tolist()
        notes.append(f"too few images for a stratified {fraction:.0%} of every class: {len(val)} held out, "
                     f"at least one of each class with two or more")
    held = set(val)
    return [i for i in range(len(labels)) if i not in held], sorted(val), notes


def labelled_files(source: str | Path, label_pattern: str | None = None
                   ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(path, class name) of every image of a labelled source to score (for evaluate: a
    `train/`+`val/` root means its validation part), and the entries skipped with their reasons."""
    check_label_pattern(label_pattern)
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
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows((os.path.abspath(s.path), classes[s.label]) for s in samples)

    replace_atomically(path, write)


def write_skipped(path: str | Path, skipped: Sequence[tuple[str, str]]) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text("".join(f"{p}\t{reason}\n" for p, reason in skipped)))


def expand_paths(paths: list[str]) -> list[str]:
    """Files as given, folders searched recursively for images, globs expanded (`**` too)."""
    import glob

    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out += [str(f) for f in find_images(path)]
        elif any(ch in p for ch in "*?[") and not path.exists():
            out += sorted(f for f in glob.glob(p, recursive=True) if Path(f).is_file())
        else:
            out.append(p)  # a missing file becomes an `error` row
    return out


def read_listing(path: str | Path) -> list[str] | None:
    """The image paths of a `write_samples` CSV, as written (absolute); None where there is none."""
    if not Path(path).is_file():
        return None
    with open(path, newline="") as f:
        return [row[0] for row in list(csv.reader(f))[1:] if row]


def data_changed(split: DataSplit, classes: Sequence[str], trained_on: Sequence[str] | None) -> str | None:
    """How the data a resumed run finds differs from what it trained on (its `classes`, and the
    training images its train.csv lists), in words; None when it is the same. A run resumes
    exactly only on its own data: another class changes the network's last layer, another image
    the batches it replays."""
    added, gone = sorted(set(split.classes) - set(classes)), sorted(set(classes) - set(split.classes))
    if added or gone:
        return ", ".join(part for part in (f"new classes {added}" if added else "",
                                           f"classes gone {gone}" if gone else "") if part)
    if trained_on is None:
        return None
    now = {os.path.abspath(s.path) for s in split.train}
    new, missing = sorted(now - set(trained_on)), sorted(set(trained_on) - now)
    if not new and not missing:
        return None
    example = (new or missing)[0]
    return (f"the training images changed ({len(new)} new, {len(missing)} gone since the run started, "
            f"e.g. {example})")
