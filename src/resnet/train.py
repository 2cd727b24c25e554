"""The training loop, top to bottom: data, model, optimiser, schedule, epochs, checkpoints.

Presets are named recipes; any explicit option overrides them. `default` is tuned for training from
scratch on a 2-core CPU (measured in docs/benchmarks.md):
- resolution is the big lever: compute grows with pixels, so train small and evaluate a little
  larger (`eval_size`), which also undoes the apparent zoom of random crops (Touvron et al.,
  "Fixing the train-test resolution discrepancy"); and grow the crops during the run (progressive
  resizing, `crop_size_at`): 64 -> 96 px beat a fixed 80 px by ~2 points in the same time;
- the peak learning rate (0.4 per 256 images) was chosen in the same runs: 0.1 and 0.2 were worse;
- SGD with Nesterov momentum, weight decay only on conv/linear weights (decaying BN scales and
  biases only hurts), linear warm-up then one-cycle cosine decay, label smoothing 0.1. Not zero-init
  of each block's last BN: measured here, it stalls the first epochs of short runs (ResNet-20 on
  digits: loss still 2.30 after an epoch, against 0.79 without it);
- channels_last memory format (oneDNN's faster layout on CPU); the precision is `--amp auto`:
  bf16 autocast on CUDA; on a CPU with bf16 kernels (AVX-512-BF16, AMX) the faster of fp32 and bf16
  on a few timed steps of the actual model; fp32 on other CPUs, where bf16 is emulated and ~15x
  slower (`policy.choose_precision`).
Every other tuning constant is in `tuning.py`, with its reason; the time budget is `budget.py`.

The file reads top to bottom: the configuration and its checks, resuming, the small pieces, the
run's set-up, one epoch, and last `train`, the loop itself.
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import data as D
from . import distributed as ddp
from .budget import Budget, RunShape, compute_time_by_size, largest_that_fits, step_seconds
from .checkpoint import read_checkpoint, save_checkpoint
from .errors import CheckpointError, ConfigError, TrainingError
from .models import MAX_WIDTH, create_model, fit_weights, load_pretrained, model_spec, read_weights, whiten_conv
from .device import check_step_memory, pick_device
from .options import AMP_CHOICES, AUGMENTS, DEVICES, MIN_IMG_SIZE, PADDING_MODES, PRESETS, SCHEDULES
from .outputs import check_output_dir
from .plan import Recipe, eval_size_for, plan_recipe
from .policy import Precision, choose_precision, kept_precision
from .runtime import TorchNet, autocast, memory_format, run_eval
from .transforms import (CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, EvalTransform, PadCropTransform, TrainTransform,
                         normalize)
from .tuning import (AUTO_CACHE_BYTES, FIRST_FIT_STEPS, LOG_EVERY_S, RAMP, SIZE_STEP, START_SIZE_FRACTION,
                     UNTIMED_STEPS, VAL_BATCH_FACTOR, WARMUP_MAX_FRACTION, WHITEN_EPS, WHITEN_FLOOR,
                     WHITEN_IMAGES)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str = ""
    val: str | None = None
    val_split: float | None = None
    label_pattern: str | None = None
    out: str = "runs/train"
    arch: str = "resnet18"
    width: float = 0.5                    # channel multiplier: a quarter of ResNet-18's compute
    img_size: int = 96                    # the last epochs' crops (see `crop_size_at`)
    min_img_size: int | None = None       # the first epochs' crops; default: 2/3 of img_size
    eval_size: int | None = None          # default: `plan.eval_size_for(img_size)`
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.4                       # for batch 256; scaled linearly with batch_size
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-5
    schedule: str = "onecycle"            # options.SCHEDULES: onecycle (warm-up + cosine), cosine, step, constant
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    scale_min: float = 0.25               # RandomResizedCrop's lower area bound
    augment: str = "random-resized-crop"  # options.AUGMENTS; "pad-crop": the paper's CIFAR augmentation
    padding: int = 4                      # pad-crop: pixels added on each side (the paper's 4)
    padding_mode: str = "constant"        # options.PADDING_MODES: zeros (the paper's) or the mirrored edge
    cutout: int = 0                       # a square of this side of each training crop filled with the mean pixel
    hflip: bool = True
    crop_pct: float = CROP_PCT            # evaluation: resize to eval_size / crop_pct, centre-crop
    tta: bool = False                     # validate, and have the saved model scored, with the mirror image too
    train_like_eval: bool = False         # the tutorial trains on its eval preprocessing
    zero_init_residual: bool = False      # measured: on short schedules it stalls learning
    whiten: bool = False                  # the stem starts as the patches' whitening, frozen (models.whiten_conv)
    pretrained: str | None = None
    workers: int | None = None
    cache: bool | None = None             # None: on when the decoded copy is small (see below)
    in_memory: bool = False               # the small-image fast path: pixels in one tensor (data/memory.py)
    cache_dir: str | None = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: str = "auto"                     # options.AMP_CHOICES
    channels_last: bool = True
    compile: bool = False                 # torch.compile: measured faster on CUDA, slower on this CPU
    sync_bn: bool = False                 # under torchrun: BatchNorm statistics over the global batch
    max_minutes: float | None = None
    fit_size: bool = False                # --max-minutes also picks width and img_size (`size_for_budget`)
    patience: int | None = None
    save_every: int = 0                   # also write last.pt every N steps (long epochs)
    preset: str = "default"
    given: list[str] = field(default_factory=list)  # the options set by the user: the plan keeps them


# Each option's allowed values, checked before any work is done: (test, what is allowed).
_RANGES: dict[str, tuple[Any, str]] = {
    "epochs": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "img_size": (lambda v: v >= MIN_IMG_SIZE, f"at least {MIN_IMG_SIZE}"),
    "min_img_size": (lambda v: v is None or v >= MIN_IMG_SIZE, f"at least {MIN_IMG_SIZE}"),
    "eval_size": (lambda v: v is None or v >= MIN_IMG_SIZE, f"at least {MIN_IMG_SIZE}"),
    "width": (lambda v: 0 < v <= MAX_WIDTH, f"in (0, {MAX_WIDTH}]"),
    "lr": (lambda v: v > 0, "positive"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "0 or more"),
    "warmup_epochs": (lambda v: v >= 0, "0 or more"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "scale_min": (lambda v: 0 < v <= 1, "in (0, 1]: the smallest fraction of the image a crop keeps"),
    "val_split": (lambda v: v is None or 0 <= v < 1, "in [0, 1)"),
    "workers": (lambda v: v is None or v >= 0, "0 or more"),
    "max_minutes": (lambda v: v is None or v > 0, "positive"),
    "patience": (lambda v: v is None or v >= 1, "at least 1"),
    "save_every": (lambda v: v >= 0, "0 (off) or more steps"),
    "schedule": (lambda v: v in SCHEDULES, ", ".join(SCHEDULES)),
    "augment": (lambda v: v in AUGMENTS, ", ".join(AUGMENTS)),
    "padding": (lambda v: v >= 0, "0 or more"),
    "padding_mode": (lambda v: v in PADDING_MODES, ", ".join(PADDING_MODES)),
    "cutout": (lambda v: v >= 0, "0 (off) or more pixels"),
    "crop_pct": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "amp": (lambda v: v in AMP_CHOICES, ", ".join(AMP_CHOICES)),
    "device": (lambda v: v in DEVICES, ", ".join(DEVICES)),
}
PATH_OPTIONS = ("data", "val", "out", "cache_dir")
SIZE_OPTIONS = {"width", "img_size", "min_img_size", "eval_size"}
# How the run goes on, not what it trains; `amp`: a precision given anew overrides the one the run
# chose (left out, or `auto`, the run keeps its own).
RESUME_MAY_CHANGE = ("epochs", "workers", "device", "cache_dir", "amp")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_config(cfg: TrainConfig) -> None:
    """Every value in its range and --out a folder it can write, before anything is read or
    written: a `ConfigError` naming the option, its value and what is allowed."""
    for name, (ok, allowed) in _RANGES.items():
        value = getattr(cfg, name)
        if not ok(value):
            raise ConfigError(f"{_flag(name)} must be {allowed}, not {value!r}")
    model_spec(cfg.arch)  # an unknown name fails now, not after scanning the data
    D.check_label_pattern(cfg.label_pattern)
    if cfg.in_memory and cfg.cache is False:
        raise ConfigError("--in-memory reads its pixels from the decoded cache: not with --no-cache")
    if cfg.in_memory and (cfg.augment != "pad-crop" or cfg.train_like_eval):
        raise ConfigError("--in-memory augments as --augment pad-crop does (it is the small-image fast path): "
                          f"not with {'the seed preset' if cfg.train_like_eval else '--augment ' + cfg.augment}")
    if cfg.augment == "pad-crop" and cfg.padding_mode == "reflect" and cfg.padding >= cfg.img_size:
        raise ConfigError(f"--padding-mode reflect mirrors the image inside its edges: --padding must be less than "
                          f"the image's {cfg.img_size} px, not {cfg.padding}")
    if cfg.cutout and cfg.train_like_eval:
        raise ConfigError("--cutout hides part of each augmented training crop: not with the seed preset, which "
                          "trains on the evaluation's centre crops")
    if cfg.whiten and cfg.pretrained:
        raise ConfigError("--whiten starts the first layer from the training images: not with --pretrained, "
                          "whose first layer is already trained")
    check_output_dir("--out", cfg.out, [p for p in (cfg.data, cfg.val) if p])


def make_config(preset: str = "default", **overrides: Any) -> TrainConfig:
    """A preset's values, then every override that is not None; checked, with paths absolute (a
    run can be resumed from anywhere). A preset that evaluates at its training size keeps doing so
    when --img-size changes it."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from: {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(given) - known
    if unknown:
        raise ConfigError(f"unknown training options: {', '.join(sorted(unknown))}")
    values = dict(PRESETS[preset])
    if "img_size" in given:
        for key in ("min_img_size", "eval_size"):
            if key in values and values[key] == values.get("img_size"):
                values[key] = given["img_size"]
    values.update(given)
    # The default preset's size is a choice made for 2 CPU cores: a budget that buys more may take
    # a larger one, unless the size was given or comes with pretrained weights.
    values.setdefault("fit_size", preset == "default" and bool(values.get("max_minutes")) and not values.get(
        "pretrained") and not SIZE_OPTIONS & given.keys())
    for key in PATH_OPTIONS:
        if values.get(key):
            values[key] = os.path.abspath(values[key])
    cfg = TrainConfig(preset=preset, given=sorted(given), **values)
    check_config(cfg)
    return cfg


