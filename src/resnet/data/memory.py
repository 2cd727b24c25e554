"""The small-image fast path: a training set that fits in memory at its training size is decoded
once into one uint8 tensor, and every batch is cut from it, padded, cropped and flipped as a few
tensor operations in the training process: no per-image Python and no worker processes, whose
start-up, pickling and shared-memory copies cost more than 32 px images do (the approach of Keller
Jordan's airbench). The augmentation is `PadCropTransform`'s — padding, a random crop of the
original size, a horizontal flip for half the images — drawn from each image's own seed (as the
DataLoader's is), by an integer hash computed for the whole batch at once; the order and the
sharding over ranks are `EpochSampler`'s. So a run does not depend on how its batches are split:
resumed mid-epoch, or over two processes with half the batch each, it sees the same crops."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .cache import DecodedCache
from .loader import Batch, EpochSampler
from .transforms import MEAN_PIXEL, PadCropTransform


def hashed(seeds: torch.Tensor, salt: int) -> torch.Tensor:
    """A pseudo-random 31-bit integer per int64 seed, for each `salt` another: three rounds of a
    31-bit LCG step and a xor-shift, in int64 arithmetic that cannot overflow (31-bit values times
    a 31-bit multiplier). Neighbouring seeds (the sampler's are consecutive) give unrelated values."""
    x = (seeds % (1 << 28)) * 4 + salt
    for _ in range(3):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        x = x ^ (x >> 13)
    return x


def pad_crop_flip(images: torch.Tensor, pad: int, hflip: bool, seeds: torch.Tensor,
                  mode: str = "constant", cutout: int = 0) -> torch.Tensor:
    """uint8 NCHW images, each padded by `pad` pixels (`mode`: `F.pad`'s, the same padding as
    `np.pad`'s mode of that name), cropped back to its size at an offset drawn from its seed,
    (with `hflip`) mirrored with probability 1/2 and (with `cutout`) a square of that side filled
    with the mean pixel, as `PadCropTransform` does: one gather for the whole batch. Returned as
    NCHW with channels_last strides (the gather writes NHWC), the layout the model runs in."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode=mode)
    top = (hashed(seeds, 0) % (2 * pad + 1))[:, None]
    left = (hashed(seeds, 1) % (2 * pad + 1))[:, None]
    rows, cols = top + torch.arange(h), left + torch.arange(w)
    if hflip:
        mirrored = (hashed(seeds, 2) & 1).bool()[:, None]
        cols = torch.where(mirrored, cols.flip(1), cols)
    # Advanced indices on dims 0, 2, 3 around a slice: the result is (n, h, w, channels).
    out = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    if cutout:
        inside = [_within(hashed(seeds, salt) % side, cutout, side) for salt, side in ((3, h), (4, w))]
        out[inside[0][:, :, None] & inside[1][:, None, :]] = torch.tensor(MEAN_PIXEL, dtype=out.dtype)
    return out.permute(0, 3, 1, 2)


def _within(centres: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """(n, length) bool: the positions along a side of each image that its cutout square covers,
    centred as `cut_out` centres it."""
    start = centres[:, None] - size // 2
    positions = torch.arange(length)
    return (positions >= start) & (positions < start + size)


class TensorLoader:
    """Batches of `pad_crop_flip`ped images from one uint8 tensor, shaped like the DataLoader's:
    `len()` batches, a `sampler` with `set_epoch`, `Batch`es whose indices are dataset positions.
    The images that could not be decoded are reported with the first batch of each epoch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor, batch_size: int,
                 augment: PadCropTransform, seed: int, rank: int, world: int, drop_last: bool,
                 failures: Sequence[tuple[int, str]] = (), weights: torch.Tensor | None = None):
        self.images, self.labels, self.positions = images, labels, positions
        self.batch_size, self.augment, self.drop_last = batch_size, augment, drop_last
        self.failures = list(failures)
        self.sampler = EpochSampler(len(images), True, seed, rank, world, weights=weights)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        draws = list(self.sampler)
        rows = torch.tensor([d.index for d in draws], dtype=torch.long)
        seeds = torch.tensor([d.seed for d in draws], dtype=torch.long)
        aug = self.augment
        for b in range(len(self)):
            part = slice(b * self.batch_size, (b + 1) * self.batch_size)
            chunk = rows[part]
            images = pad_crop_flip(self.images[chunk], aug.pad, aug.hflip, seeds[part], aug.mode, aug.cutout)
            failures = self.failures if b == 0 and self.sampler.start == 0 else []
            yield Batch(images, self.labels[chunk], self.positions[chunk], failures)


def in_memory(cache: DecodedCache, labels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                     list[tuple[int, str]]]:
    """(NCHW uint8 images, their labels, their dataset positions, (position, reason) of the files
    that could not be decoded) from a cache whose images all have one size (one stored with an
    evaluation transform's crop)."""
    good = [i for i, entry in enumerate(cache.entries) if entry[0] >= 0]
    failures = [(i, entry[1]) for i, entry in enumerate(cache.entries) if entry[0] < 0]
    if good:
        pixels = np.stack([cache.get(i) for i in good])            # N, H, W, 3
    else:
        pixels = np.zeros((0, cache.size, cache.size, 3), np.uint8)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2)         # channels_last strides
    return (images, torch.tensor([labels[i] for i in good], dtype=torch.long),
            torch.tensor(good, dtype=torch.long), failures)
