"""Preprocessing with torchvision's semantics and pixels, without torchvision.

Images stay uint8 until the batch reaches the model: a worker ships a quarter of the bytes that
float32 would need, and `normalize` turns a whole batch into floats in one vectorised pass (on the
GPU when there is one) instead of once per image.

Resizing: torchvision resizes a whole photo, then throws away the border its centre crop does not
keep (about a third of the work on a 4:3 photo). Pillow cannot resize only part of the output
exactly (its `box` argument goes through float32, which moves every sample point a little), so
the resampling is written out below, compiled with numba, with Pillow's arithmetic:
the same float64 filter weights (`precompute_coeffs`), the same 22-bit fixed-point rounding, the
same 8-bit intermediate between the two passes, and the same order of passes as the installed
Pillow. Tests compare it with Pillow on random sizes and windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import PIL
import torch
from PIL import Image, ImageEnhance, ImageOps

from ..options import CROP_PCT

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Cutout's fill: the mean pixel, which normalises to zero (DeVries & Taylor zero the normalised image).
MEAN_PIXEL = tuple(round(255 * m) for m in IMAGENET_MEAN)


def cut_out(a: np.ndarray, size: int, g: torch.Generator) -> np.ndarray:
    """Cutout (DeVries & Taylor 2017): a `size` square of the HWC image `a` filled, in place, with
    the mean pixel. Its centre falls anywhere in the image, so part of the square may lie outside:
    a regulariser for runs long enough to over-fit, which hides a different part of each view."""
    if size:
        cy, cx = (int(torch.randint(0, n, (1,), generator=g).item()) for n in a.shape[:2])
        top, left = cy - size // 2, cx - size // 2
        a[max(0, top):top + size, max(0, left):left + size] = MEAN_PIXEL  # a stop past the edge clips
    return a


# TrivialAugment Wide (Müller & Hutter 2021; torchvision's `TrivialAugmentWide()`, which its
# reference scripts train with): one operation drawn uniformly per image, at a magnitude drawn
# uniformly from its 31 bins and, where signed, a random sign. Each entry: (the magnitudes, or None
# for an operation without one; signed). Pixels as torchvision's PIL path computes them:
# nearest-neighbour geometry with a black fill, Pillow's ImageEnhance and ImageOps for the rest.
TA_BINS = 31


def _bins(start: float, end: float) -> torch.Tensor:
    return torch.linspace(start, end, TA_BINS)


TA_OPS: dict[str, tuple[torch.Tensor | None, bool]] = {
    "Identity": (None, False), "ShearX": (_bins(0.0, 0.99), True), "ShearY": (_bins(0.0, 0.99), True),
    "TranslateX": (_bins(0.0, 32.0), True), "TranslateY": (_bins(0.0, 32.0), True),
    "Rotate": (_bins(0.0, 135.0), True), "Brightness": (_bins(0.0, 0.99), True),
    "Color": (_bins(0.0, 0.99), True), "Contrast": (_bins(0.0, 0.99), True), "Sharpness": (_bins(0.0, 0.99), True),
    "Posterize": (8 - (torch.arange(TA_BINS) / ((TA_BINS - 1) / 6)).round().int(), False),  # 8 bits down to 2
    "Solarize": (_bins(255.0, 0.0), False), "AutoContrast": (None, False), "Equalize": (None, False),
}
_TA_NAMES = tuple(TA_OPS)  # drawn from by index, in torchvision's order
_ENHANCE = {"Brightness": ImageEnhance.Brightness, "Color": ImageEnhance.Color,
            "Contrast": ImageEnhance.Contrast, "Sharpness": ImageEnhance.Sharpness}
_UNARY = {"Identity": lambda img: img, "AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize}


def _inverse_affine(center: tuple[float, float], translate: tuple[float, float],
                    shear: tuple[float, float]) -> list[float]:
    """torchvision's `_get_inverse_affine_matrix` without rotation or scale: output -> input
    coordinates, as Pillow's `Image.transform` wants them."""
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    a = math.cos(-sy) / math.cos(sy)
    b = -math.cos(-sy) * math.tan(sx) / math.cos(sy)
    c = math.sin(-sy) / math.cos(sy)
    d = -math.sin(-sy) * math.tan(sx) / math.cos(sy) + 1.0
    m = [d, -b, 0.0, -c, a, 0.0]
    (cx, cy), (tx, ty) = center, translate
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
    return m


