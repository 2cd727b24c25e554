"""Preprocessing with torchvision's semantics, on Pillow and torch only.

Images stay uint8 until the batch reaches the model: a worker ships a quarter of the bytes that
float32 would need, and `normalize` turns a whole batch into floats in one vectorised pass (on the
GPU when there is one) instead of once per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.875  # 224/256: the tutorial's Resize(256) -> CenterCrop(224), for any size


def resize_size_for(img_size: int, crop_pct: float = CROP_PCT) -> int:
    return int(round(img_size / crop_pct))


def shorter_side_size(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(int): the shorter side becomes `size`, the longer keeps the aspect
    ratio, truncated as torchvision truncates it."""
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def as_pil(img: Image.Image | np.ndarray) -> Image.Image:
    """Cached images arrive as HWC uint8 arrays; resampling needs a Pillow image."""
    return img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))


def to_tensor_uint8(img: Image.Image) -> torch.Tensor:
    """HWC uint8 Pillow image -> CHW uint8 tensor (no scaling: see `normalize`). A view of HWC
    memory: `collate` stacks such views into an NHWC batch, which is channels_last as it stands."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


@dataclass(frozen=True)
class EvalTransform:
    """Resize(round(s / 0.875)) -> CenterCrop(s) with torchvision's semantics.

    exact=True resizes the whole image and crops: bit for bit what torchvision gives.
    exact=False (the loaders' default) resamples only the box that survives the crop, in one
    Pillow call with the same source coordinates: ~35 % less resampling, and at most 1/255 off
    on a few pixels (Pillow's rounding of the box origin)."""

    img_size: int
    resize_size: int
    exact: bool = False

    @classmethod
    def for_size(cls, img_size: int, crop_pct: float = CROP_PCT, exact: bool = False
                 ) -> "EvalTransform":
        return cls(img_size, resize_size_for(img_size, crop_pct), exact)

    def __call__(self, img: Image.Image | np.ndarray, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        w, h = (img.shape[1], img.shape[0]) if isinstance(img, np.ndarray) else img.size
        rw, rh = shorter_side_size(w, h, self.resize_size)
        s = self.img_size
        if rw < s or rh < s:
            raise ValueError(f"resize {self.resize_size} is smaller than the crop {s}")
        top, left = int(round((rh - s) / 2.0)), int(round((rw - s) / 2.0))
        if (rw, rh) == (w, h):
            # Already at the resize size (a cached image): the crop is a view, and the batch's
            # stack is the only copy made. A Pillow image's array is read-only: copied instead.
            pixels = np.asarray(img)[top:top + s, left:left + s]
            if not pixels.flags.writeable:
                pixels = pixels.copy()
            return torch.from_numpy(pixels).permute(2, 0, 1)
        img = as_pil(img)
        if self.exact:
            img = img.resize((rw, rh), Image.Resampling.BILINEAR)
            return to_tensor_uint8(img.crop((left, top, left + s, top + s)))
        sx, sy = w / rw, h / rh
        box = (left * sx, top * sy, (left + s) * sx, (top + s) * sy)
        return to_tensor_uint8(img.resize((s, s), Image.Resampling.BILINEAR, box=box))


@dataclass(frozen=True)
class TrainTransform:
    """RandomResizedCrop(s, scale, ratio) + RandomHorizontalFlip, torchvision's sampling.

    Randomness comes from the generator handed in, seeded per (run seed, epoch, sample) by the
    sampler, so augmentations do not depend on worker count and a resumed run repeats them exactly.
    The crop is resampled straight from the source box (one pass, filter taps may read just
    outside the box) instead of crop-then-resize."""

    img_size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True

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
        img = as_pil(img)
        left, top, cw, ch = self.crop_box(*img.size, g)
        s = self.img_size
        out = img.resize((s, s), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
        if self.hflip and torch.rand(1, generator=g).item() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # in HWC, so the batch stays NHWC
        return to_tensor_uint8(out)


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
