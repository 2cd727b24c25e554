"""What a training set is like, read before anything is planned: how many images and classes,
how balanced, how large (the shorter side's median and spread) and whether grey. Sizes and modes
come from the headers of a seeded sample of the images (Pillow reads no pixels for them), so a
50,000-image folder is described in a fraction of a second."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from ..constants import STATS_SAMPLE
from ..metrics import imbalanced
from .files import Sample

GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")


@dataclass(frozen=True)
class DataStats:
    images: int
    classes: int
    short_side: int        # the median shorter side, px
    short_side_p10: int    # a tenth of the images are smaller than this...
    short_side_p90: int    # ...and a tenth larger than this
    grey: float            # the fraction stored with one channel
    smallest_class: int    # images in the rarest class...
    largest_class: int     # ...and in the commonest

    def line(self) -> str:
        """The statistics as the run announces them."""
        balance = (f"imbalanced: {self.smallest_class} to {self.largest_class} a class"
                   if imbalanced([self.smallest_class, self.largest_class]) else "balanced")
        grey = f", {self.grey:.0%} grey" if self.grey else ""
        return (f"{self.images} images, {self.classes} classes ({balance}), shorter side {self.short_side} px "
                f"(10-90 %: {self.short_side_p10}-{self.short_side_p90}){grey}")

    def record(self) -> dict:
        return asdict(self)


def describe(samples: Sequence[Sample], classes: int, seed: int = 0) -> DataStats:
    """`DataStats` of `samples`: counts from all of them, sizes from the headers of up to
    `STATS_SAMPLE` drawn with `seed` (the median of 1,000 is within a few pixels of the whole's).
    A file whose header no longer reads is left out of the sizes (the loader reports it)."""
    picked = samples if len(samples) <= STATS_SAMPLE else random.Random(seed).sample(list(samples), STATS_SAMPLE)
    sides, grey = [], 0
    for sample in picked:
        try:
            with Image.open(sample.path) as im:
                sides.append(min(im.size))
                grey += im.mode in GREY_MODES
        except (OSError, ValueError, SyntaxError):
            continue
    counts = np.bincount([s.label for s in samples], minlength=classes)
    p10, median, p90 = (int(v) for v in np.percentile(sides or [0], (10, 50, 90), method="nearest"))
    return DataStats(images=len(samples), classes=classes, short_side=median, short_side_p10=p10,
                     short_side_p90=p90, grey=grey / max(1, len(sides)),
                     smallest_class=int(counts.min()), largest_class=int(counts.max()))
