"""What the commands write, and where. Output paths are checked before any work: a file or folder
the command will write must be writable, of the right kind, and never one of its inputs; a mistake
is one line naming the flag, the path and why, before anything is read, computed or written. Then
`predict`'s rows as a table, CSV or JSON. No torch here."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .errors import ConfigError


def _writable_place(flag: str, path: Path) -> None:
    """The nearest existing folder at or above `path` takes a new file (tried: permission bits do
    not tell for root, a read-only mount or /proc), and nothing on the way is a file."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing != path and not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a folder")
    folder = existing if existing.is_dir() else existing.parent
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write in {folder} ({e.strerror or e})") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_empty(flag: str, path: str | Path | None) -> None:
    """An output path given as "" (or blanks) would be the current folder: refused."""
    if path is not None and not str(path).strip():
        raise ConfigError(f"{flag} is empty: name a path (an empty one would write into the current folder)")


def check_output_file(flag: str, path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """A file the command will write: not a folder, not one of `inputs`, in a place it can write."""
    check_not_empty(flag, path)
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder: name a file")
    for given in inputs:
        if _same_file(path, Path(given)) or path.resolve() == Path(given).resolve():
            raise ConfigError(f"{flag} {path} would overwrite the input {given}: name another file")
    _writable_place(flag, path)
    return path


def check_output_dir(flag: str, path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """A folder the command will write in: not a file, not one of `inputs`, creatable or writable."""
    check_not_empty(flag, path)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder")
    for given in inputs:
        if path.resolve() == Path(given).resolve():
            raise ConfigError(f"{flag} {path} is an input of this command: name another folder")
    _writable_place(flag, path)
    return path


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A `predict` row for JSON: `top_k` as a list of {label, probability}."""
    if "top_k" not in row:
        return row
    return {**row, "top_k": [{"label": c, "probability": p} for c, p in row["top_k"]]}


def write_rows(rows: list[dict], output: str | None, top_k: int) -> None:
    """A table for a person on stdout; CSV (`\n` line ends) or JSON in `output` (`-`: CSV on
    stdout). Parent folders are created."""
    if output and output.endswith(".json"):
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps([jsonable(r) for r in rows], indent=2) + "\n")
        return
    if output is None:
        print(format_table(rows, top_k))
        return
    fields = ["path", "label", "probability"] + (["top_k"] if top_k > 1 else []) + ["error"]
    if output != "-":
        Path(output).parent.mkdir(parents=True, exist_ok=True)
    with (open(output, "w", newline="") if output != "-" else contextlib.nullcontext(sys.stdout)) as stream:
        w = csv.DictWriter(stream, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            r = dict(r)
            if "top_k" in r:
                r["top_k"] = " ".join(f"{label}:{p:.4f}" for label, p in r["top_k"])
            if "probability" in r:
                r["probability"] = f"{r['probability']:.4f}"
            w.writerow(r)


def format_table(rows: list[dict], top_k: int) -> str:
    width = min(60, max(len("path"), *(len(r["path"]) for r in rows)))
    lines = [f"{'path':{width}}  {'label':12} {'prob':>6}" + ("  top-k" if top_k > 1 else "")]
    for r in rows:
        path = r["path"] if len(r["path"]) <= width else "..." + r["path"][-(width - 3):]
        if "error" in r:
            lines.append(f"{path:{width}}  error: {r['error']}")
            continue
        line = f"{path:{width}}  {r['label']:12} {r['probability']:6.1%}"
        if top_k > 1:
            line += "  " + ", ".join(f"{c} {p:.1%}" for c, p in r["top_k"])
        lines.append(line)
    return "\n".join(lines)
