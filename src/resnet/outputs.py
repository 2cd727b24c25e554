"""What the commands write, and where. Output paths are checked before any work: a file or folder
the command will write must be writable, of the right kind, and never one of its inputs; a mistake
is one line naming the flag, the path and why, before anything is read, computed or written. Then
`predict`'s rows as a table, CSV or JSON. No torch here."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

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


def replace_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write` to a temporary file of this writer's own beside `path`, then rename: a reader sees
    the old file or the new, never half of one, and two writers never share a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask)  # as any file written here would be (mkstemp makes it private)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    return replace_atomically(path, lambda tmp: tmp.write_text(text))


# The file in a run folder whose lock says "a run writes here" (and which holds the writer's pid).
WRITER_LOCK = ".writer.lock"


@contextlib.contextmanager
def sole_writer(folder: str | Path, flag: str = "--out") -> Iterator[None]:
    """Hold `folder` as its one writer while the block runs: a POSIX record lock (`lockf`) on its
    `WRITER_LOCK`, which the kernel drops however the process ends (`kill -9` leaves no stale
    lock) and which forked DataLoader workers do not inherit (a `flock` they would hold on past
    the run). A second writer (a new run, `--resume`, `resnet.train` from a notebook) is refused in
    one line naming the process that holds it, before it writes anything. Under torchrun, rank 0
    alone writes and holds it. A folder made here and left holding nothing but the lock (the run
    failed before its first file) is removed again."""
    folder = Path(folder)
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / WRITER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ConfigError(f"{flag} {folder}: cannot write there ({e.strerror or e})") from None
    held = False
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EACCES or EAGAIN: another process holds it
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise ConfigError(f"{folder} is being written by another run (process {holder or 'unknown'}): wait "
                              f"for it to end, or write elsewhere (another {flag})") from None
        held = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if held and made and {p.name for p in folder.iterdir()} <= {WRITER_LOCK}:
            (folder / WRITER_LOCK).unlink(missing_ok=True)
            folder.rmdir()
        os.close(fd)  # and with it the lock


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
