"""From files on disk to batches: `files` (find images, label, split), `stats` (what the images
are like, for the plan), `decode` (robustly, to RGB), `cache` (the decoded cache), `loader`
(dataset, sampler, loader) and `memory` (the small-image fast path: pixels in one tensor), on
`transforms` (torchvision's preprocessing, re-implemented). Their names are importable from here
(`from resnet import data as D`).

A real folder has broken files. They are found at scan time where that is cheap (empty, not an
image, a decompression bomb: Pillow reads only the header) and otherwise when they are decoded
(truncated data): the dataset then hands back a failure instead of raising, the collate function
drops it from the batch and reports it, and the epoch goes on. Every skipped file is listed with
its reason.
"""

from ..errors import DataError
from .cache import (CACHE_FORMAT, CACHE_LIMIT_ENV, DecodedCache, build_cache, cache_bytes, cache_entries, cache_limit,
                    cache_size_for, default_cache_dir, prune)
from .decode import (NOT_FETCHED, ImageInput, UnreadableImage, as_items, decode, load_image, read_error, read_images,
                     to_rgb)
from .files import (IMG_EXTENSIONS, VAL_DIR_NAMES, DataSplit, Sample, Scan, check_header, check_label_pattern,
                    data_changed, discover, expand_paths, find_images, is_image_name, label_from_name, labelled_files,
                    read_listing, samples_for, scan, stratified_split, write_samples, write_skipped)
from .loader import (Batch, Draw, EpochSampler, ImageDataset, Item, balanced_weights, collate, default_workers,
                     make_loader)
from .memory import TensorLoader, in_memory, pad_crop_flip
from .stats import DataStats, describe

__all__ = ["NOT_FETCHED", "data_changed", "expand_paths", "read_listing",
           "CACHE_FORMAT", "CACHE_LIMIT_ENV", "DecodedCache", "build_cache", "cache_bytes", "cache_entries", "cache_limit",
           "cache_size_for", "default_cache_dir", "prune",
           "ImageInput", "UnreadableImage", "as_items", "decode", "load_image", "read_error", "read_images", "to_rgb",
           "IMG_EXTENSIONS", "VAL_DIR_NAMES", "DataSplit", "Sample", "Scan", "check_header", "check_label_pattern", "discover",
           "find_images", "is_image_name", "label_from_name", "labelled_files", "samples_for", "scan",
           "stratified_split", "write_samples", "write_skipped", "Batch", "Draw", "EpochSampler", "balanced_weights",
           "ImageDataset", "Item", "collate", "default_workers", "make_loader", "TensorLoader", "in_memory", "pad_crop_flip",
           "DataStats", "describe", "DataError"]