def resume_config(path: str | Path, given: dict[str, Any] | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """(configuration, saved state) to continue the run saved in `path` (a last.pt). Resuming
    continues that run as it was: in its own folder, on its own data, for its own plan of epochs
    (a time budget keeps the time already spent). Its folder is the one `path` is in: a run copied
    or moved elsewhere goes on there, and never writes into the folder it was copied from. Options
    given again must agree with it (paths compared as absolute paths); only `RESUME_MAY_CHANGE` may
    differ, and `epochs` extends the run."""
    state = read_checkpoint(path)
    if "optimizer" not in state or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} holds no training state to resume from (resume from last.pt)")
    known = {f.name for f in fields(TrainConfig)}
    saved = {k: v for k, v in state["config"].items() if k in known}
    cfg = TrainConfig(**{**saved, "out": str(Path(path).resolve().parent)})
    conflicts = []
    for key, value in (given or {}).items():
        if value is None or key in RESUME_MAY_CHANGE:
            continue
        stored = getattr(cfg, key)
        same = (stored is not None and Path(value).resolve() == Path(stored).resolve()
                if key in PATH_OPTIONS else value == stored)
        if not same:
            conflicts.append(f"{_flag(key) if key != 'data' else 'DATA'} {value} (the run's: {stored})")
    if conflicts:
        raise ConfigError(f"--resume {path} continues that run as it was, but " + "; ".join(conflicts)
                          + ": leave these out, or start a new run with another --out")
    planned = state.get("progress", {}).get("epochs") or state["config"].get("epochs", cfg.epochs)
    changes = {k: (given or {})[k] for k in RESUME_MAY_CHANGE if (given or {}).get(k) is not None}
    cfg = replace(cfg, **{"epochs": planned, **changes})
    check_config(cfg)
    return cfg, state