def ta_apply(img: Image.Image, name: str, magnitude: float) -> Image.Image:
    """One TrivialAugment operation, as torchvision's `_apply_op` does it to a PIL image."""
    fill = {"fillcolor": (0,) * len(img.getbands())}
    if name.startswith(("Shear", "Translate")):
        w, h = img.size
        shear = math.degrees(math.atan(magnitude))
        center, translate, shears = {  # shears about the top-left corner, translations whole pixels
            "ShearX": ((0.0, 0.0), (0.0, 0.0), (shear, 0.0)),
            "ShearY": ((0.0, 0.0), (0.0, 0.0), (0.0, shear)),
            "TranslateX": ((w * 0.5, h * 0.5), (float(int(magnitude)), 0.0), (0.0, 0.0)),
            "TranslateY": ((w * 0.5, h * 0.5), (0.0, float(int(magnitude))), (0.0, 0.0)),
        }[name]
        return img.transform(img.size, Image.AFFINE, _inverse_affine(center, translate, shears), Image.NEAREST,
                             **fill)
    if name == "Rotate":
        return img.rotate(magnitude, Image.NEAREST, **fill)
    if name in _ENHANCE:
        return _ENHANCE[name](img).enhance(1.0 + magnitude)
    if name == "Posterize":
        return ImageOps.posterize(img, int(magnitude))
    if name == "Solarize":
        return ImageOps.solarize(img, magnitude)
    return _UNARY[name](img)


def trivial_augment(a: np.ndarray, g: torch.Generator) -> np.ndarray:
    """TrivialAugment Wide on an HWC uint8 image, drawing from `g` in torchvision's order (the
    operation, its magnitude's bin, its sign): a writable HWC uint8 array."""
    name = _TA_NAMES[int(torch.randint(len(_TA_NAMES), (1,), generator=g).item())]
    magnitudes, signed = TA_OPS[name]
    magnitude = 0.0 if magnitudes is None else float(magnitudes[torch.randint(TA_BINS, (1,), generator=g)].item())
    if signed and torch.randint(2, (1,), generator=g).item():
        magnitude = -magnitude
    return a if name == "Identity" else np.array(ta_apply(Image.fromarray(a), name, magnitude))


def after_crop(out: np.ndarray, hflip: bool, trivial: bool, cutout: int, g: torch.Generator) -> torch.Tensor:
    """What every training crop goes through, in torchvision's order and from the sample's one
    generator: the mirror flip, TrivialAugment, cutout; then the CHW tensor. Flipped in HWC and
    made contiguous there, so the batch stays NHWC."""
    if hflip and torch.rand(1, generator=g).item() < 0.5:
        out = out[:, ::-1]
    out = np.ascontiguousarray(out)
    if trivial:
        out = trivial_augment(out, g)
    return to_tensor_uint8(cut_out(out, cutout, g))


def resize_size_for(img_size: int, crop_pct: float = CROP_PCT) -> int:
    return int(round(img_size / crop_pct))


