"""The schedule of a run, step by step and epoch by epoch: the learning rate (`lr_at`) and the
crop size of progressive resizing (`crop_size_at`). Pure arithmetic: the loop, the time budget and
the plan's size rule all read the same curves from here."""

from __future__ import annotations

import math

from ..constants import FLAT_FRACTION, RAMP, SIZE_STEP, START_SIZE_FRACTION


def lr_at(step: int, total: int, warmup: int, peak: float, schedule: str) -> float:
    """A linear warm-up over `warmup` steps, then `constant`; `step`: divided by 10 at half and
    three quarters of the run (the ResNet paper's 32k and 48k of 64k iterations); `onecycle` /
    `cosine`: cosine decay; `flat-cos`: the peak until `FLAT_FRACTION` of the run, then cosine."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    if schedule == "step":
        return peak * (0.1 ** ((step >= total // 2) + (step >= total * 3 // 4)))
    start = max(warmup, int(total * FLAT_FRACTION)) if schedule == "flat-cos" else warmup
    if step < start:
        return peak
    progress = min(1.0, (step - start) / max(1, total - start))
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def start_size(img_size: int, min_img_size: int | None) -> int:
    """The first epochs' crop size: `min_img_size`, or `START_SIZE_FRACTION` of `img_size`."""
    if min_img_size is not None:
        return min_img_size
    return max(SIZE_STEP, int(round(img_size * START_SIZE_FRACTION / SIZE_STEP)) * SIZE_STEP)


def crop_size_at(epoch: int, epochs: int, img_size: int, min_img_size: int | None) -> int:
    """Progressive resizing: `start_size` at first, then a linear ramp over the `RAMP` fraction of
    the run to `img_size`, in `SIZE_STEP` steps."""
    low = start_size(img_size, min_img_size)
    t = (epoch / max(1, epochs - 1) - RAMP[0]) / (RAMP[1] - RAMP[0])
    if low >= img_size or t >= 1:
        return img_size
    if t <= 0:
        return low
    return min(img_size, max(low, int(round((low + t * (img_size - low)) / SIZE_STEP)) * SIZE_STEP))