# ---------------------------------------------------------------------------------------------
# Pieces


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)  # BN scales/shifts and biases are 1-D
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float
                   ) -> torch.optim.Optimizer:
    """SGD over `param_groups`, with the fused kernel: one pass over the parameters instead of a
    pass per operation (ResNet-18's step: 9 ms against 16 ms with `foreach` on the 2-core CPU)."""
    return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum,
                           nesterov=nesterov and momentum > 0, fused=True)


def lr_at(step: int, total: int, warmup: int, peak: float, schedule: str) -> float:
    """A linear warm-up over `warmup` steps, then `constant`; `step`: divided by 10 at half and
    three quarters of the run (the ResNet paper's 32k and 48k of 64k iterations); `onecycle` /
    `cosine`: cosine decay."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    if schedule == "step":
        return peak * (0.1 ** ((step >= total // 2) + (step >= total * 3 // 4)))
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
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


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def tensorboard_writer(out: Path):
    """A SummaryWriter in OUT/tensorboard when the optional `tensorboard` package is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def write_metrics(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The run's set-up and state


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint and restored on resume."""

    epochs: int                       # the plan: epochs in the whole run (the last maybe cut short)
    epoch: int = 0                    # epochs finished
    step: int = 0                     # optimiser steps taken
    best_acc: float = -1.0
    bad_epochs: int = 0               # epochs since the best one (--patience)
    history: list[dict] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    partial: dict[str, float] = field(default_factory=dict)  # sums of an epoch interrupted mid-way
    steps: int | None = None          # a time budget's plan in steps, which may end mid-epoch

    @classmethod
    def restore(cls, epochs: int, state: dict[str, Any]) -> "Progress":
        saved = dict(state.get("progress") or {})
        if not saved:  # checkpoints written before `progress` existed
            saved = {"epoch": state["epoch"], "step": state["scheduler"]["step"],
                     "best_acc": state.get("best_acc", -1.0), "history": state.get("history", [])}
        saved["skipped"] = dict(saved.get("skipped") or state.get("skipped", []))
        if saved.get("epochs") != epochs:  # --epochs given anew: whole epochs, as many as it says
            saved["steps"] = None
        return cls(**{**saved, "epochs": epochs})

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.epochs * steps_per_epoch if self.steps is None else self.steps

    def replan(self, steps: int, steps_per_epoch: int) -> None:
        """A time budget's plan: `steps` in all, the last epoch cut short where they end in it."""
        self.steps, self.epochs = steps, math.ceil(steps / steps_per_epoch)


@dataclass
class Run:
    """Everything that lives for the whole run, built once by `set_up`."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    precision: Precision              # the autocast dtype (None: fp32) and why it was chosen
    plan: list[str]                   # what the data is like and what the default chose for it
    size_reason: str | None           # why this width and crop size, when the budget chose them
    split: D.DataSplit
    eval_size: int
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    workers: int
    model: nn.Module                  # what checkpoints save
    net: nn.Module                    # what trains: `model`, maybe DDP-wrapped and compiled
    options: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    world: int
    batch: int                        # images per step on this rank: the global batch / world
    main: bool
    steps_per_epoch: int              # of a whole epoch (the loader's length shrinks in a resumed one)

    @property
    def dtype(self) -> torch.dtype | None:
        return self.precision.dtype

    def crop_at(self, epoch: int, epochs: int) -> int:
        return crop_size_at(epoch, epochs, self.cfg.img_size, self.cfg.min_img_size)

    def lr(self, progress: Progress) -> float:
        # Linear scaling rule (Goyal et al.) on the global batch, whatever the number of processes.
        peak = self.cfg.lr * self.cfg.batch_size / 256
        total = progress.total_steps(self.steps_per_epoch)
        warmup = int(min(self.cfg.warmup_epochs * self.steps_per_epoch, WARMUP_MAX_FRACTION * total))
        return lr_at(progress.step, total, warmup, peak, self.cfg.schedule)


def set_up_device(cfg: TrainConfig) -> torch.device:
    """The device: under torchrun on CUDA, the local rank's GPU."""
    device = pick_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not cfg.deterministic
    return device


def make_loaders(cfg: TrainConfig, split: D.DataSplit, eval_size: int, device: torch.device, rank: int,
                 world: int, local_rank: int) -> tuple[D.TensorLoader | torch.utils.data.DataLoader,
                                                       torch.utils.data.DataLoader | None, int]:
    """(training loader, validation loader, workers), each over this rank's shard, decoding once
    into the cache first when it is on (by default: when the decoded copy is small; always for the
    in-memory loader, which reads its pixels from it): the first process of each machine decodes,
    the others wait for it and read its cache."""
    eval_tf = EvalTransform.for_size(eval_size, cfg.crop_pct)
    if cfg.train_like_eval:
        train_tf = EvalTransform.for_size(cfg.img_size, cfg.crop_pct)
    elif cfg.augment == "pad-crop":
        train_tf = PadCropTransform(cfg.img_size, cfg.padding, cfg.padding_mode, cfg.hflip, cfg.cutout)
    else:
        train_tf = TrainTransform(cfg.img_size, scale=(cfg.scale_min, 1.0), hflip=cfg.hflip, cutout=cfg.cutout)
    # In memory, every image is stored at the training size (a centre crop of the shorter side),
    # padded crops need the images at the training size, the others a little larger.
    square = EvalTransform.for_size(cfg.img_size, 1.0) if cfg.in_memory else None
    cache_size = (cfg.img_size if cfg.augment == "pad-crop" and not cfg.train_like_eval
                  else D.cache_size_for(max(cfg.img_size, eval_size)))
    n_images = len(split.train) + len(split.val)
    cached = cfg.cache if cfg.cache is not None else D.cache_bytes(n_images, cache_size) <= AUTO_CACHE_BYTES
    root = cfg.cache_dir or D.default_cache_dir()
    if rank == 0 and (cached or cfg.in_memory):
        tqdm.write(f"decoded cache: {n_images} images at {cache_size}px in {root}")
    # disable=None: a bar on a terminal only (off one its redraws would be carriage-return junk)
    bar = functools.partial(tqdm, desc="decoding", leave=False, disable=None if rank == 0 else True)
    train_cache = val_cache = None
    if cached or cfg.in_memory:
        train_cache = D.build_cache(split.train, root, cache_size, functools.partial(bar, total=len(split.train)),
                                    square, builder=local_rank == 0)
    if cached and split.val:
        val_cache = D.build_cache(split.val, root, eval_tf.resize_size,
                                  functools.partial(bar, total=len(split.val)), eval_tf, builder=local_rank == 0)
    workers = 0 if cfg.in_memory else cfg.workers if cfg.workers is not None else D.default_workers(device.type)
    batch_size = ddp.per_rank_batch(cfg.batch_size, world)
    drop_last = len(split.train) > batch_size * world
    if cfg.in_memory:
        images, labels, positions, failures = D.in_memory(train_cache, [s.label for s in split.train])
        train_loader = D.TensorLoader(images, labels, positions, batch_size, train_tf, cfg.seed,
                                      rank, world, drop_last, failures)
    else:
        train_loader = D.make_loader(D.ImageDataset(split.train, train_tf, train_cache), batch_size, True, workers,
                                     cfg.seed, device.type == "cuda", rank, world, drop_last=drop_last)
    val_loader = (D.make_loader(D.ImageDataset(split.val, eval_tf, val_cache), batch_size * VAL_BATCH_FACTOR,
                                False, workers, cfg.seed, device.type == "cuda", rank, world)
                  if split.val else None)
    return train_loader, val_loader, workers


def val_forwards(cfg: TrainConfig, split: D.DataSplit, world: int) -> int:
    """Images one rank's validation pass puts through the network: what it costs the budget."""
    return math.ceil(len(split.val) / world) * (2 if cfg.tta else 1)


def size_for_budget(cfg: TrainConfig, recipe: Recipe, split: D.DataSplit, device: torch.device, batch: int,
                    world: int, dtype: torch.dtype | None) -> tuple[TrainConfig, str]:
    """(the configuration at the largest (width, crop size) of the recipe's ladder that still gets
    its `enough_epochs` in `--max-minutes`, why). More epochs of a small network stop paying once
    it has enough; a budget that buys more goes to resolution and width instead. Each candidate's
    forward + backward is timed on random batches at its first and last crop sizes and turned into
    epochs by the budget's own fit; the loader and the decoded cache are left out (the run's timed
    steps fix the real count), in the run's precision `dtype`. Every rank takes rank 0's choice."""
    steps, val_images = max(1, len(split.train) // cfg.batch_size), val_forwards(cfg, split, world)
    ladder, enough = recipe.ladder, recipe.enough_epochs
    fixed = cfg.min_img_size is not None and cfg.min_img_size >= cfg.img_size  # no progressive resizing

    def model_at(width: float) -> nn.Module:
        return create_model(cfg.arch, num_classes=len(split.classes), width=width).to(
            device, memory_format=memory_format(cfg.channels_last))

    def epochs_at(rung: tuple[float, int]) -> int:
        width, size = rung
        crop_at = functools.partial(crop_size_at, img_size=size, min_img_size=size if fixed else None)
        first = crop_at(0, 2)
        compute, p = compute_time_by_size(model_at(width), (first, size), device, dtype, cfg.channels_last, batch)
        eval_size = size if fixed else eval_size_for(size)
        budget = Budget(cfg.max_minutes * 60, RunShape(steps, val_images, batch, eval_size, crop_at))
        return budget.plan(0, compute, compute, first, p) // steps  # whole epochs

    index, counts = largest_that_fits(ladder, epochs_at, enough)
    # Ranks time differently and may stop at different sizes: all take rank 0's choice and figures
    # (padded with -1 to one length, as a broadcast needs).
    shared = ddp.from_rank0([index, *counts, *[-1] * (len(ladder) - len(counts))], device)
    index, counts = shared[0], [n for n in shared[1:] if n >= 0]
    width, size = ladder[index]
    estimates = ", ".join(f"{w:g} @ {s} px: {n}" for (w, s), n in zip(ladder, counts))
    why = (f"the largest that still gets {enough} epochs" if counts[index] >= enough else
           f"fewer than {enough} epochs fit: more epochs pay before a larger network")
    sizes = dict(min_img_size=size, eval_size=size) if fixed else {}
    return (replace(cfg, width=width, img_size=size, **sizes),
            f"width {width:g}, {size} px, {why} (epochs estimated from timed forward + backward: {estimates})")


def apply_plan(cfg: TrainConfig, split: D.DataSplit) -> tuple[TrainConfig, Recipe | None, list[str]]:
    """(the configuration with the recipe planned from the training data in every option the user
    left out, the recipe, what was seen and chosen, a line each). Only the default preset plans,
    and not from pretrained weights, whose network and sizes are their own."""
    if cfg.preset != "default" or cfg.pretrained:
        return cfg, None, []
    stats = D.describe(split.train, len(split.classes), cfg.seed)
    recipe = plan_recipe(stats)
    planned = {k: v for k, v in recipe.values.items() if k not in cfg.given}
    if "img_size" in cfg.given:  # the other sizes follow the one given, as the recipe has them follow its own
        for key in ("min_img_size", "eval_size"):
            if key in planned:
                planned[key] = cfg.img_size if recipe.values[key] == recipe.values["img_size"] else None
    if cfg.cache is False and "in_memory" in planned:  # the in-memory loader reads the decoded cache
        planned["in_memory"] = False
    unplanned = set(cfg.given)
    if not cfg.hflip and planned.get("tta"):  # trained without mirror images (digits): not scored on them
        planned["tta"] = False
        unplanned.add("tta")
    kept = sorted(k for k in recipe.values if k in cfg.given and recipe.values[k] != getattr(cfg, k))
    lines = [f"data: {stats.line()}", *(why for keys, why in recipe.reasons if set(keys) - unplanned)]
    if kept:
        lines.append("as given: " + ", ".join(f"{_flag(k)} {getattr(cfg, k)}" for k in kept))
    return replace(cfg, **planned), recipe, lines


def capped_batch(cfg: TrainConfig, images: int, world: int) -> TrainConfig:
    """A batch is never larger than the training images (every rank's share of them): more only
    takes memory (a stray zero in --batch-size once had the kernel kill the process). The peak
    learning rate stays what the batch asked for gave (`--lr` is per 256 images), as the batches
    of all the images it trained on before."""
    largest = max(world, images // world * world)
    if cfg.batch_size <= largest:
        return cfg
    tqdm.write(f"batch: {cfg.batch_size} is more than the {images} training images: {largest} (the same peak "
               "learning rate)")
    return replace(cfg, batch_size=largest, lr=cfg.lr * cfg.batch_size / largest)


def run_precision(cfg: TrainConfig, device: torch.device, batch: int, num_classes: int,
                  saved: dict[str, str] | None) -> Precision:
    """The one precision of the whole run: chosen at its start and recorded, then kept on every
    resume (a torchrun restart too), for validation, and as the saved model's own for `evaluate`
    and every other inference path. `--amp auto` times a training step of the preset's network in
    fp32 and in bf16 where the CPU has bf16 kernels; `--deterministic` takes the capability rule
    instead (two runs of one command must not part ways on a close timing). The timing draws on a
    forked random generator: whether it ran changes no initial weight. Every rank takes rank 0's."""
    if saved is not None and cfg.amp == "auto":
        return kept_precision(saved, device)

    @functools.cache  # built on the first timing, if there is one (most CPUs and GPUs time nothing)
    def probe() -> nn.Module:
        return create_model(cfg.arch, num_classes=num_classes, width=cfg.width).to(
            device, memory_format=memory_format(cfg.channels_last))

    def seconds_with(dtype: torch.dtype | None) -> float:
        return step_seconds(probe(), cfg.img_size, device, cfg.channels_last, batch, dtype)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return ddp.gather(choose_precision(cfg.amp, device, None if cfg.deterministic else seconds_with))[0]


def set_up(cfg: TrainConfig, state: dict[str, Any] | None) -> Run:
    """Device, data, model, optimiser: every check that can fail on the user's input runs before
    the expensive work (the pretrained weights are read before the data is scanned and decoded;
    --out, checked with the configuration, is created after)."""
    resuming = state is not None
    device = set_up_device(cfg)
    rank, world, local_rank = ddp.start(device)
    seed_everything(cfg.seed, cfg.deterministic)
    weights = read_weights(cfg.pretrained, cfg.arch) if cfg.pretrained and not resuming else None
    if weights is not None:  # do they fit? Checked on shapes alone, before the data is read
        with torch.device("meta"):
            probe = create_model(cfg.arch, num_classes=weights["fc.weight"].shape[0] if "fc.weight" in weights
                                 else None, width=cfg.width)
        fit_weights(probe, weights, cfg.pretrained, cfg.arch)
    split = D.discover(cfg.data, cfg.val, cfg.val_split, cfg.seed, cfg.label_pattern)
    changed = D.data_changed(split, state["classes"], D.read_listing(Path(cfg.out) / "train.csv")) if resuming else None
    if changed:
        raise ConfigError(f"{cfg.data} has {changed}: a run resumes only on the data it trained on; put it back "
                          f"as it was, or train a new run (another --out)")
    if not split.val:
        log.warning("no validation set: best.pt follows training accuracy")
    cfg, recipe, plan = apply_plan(cfg, split) if not resuming else (cfg, None, (state or {}).get("plan") or [])
    cfg = capped_batch(cfg, len(split.train), world) if not resuming else cfg
    batch = ddp.per_rank_batch(cfg.batch_size, world)
    # Before the first step (the precision's timing is one): a step that cannot fit is one line, not an OOM kill.
    check_step_memory(cfg.arch, cfg.width, cfg.img_size, len(split.classes), device, batch, cfg.batch_size)
    precision = run_precision(cfg, device, batch, len(split.classes), (state or {}).get("precision"))
    size_reason = None
    if cfg.fit_size and recipe is not None:
        cfg, size_reason = size_for_budget(cfg, recipe, split, device, batch, world, precision.dtype)
    eval_size = cfg.eval_size or eval_size_for(cfg.img_size)
    train_loader, val_loader, workers = make_loaders(cfg, split, eval_size, device, rank, world, local_rank)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # A resumed run rebuilds the network its checkpoint describes, options older files lack included.
    options = state["model_options"] if resuming else {"zero_init_residual": cfg.zero_init_residual, "width": cfg.width}
    sample = whitening_sample(train_loader) if cfg.whiten and not resuming else None
    model, net = build_model(cfg, options, len(split.classes), weights, device, world, sample)
    return Run(cfg=cfg, out=out, device=device, precision=precision, plan=plan, size_reason=size_reason, split=split,
               eval_size=eval_size, train_loader=train_loader, val_loader=val_loader, workers=workers, model=model,
               net=net, options=options,
               optimizer=make_optimizer(model, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay),
               scaler=torch.amp.GradScaler(device.type, enabled=precision.dtype == torch.float16),
               criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), world=world, batch=batch,
               main=rank == 0, steps_per_epoch=len(train_loader))


def whitening_sample(loader: D.TensorLoader | torch.utils.data.DataLoader) -> torch.Tensor:
    """`WHITEN_IMAGES` training images spread evenly over the data set (whose order is by class),
    normalised: the same on every rank and for any number of ranks, so a DDP run starts from the
    stem a single process would."""
    n = len(loader.images) if isinstance(loader, D.TensorLoader) else len(loader.dataset)
    picks = torch.linspace(0, n - 1, min(n, WHITEN_IMAGES)).long()
    if isinstance(loader, D.TensorLoader):
        images = loader.images[picks]
    else:  # through the dataset's training transform, each image with its own seed
        images = D.collate([loader.dataset[i] for i in picks.tolist()]).images
    return normalize(images)


def build_model(cfg: TrainConfig, options: dict[str, Any], num_classes: int, weights: dict | None,
                device: torch.device, world: int, whitening: torch.Tensor | None = None
                ) -> tuple[nn.Module, nn.Module]:
    """(the model checkpoints save, the module that trains it: DDP-wrapped and compiled as asked).
    `whitening`: the images a new run's whitened stem is computed from."""
    model = create_model(cfg.arch, num_classes=num_classes, **options)
    if weights is not None:
        load_pretrained(model, weights, cfg.arch, source=cfg.pretrained)
    if whitening is not None:
        whiten_conv(model.conv1, whitening, WHITEN_EPS, WHITEN_FLOOR)
    if cfg.whiten:  # frozen, in a resumed run too (requires_grad is not in a state_dict)
        model.conv1.weight.requires_grad_(False)
    if cfg.sync_bn and world > 1:
        model = ddp.sync_batchnorm(model, device)
    model = model.to(device, memory_format=memory_format(cfg.channels_last))
    net: nn.Module = model
    if torch.distributed.is_initialized():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)  # checkpoints still save `model`: plain state_dict names
    return model, net


def restore(run: Run, state: dict[str, Any]) -> None:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state.get("scaler") or {})
    torch.set_rng_state(state["rng"]["torch"])
    run.size_reason = state.get("size_reason")


