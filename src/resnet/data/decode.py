"""Decoding any image input robustly to upright RGB: EXIF orientation, transparency over white,
16-bit, palettes, CMYK; a reason string, never an exception, for a file that cannot be read."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class UnreadableImage(OSError):
    """A file already known to be bad (its reason recorded in the decoded cache)."""


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
    reason = _missing(item) if isinstance(item, (str, Path)) and not os.path.isfile(item) else check_header(item)
    if reason:
        raise UnreadableImage(reason)
    return decode(item, draft_size)


def as_items(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """The inputs as a list: a single path, file, Pillow image or HxW(xC) array is one item, not
    a sequence to iterate (a path's characters, an array's rows); an NxHxWxC array is N images."""
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (str, os.PathLike, Image.Image)) or hasattr(images, "read"):
        return [images]
    return list(images)


# What a URL given as an image gets: nothing here reaches the network.
NOT_FETCHED = "only files on this machine are read, URLs are not fetched (download it first)"


def _missing(path: str | Path) -> str:
    """Why a path names no file."""
    return f"a URL: {NOT_FETCHED}" if "://" in str(path) else "file not found"


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