def shorter_side_size(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(int): the shorter side becomes `size`, the longer keeps the aspect
    ratio, truncated as torchvision truncates it."""
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


# ---------------------------------------------------------------------------------------------
# Pillow's bilinear resize, computing only the pixels a crop keeps

PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 bits - 8 - 2 for overflow
# Pillow 13 runs the vertical pass first when the height shrinks more than twice as much as the
# width; earlier versions always run the horizontal pass first. The 8-bit rounding between the
# passes makes the order visible in the pixels.
ROWS_FIRST_RULE = int(PIL.__version__.split(".")[0]) >= 13


@numba.njit(cache=True, nogil=True)
def _coefficients(in_size: int, out_size: int, start: int, count: int):
    """Bilinear taps of output positions start..start+count of an in_size -> out_size resize:
    (first input index, number of taps) and fixed-point weights per position."""
    scale = in_size / out_size
    filterscale = scale if scale > 1.0 else 1.0  # downscaling widens the filter: antialiasing
    support = filterscale
    inv = 1.0 / filterscale
    bounds = np.empty((count, 2), np.int64)
    weights = np.zeros((count, int(math.ceil(support)) * 2 + 1), np.int32)
    w = np.empty(weights.shape[1])
    for i in range(count):
        center = (start + i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        n = min(int(center + support + 0.5), in_size) - xmin
        total = 0.0
        for x in range(n):
            d = abs((x + xmin - center + 0.5) * inv)
            w[x] = 1.0 - d if d < 1.0 else 0.0
            total += w[x]
        for x in range(n):
            k = w[x] / total if total != 0.0 else w[x]
            weights[i, x] = int(0.5 + k * (1 << PRECISION_BITS))
        bounds[i, 0] = xmin
        bounds[i, 1] = n
    return bounds, weights


@numba.njit(cache=True, nogil=True)
def _span(bounds) -> tuple[int, int]:
    lo, hi = bounds[0, 0], 0
    for i in range(bounds.shape[0]):
        lo = min(lo, bounds[i, 0])
        hi = max(hi, bounds[i, 0] + bounds[i, 1])
    return lo, hi


@numba.njit(cache=True, nogil=True)
def _along_rows(src, y0, c0, c1, bounds, weights):
    """Resample along axis 0 (taps at rows y0 + bounds), columns c0..c1. Whole rows at a time,
    so the inner loop is contiguous and vectorises."""
    m = (c1 - c0) * 3
    out = np.empty((bounds.shape[0], c1 - c0, 3), np.uint8)
    acc = np.empty(m, np.int32)
    for i in range(bounds.shape[0]):
        acc[:] = 1 << (PRECISION_BITS - 1)
        for t in range(bounds[i, 1]):
            k = weights[i, t]
            row = src[y0 + bounds[i, 0] + t].reshape(-1)[c0 * 3:c1 * 3]
            for j in range(m):
                acc[j] += np.int32(row[j]) * k
        o = out[i].reshape(-1)
        for j in range(m):
            v = acc[j] >> PRECISION_BITS
            o[j] = 0 if v < 0 else (255 if v > 255 else v)
    return out


@numba.njit(cache=True, nogil=True)
def _along_columns(src, r0, r1, x0, bounds, weights):
    """Resample along axis 1 (taps at columns x0 + bounds), rows r0..r1: the region is transposed
    so that `_along_rows` does the work (1.6x faster here than gathering taps along a row)."""
    c0, c1 = _span(bounds)
    region = np.empty((c1 - c0, r1 - r0, 3), np.uint8)
    for y in range(r1 - r0):
        for x in range(c1 - c0):
            for c in range(3):
                region[x, y, c] = src[r0 + y, x0 + c0 + x, c]
    shifted = bounds.copy()
    shifted[:, 0] -= c0
    t = _along_rows(region, 0, 0, r1 - r0, shifted, weights)
    out = np.empty((r1 - r0, bounds.shape[0], 3), np.uint8)
    for y in range(r1 - r0):
        for i in range(bounds.shape[0]):
            for c in range(3):
                out[y, i, c] = t[i, y, c]
    return out


@numba.njit(cache=True, nogil=True)
def _resample(src, x0, y0, w, h, out_w, out_h, left, top, width, height, rows_first_rule):
    resize_x, resize_y = out_w != w, out_h != h
    if not resize_x and not resize_y:
        return src[y0 + top:y0 + top + height, x0 + left:x0 + left + width].copy()
    if not resize_y:
        hb, hk = _coefficients(w, out_w, left, width)
        return _along_columns(src, y0 + top, y0 + top + height, x0, hb, hk)
    vb, vk = _coefficients(h, out_h, top, height)
    if not resize_x:
        return _along_rows(src, y0, x0 + left, x0 + left + width, vb, vk)
    hb, hk = _coefficients(w, out_w, left, width)
    if rows_first_rule and h - out_h > 0 and h - out_h > (w - out_w) * 2:  # Pillow's order
        c0, c1 = _span(hb)
        mid = _along_rows(src, y0, x0 + c0, x0 + c1, vb, vk)
        hb[:, 0] -= c0
        return _along_columns(mid, 0, height, 0, hb, hk)
    r0, r1 = _span(vb)
    mid = _along_columns(src, y0 + r0, y0 + r1, x0, hb, hk)
    vb[:, 0] -= r0
    return _along_rows(mid, 0, 0, width, vb, vk)


def resized_crop(src: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int],
                 window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """`Image.fromarray(src).crop(box).resize(size, BILINEAR).crop(window)`, exactly, for an
    HWC uint8 array; `box` and `window` are (left, top, width, height), the window in output
    pixels (the whole output when None). Only the window's pixels are computed."""
    x0, y0, w, h = box
    out_w, out_h = size
    left, top, width, height = window if window is not None else (0, 0, out_w, out_h)
    if not (src.ndim == 3 and src.shape[2] == 3 and min(w, h, width, height) > 0
            and 0 <= x0 and 0 <= y0 and x0 + w <= src.shape[1] and y0 + h <= src.shape[0]
            and 0 <= left and 0 <= top and left + width <= out_w and top + height <= out_h):
        raise ValueError(f"bad resample of {src.shape}: box {box}, size {size}, window {window}")
    src = np.ascontiguousarray(src, dtype=np.uint8).view()
    src.flags.writeable = False  # one argument type (Pillow's arrays are read-only): one compilation
    return _resample(src, x0, y0, w, h, out_w, out_h, left, top, width, height, ROWS_FIRST_RULE)


def warm_up() -> None:
    """Compile (first run) or load (from numba's on-disk cache, ~0.5 s) the kernels now."""
    resized_crop(np.zeros((2, 2, 3), np.uint8), (0, 0, 2, 2), (3, 1))


# ---------------------------------------------------------------------------------------------
# Transforms


def pixels(img: Image.Image | np.ndarray) -> np.ndarray:
    """HWC uint8 pixels of a decoded (Pillow) or cached (array) image."""
    return np.asarray(img, dtype=np.uint8)


def to_tensor_uint8(a: np.ndarray) -> torch.Tensor:
    """HWC uint8 array -> CHW uint8 tensor (no scaling: see `normalize`). A view of HWC memory:
    `collate` stacks such views into an NHWC batch, which is channels_last as it stands."""
    if not a.flags.writeable:  # torch wants writable memory; Pillow's arrays are read-only
        a = a.copy()
    return torch.from_numpy(a).permute(2, 0, 1)


@dataclass(frozen=True)
class EvalTransform:
    """Resize(round(s / 0.875)) -> CenterCrop(s), bit for bit what torchvision computes with
    Pillow, but only the pixels the crop keeps are resampled (see `resized_crop`)."""

    img_size: int
    resize_size: int

    @classmethod
    def for_size(cls, img_size: int, crop_pct: float = CROP_PCT) -> "EvalTransform":
        return cls(img_size, resize_size_for(img_size, crop_pct))

    def __call__(self, img: Image.Image | np.ndarray, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        a = pixels(img)
        h, w = a.shape[:2]
        rw, rh = shorter_side_size(w, h, self.resize_size)
        s = self.img_size
        if rw < s or rh < s:
            raise ValueError(f"resize {self.resize_size} is smaller than the crop {s}")
        top, left = int(round((rh - s) / 2.0)), int(round((rw - s) / 2.0))
        if (rw, rh) == (w, h):  # already at the resize size (a cached image): the crop is a view
            return to_tensor_uint8(a[top:top + s, left:left + s])
        return to_tensor_uint8(resized_crop(a, (0, 0, w, h), (rw, rh), (left, top, s, s)))


@dataclass(frozen=True)
class TrainTransform:
    """RandomResizedCrop(s, scale, ratio) + RandomHorizontalFlip, torchvision's sampling and
    torchvision's pixels (crop, then resize the crop).

    Randomness comes from the generator handed in, seeded per (run seed, epoch, sample) by the
    sampler, so augmentations do not depend on worker count and a resumed run repeats them exactly.
    `cutout`: then `cut_out` a square of that side."""

    img_size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    cutout: int = 0
    trivial_augment: bool = False

    def crop_box(self, w: int, h: int, g: torch.Generator) -> tuple[int, int, int, int]:
        area = w * h
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*self.scale, generator=g).item()
            aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=g).item())
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=g).item())
                left = int(torch.randint(0, w - cw + 1, (1,), generator=g).item())
                return left, top, cw, ch
        in_ratio = w / h  # fallback: the central crop, aspect clamped to the range
        if in_ratio < min(self.ratio):
            cw, ch = w, int(round(w / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            cw, ch = int(round(h * max(self.ratio))), h
        else:
            cw, ch = w, h
        return (w - cw) // 2, (h - ch) // 2, cw, ch

    def __call__(self, img: Image.Image | np.ndarray, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        g = generator if generator is not None else torch.default_generator
        a = pixels(img)
        box = self.crop_box(a.shape[1], a.shape[0], g)
        out = resized_crop(a, box, (self.img_size, self.img_size))
        return after_crop(out, self.hflip, self.trivial_augment, self.cutout, g)


@dataclass(frozen=True)
class PadCropTransform:
    """The ResNet paper's CIFAR augmentation (He et al. 2015, section 4.2, after Lee et al.): pad
    `pad` pixels on each side, take a random `img_size` crop, flip half the images. On uint8
    pixels: no resampling at all, so a 32 px image stays 32 px, exactly. `mode` as torchvision's
    `RandomCrop(padding_mode=)`: "constant" pads zeros (the paper's), "reflect" mirrors the image
    about its edge pixels (airbench's), so a shifted crop shows no black border. `cutout`: then
    `cut_out` a square of that side."""

    img_size: int
    pad: int = 4
    mode: str = "constant"
    hflip: bool = True
    cutout: int = 0
    trivial_augment: bool = False

    def __call__(self, img: Image.Image | np.ndarray, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        g = generator if generator is not None else torch.default_generator
        a = pixels(img)
        p = self.pad
        if self.mode == "reflect" and p >= min(a.shape[:2]):
            raise ValueError(f"a {a.shape[1]}x{a.shape[0]} image cannot be mirrored {p} px beyond its edges")
        padded = np.pad(a, ((p, p), (p, p), (0, 0)), mode=self.mode)
        s = self.img_size
        if padded.shape[0] < s or padded.shape[1] < s:
            raise ValueError(f"a {a.shape[1]}x{a.shape[0]} image padded by {p} is smaller than the crop {s}")
        top = int(torch.randint(0, padded.shape[0] - s + 1, (1,), generator=g).item())
        left = int(torch.randint(0, padded.shape[1] - s + 1, (1,), generator=g).item())
        return after_crop(padded[top:top + s, left:left + s], self.hflip, self.trivial_augment, self.cutout, g)


def normalize(batch: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD, device: torch.device | str = "cpu",
              channels_last: bool = False) -> torch.Tensor:
    """uint8 NCHW -> normalised float32, as ToTensor + Normalize compute it: (x/255 - mean) / std.
    Moved to the device first, so a GPU receives uint8 and does the arithmetic itself."""
    x = batch.to(device, non_blocking=True)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # One affine pass, x * 1/(255 std) - mean/std, instead of three (div, sub, div).
    scale = torch.tensor([1 / (255 * v) for v in std], device=x.device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / v for m, v in zip(mean, std)], device=x.device).view(1, -1, 1, 1)
    return torch.addcmul(shift, x.float(), scale)