def save(run: Run, path: Path, progress: Progress, budget: Budget | None, metrics: dict) -> None:
    """A checkpoint of the run as it stands (main process only)."""
    if not run.main:
        return
    cfg = run.cfg
    save_checkpoint(path, {
        "model": run.model.state_dict(), "arch": cfg.arch, "model_options": run.options,
        "classes": run.split.classes, "eval_size": run.eval_size, "crop_pct": cfg.crop_pct, "tta": cfg.tta,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "epoch": progress.epoch, "metrics": metrics,
        "config": asdict(cfg), "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
        "scheduler": {"step": progress.step, "total_steps": progress.total_steps(run.steps_per_epoch)},
        "rng": {"torch": torch.get_rng_state()}, "progress": asdict(progress), "precision": run.precision.record(),
        "plan": run.plan, "size_reason": run.size_reason, "budget": budget.state() if budget else None})


def announce(run: Run, progress: Progress) -> None:
    cfg = run.cfg
    first = run.crop_at(progress.epoch, progress.epochs)
    sizes = f"{first} -> {cfg.img_size}" if first != cfg.img_size else str(first)
    over = (f", DDP over {run.world} process(es) ({torch.distributed.get_backend()}"
            f"{', synchronised BatchNorm' if run.cfg.sync_bn and run.world > 1 else ''})"
            if torch.distributed.is_initialized() else "")
    skipped = len(progress.skipped)
    # A budget's epochs are planned from the first timed steps (the "--max-minutes" line follows).
    epochs = (f"as many epochs of {run.steps_per_epoch} steps as fit" if cfg.max_minutes and progress.epoch == 0
              else f"{progress.epochs} epochs of {run.steps_per_epoch} steps")
    tqdm.write(f"{cfg.arch} on {run.device.type}{over}: {len(run.split.train)} train / {len(run.split.val)} val "
               f"images, {len(run.split.classes)} classes, {epochs} at {sizes} px, "
               f"{run.workers} worker{'' if run.workers == 1 else 's'}" + (f", {skipped} files skipped" if skipped else ""))
    for line in run.plan:
        tqdm.write(f"plan: {line}")
    tqdm.write(f"precision: {run.precision.name} ({run.precision.reason})")
    if run.size_reason:
        tqdm.write(f"size: {run.size_reason}")


