"""Output paths, checked before any work: a file or folder the command will write must be
writable, of the right kind, and never one of its inputs. A mistake is one line naming the flag,
the path and why, before anything is read, computed or written. No torch here."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

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


def check_output_file(flag: str, path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """A file the command will write: not a folder, not one of `inputs`, in a place it can write."""
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
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder")
    for given in inputs:
        if path.resolve() == Path(given).resolve():
            raise ConfigError(f"{flag} {path} is an input of this command: name another folder")
    _writable_place(flag, path)
    return path