# ---------------------------------------------------------------------------------------------
# One epoch


class PlainBar:
    """An epoch's progress off a terminal (a SLURM log, CI, `> log`), where tqdm's redraws would
    land in the file as carriage returns: a plain line at a quarter, a half and three quarters of
    the epoch, each only if `LOG_EVERY_S` have passed since the last, so a log holds at most four
    lines an epoch with the epoch's own, and none but that one for short epochs."""

    def __init__(self, iterable, desc: str):
        self.iterable, self.desc, self.postfix = iterable, desc, ""
        self.total = len(iterable)
        self.last = time.monotonic()

    def __iter__(self):
        marks = {self.total * q // 4 for q in (1, 2, 3)}
        for done, item in enumerate(self.iterable):
            if done in marks and time.monotonic() - self.last >= LOG_EVERY_S:
                self.last = time.monotonic()
                tqdm.write(f"{self.desc}: {done}/{self.total} steps  {self.postfix}")
            yield item

    def set_postfix(self, **values: str) -> None:
        self.postfix = "  ".join(f"{k} {v}" for k, v in values.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        pass


def epoch_bar(loader, desc: str, main: bool):
    """tqdm's bar on a terminal, `PlainBar` lines elsewhere; nothing on ranks other than 0."""
    if main and not sys.stderr.isatty():
        return PlainBar(loader, desc)
    return tqdm(loader, desc=desc, disable=not main, leave=False, dynamic_ncols=True)


@dataclass
class EpochSums:
    seen: int = 0
    correct: int = 0
    loss: float = 0.0
    seconds: float = 0.0

    def over_ranks(self) -> "EpochSums":
        """The sums of all ranks (the time is rank 0's): the epoch's figures cover every image."""
        parts = ddp.gather(asdict(self))
        return EpochSums(sum(p["seen"] for p in parts), sum(p["correct"] for p in parts),
                         sum(p["loss"] for p in parts), parts[0]["seconds"])


def plan_budget(run: Run, progress: Progress, budget: Budget, step_s: float, crop: int) -> int:
    """The first plan of a time budget, in steps, from the first steps' time and the compute
    measured at the sizes training will see."""
    largest = run.cfg.img_size if run.cfg.img_size != crop else run.eval_size
    compute, p = compute_time_by_size(run.model, (crop, largest), run.device, run.dtype, run.cfg.channels_last,
                                      run.batch)
    steps = ddp.from_rank0([budget.plan(progress.epoch, step_s, compute, crop, p)], run.device)[0]
    tqdm.write(f"--max-minutes {run.cfg.max_minutes}: {epochs_fit(steps, run.steps_per_epoch)} fit"
               f" (forward + backward measured to grow as crop size ** {budget.model.p:.2f})")
    return steps


def epochs_fit(steps: int, steps_per_epoch: int) -> str:
    whole, tail = divmod(steps, steps_per_epoch)
    return f"{whole} epochs" + (f" and {tail} of {steps_per_epoch} steps of one more" if tail else "")


def train_epoch(run: Run, progress: Progress, budget: Budget | None) -> EpochSums:
    """One epoch (or the rest of one, when resumed mid-epoch), updating `progress` step by step.
    With a budget not yet planned, the plan is made after the first `FIRST_FIT_STEPS` steps."""
    cfg, steps = run.cfg, run.steps_per_epoch
    start_in_epoch = progress.step - progress.epoch * steps
    crop = run.crop_at(progress.epoch, progress.epochs)
    run.train_loader.sampler.set_epoch(progress.epoch, start_in_epoch * run.batch, crop)
    # A mid-epoch checkpoint holds the sums of all ranks: rank 0 carries them on, the others add theirs.
    sums = EpochSums(**progress.partial) if start_in_epoch else EpochSums()
    if not run.main:
        sums = EpochSums(seconds=sums.seconds)
    run.net.train()
    t0 = time.monotonic() - sums.seconds
    t_timed, done_here = t0, 0
    bar = epoch_bar(run.train_loader, f"epoch {progress.epoch + 1}/{progress.epochs}", run.main)
    for batch in bar:
        for i, reason in batch.failures:
            progress.skipped.setdefault(run.split.train[i].path, reason)
        if len(batch.labels) == 0:
            continue
        x = normalize(batch.images, device=run.device, channels_last=cfg.channels_last)
        y = batch.labels.to(run.device, non_blocking=True)
        for g in run.optimizer.param_groups:
            g["lr"] = run.lr(progress)
        with autocast(run.device, run.dtype):
            logits = run.net(x)
            loss = run.criterion(logits.float(), y)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss is {loss.item()} at epoch {progress.epoch + 1}, step {progress.step + 1}: "
                                f"stopped; the last good checkpoint is {run.out / 'last.pt'}")
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        progress.step += 1
        done_here += 1
        sums.seen += len(y)
        sums.loss += loss.item() * len(y)
        sums.correct += (logits.argmax(1) == y).sum().item()
        sums.seconds = time.monotonic() - t0
        bar.set_postfix(loss=f"{sums.loss / sums.seen:.3f}", acc=f"{sums.correct / sums.seen:.3f}",
                        img_s=f"{sums.seen * run.world / max(sums.seconds, 1e-9):.0f}")
        if done_here == UNTIMED_STEPS:
            t_timed = time.monotonic()
        if budget and budget.model is None and done_here == min(FIRST_FIT_STEPS, steps):
            step_s = (time.monotonic() - t_timed) / max(1, done_here - UNTIMED_STEPS)
            progress.replan(plan_budget(run, progress, budget, step_s, crop), steps)
            bar.set_description(f"epoch {progress.epoch + 1}/{progress.epochs}")
        if progress.step >= progress.total_steps(steps):  # a budget's last epoch, cut short
            break
        if cfg.save_every and progress.step % cfg.save_every == 0 and progress.step % steps:
            progress.partial = asdict(sums.over_ranks())
            save(run, run.out / "last.pt", progress, budget, {})
    bar.close()
    # The last step's gradients are not needed (the next step sets them anew): freed here, they take
    # no memory through validation, nor are they copied with the model it scores.
    run.optimizer.zero_grad(set_to_none=True)
    progress.partial = {}
    return sums.over_ranks()


class ValSums(NamedTuple):
    """One rank's validation: summed loss, correct answers, images scored, unreadable files."""

    loss: float
    correct: int
    images: int
    failures: list[tuple[int, str]]


def validate(run: Run, progress: Progress) -> tuple[float, float]:
    """(loss, accuracy) on the validation set, through the one inference path; NaN without one.
    Each rank scores its own slice with rank 0's weights, and the counts are summed."""
    if run.val_loader is None:
        return float("nan"), float("nan")
    # The saved model as `evaluate` runs it: a copy with its BatchNorms folded, in the run's
    # precision (in bf16 the folded weights round otherwise than the unfolded ones).
    net = TorchNet.prepare(copy.deepcopy(run.model), run.device, run.dtype, run.cfg.channels_last)
    logits, labels, _, failures = run_eval(net, run.val_loader, IMAGENET_MEAN, IMAGENET_STD, run.cfg.tta)
    mine = ValSums(F.cross_entropy(logits, labels, reduction="sum").item() if len(labels) else 0.0,
                   (logits.argmax(1) == labels).sum().item(), len(labels), failures)
    parts: list[ValSums] = ddp.gather(mine)
    for i, reason in (f for part in parts for f in part.failures):
        progress.skipped.setdefault(run.split.val[i].path, reason)
    n = sum(part.images for part in parts)
    if not n:
        return float("nan"), float("nan")
    return sum(part.loss for part in parts) / n, sum(part.correct for part in parts) / n


def end_epoch(run: Run, progress: Progress, sums: EpochSums, val_loss: float, val_acc: float, crop: int,
              seconds: float) -> tuple[dict, bool]:
    """Record the finished epoch in `progress`: (its metrics row, whether it is the best so far)."""
    progress.epoch += 1
    row = {"epoch": progress.epoch, "img_size": crop, "lr": run.optimizer.param_groups[0]["lr"],
           "train_loss": sums.loss / max(sums.seen, 1), "train_acc": sums.correct / max(sums.seen, 1),
           "val_loss": val_loss, "val_acc": val_acc,
           "images_per_second": sums.seen / max(sums.seconds, 1e-9), "seconds": seconds}
    progress.history.append(row)
    score = val_acc if run.val_loader is not None else row["train_acc"]
    improved = score > progress.best_acc
    progress.best_acc = max(progress.best_acc, score)
    progress.bad_epochs = 0 if improved else progress.bad_epochs + 1
    return row, improved


def next_plan(run: Run, progress: Progress, budget: Budget | None, last_epoch_s: float) -> bool:
    """Whether to stop now, decided on rank 0 and shared (ranks that disagreed would wait on each
    other forever), with a budget's plan refitted into `progress`. Stops on --patience, or when the
    budget cannot take another epoch; a budget refits the plan every epoch (larger crops are only
    measured once the ramp reaches them, and a shorter plan still ends with the schedule annealed,
    where stopping early would not)."""
    spe = run.steps_per_epoch
    stop, planned = False, progress.steps
    if run.cfg.patience and progress.bad_epochs >= run.cfg.patience:
        tqdm.write(f"no improvement for {run.cfg.patience} epochs: stopping early")
        stop = True
    if budget and budget.model is not None and progress.epoch < progress.epochs:
        planned = budget.refit(progress.history, progress.epoch, progress.total_steps(spe))
        next_part = min(spe, planned - progress.epoch * spe) / spe  # the last epoch may be part of one
        if budget.cannot_fit(last_epoch_s * next_part):
            tqdm.write("time budget spent: stopping")
            stop = True
    stop, planned = ddp.from_rank0([int(stop), -1 if planned is None else planned], run.device)
    if planned >= 0:
        if planned != progress.steps and not stop:
            tqdm.write(f"--max-minutes {run.cfg.max_minutes}: {epochs_fit(planned, spe)} fit "
                       f"(measured over epoch {progress.epoch})")
        progress.replan(planned, spe)
    return bool(stop)


# ---------------------------------------------------------------------------------------------
# The run


def begin(run: Run, state: dict[str, Any] | None, started: float) -> tuple[Progress, Budget | None]:
    """Where the run starts (from `state` when resumed), its time budget, and the files that
    describe it (train.csv, val.csv, config.json, the first lines)."""
    progress = Progress(epochs=run.cfg.epochs, skipped=dict(run.split.skipped))
    if state is not None:
        restore(run, state)
        progress = Progress.restore(run.cfg.epochs, state)
        progress.skipped.update(run.split.skipped)
    ddp.same_on_all_ranks("the step to start from (resuming needs --out on a file system all nodes share)",
                          progress.step)
    budget = None
    if run.cfg.max_minutes:
        shape = RunShape(run.steps_per_epoch, val_forwards(run.cfg, run.split, run.world), run.batch, run.eval_size,
                         run.crop_at)
        budget = Budget.restore(run.cfg.max_minutes * 60, shape, (state or {}).get("budget"), started=started)
    if run.main:
        D.write_samples(run.out / "train.csv", run.split.train, run.split.classes)
        if run.split.val:
            D.write_samples(run.out / "val.csv", run.split.val, run.split.classes)
        (run.out / "config.json").write_text(json.dumps(
            {**asdict(run.cfg), "precision": run.precision.record(), "plan": run.plan, "size_reason": run.size_reason},
            indent=2))
        announce(run, progress)
    return progress, budget


def record_epoch(run: Run, progress: Progress, budget: Budget | None, board, row: dict, improved: bool,
                 name: str = "") -> None:
    """The finished epoch in metrics.csv, TensorBoard, last.pt (and best.pt), and one line (led by
    `name` where several networks train side by side)."""
    write_metrics(run.out / "metrics.csv", progress.history)
    if board is not None:
        for key, value in row.items():
            if key != "epoch":
                board.add_scalar(key, value, progress.epoch)
    save(run, run.out / "last.pt", progress, budget, row)
    if improved:
        save(run, run.out / "best.pt", progress, budget, row)
    tqdm.write(f"{name + ' ' if name else ''}epoch {progress.epoch}/{progress.epochs}  loss {row['train_loss']:.4f}  "
               f"acc {row['train_acc']:.4f}  val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}  "
               f"{row['images_per_second']:.0f} img/s  {row['seconds']:.0f}s")


def summary(run: Run, progress: Progress, started: float) -> dict[str, Any]:
    """The run's result. best.pt is the epoch that scored best on the validation set, which that
    choice flatters: the final weights' score is reported beside it."""
    key = "val_acc" if run.val_loader is not None else "train_acc"
    final = progress.history[-1] if progress.history else {}
    best_epoch = next((r["epoch"] for r in progress.history if r[key] == progress.best_acc), None)
    return {"best_acc": progress.best_acc, "best_epoch": best_epoch, "final_acc": final.get(key),
            "epochs": progress.epoch, "out": str(run.out), "classes": run.split.classes,
            "skipped": len(progress.skipped), "validated": bool(run.split.val),
            "final_train_acc": final.get("train_acc"), "seconds": time.monotonic() - started,
            "main_process": run.main, "model": run.model}


def train(cfg: TrainConfig, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train per `cfg`, or continue the run whose saved `state` `resume_config` returned with its
    configuration. Returns the final summary, with the trained `model` (this rank's copy). Under
    torchrun the process group is destroyed on every way out, errors included, and the TensorBoard
    writer is closed."""
    started = time.monotonic()  # a time budget counts the data scan and the decoded cache too
    board = None
    try:
        run = set_up(cfg, state)  # its cfg has the width and crop size the budget chose, where it chose them
        progress, budget = begin(run, state, started)
        board = tensorboard_writer(run.out) if run.main else None
        while progress.epoch < progress.epochs:
            crop = run.crop_at(progress.epoch, progress.epochs)
            sums = train_epoch(run, progress, budget)
            ddp.sync_buffers(run.model)
            t_val = time.monotonic()
            val_loss, val_acc = validate(run, progress)
            row, improved = end_epoch(run, progress, sums, val_loss, val_acc, crop,
                                      sums.seconds + time.monotonic() - t_val)
            if run.main:
                record_epoch(run, progress, budget, board, row, improved)
            if next_plan(run, progress, budget, row["seconds"]):
                break
        if run.main and progress.skipped:
            D.write_skipped(run.out / "skipped.txt", sorted(progress.skipped.items()))
    finally:
        if board is not None:
            board.close()
        ddp.stop()
    return summary(run, progress, started)
