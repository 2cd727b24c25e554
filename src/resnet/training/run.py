"""A training run's set-up: everything that lives for the whole run (`Run`) and where it stands
(`Progress`), built once by `set_up` — device, data, precision, model, optimiser — with every check
that can fail on the user's input run before the expensive work."""

from __future__ import annotations

import functools
import logging
import math
import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .. import data as D
from ..checkpoint import eval_transform, model_card
from ..constants import (AUTO_CACHE_BYTES, LOGIT_ADJUST_TAU, VAL_BATCH_FACTOR, WARMUP_MAX_FRACTION, WHITEN_CHUNK_BYTES,
                         WHITEN_EPS, WHITEN_FLOOR, WHITEN_IMAGES)
from ..data.transforms import EvalTransform, PadCropTransform, TrainTransform, normalize
from ..device import check_step_memory, pick_device
from ..errors import ConfigError
from ..inference.policy import Precision, choose_precision, kept_precision
from ..inference.runtime import memory_format
from ..metrics import imbalanced
from ..models import create_model, fit_weights, load_pretrained, read_pretrained, whiten_conv
from ..options import MAX_WIDTH
from . import distributed as ddp
from .budget import size_for_budget, step_seconds
from .config import TrainConfig
from .optim import make_optimizer
from .recipe import apply_recipe, class_balance_for, eval_size_for, imbalanced_tta, plan_finetune, recipe_applies
from .schedule import crop_size_at, lr_at

log = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint and restored on resume."""

    epochs: int                       # epochs in the whole run (the last maybe cut short)
    epoch: int = 0                    # epochs finished
    step: int = 0                     # optimiser steps taken
    best_acc: float = -1.0            # the best score by the run's `select` key
    best_epoch: int | None = None     # the epoch best.pt holds (None: a checkpoint from before it was kept)
    bad_epochs: int = 0               # epochs since the best one (--patience)
    history: list[dict] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    partial: dict[str, float] = field(default_factory=dict)  # sums of an epoch interrupted mid-way
    steps: int | None = None          # a time budget's target in steps, which may end mid-epoch

    @classmethod
    def restore(cls, epochs: int, state: dict[str, Any]) -> "Progress":
        """From a checkpoint's `state` (`checkpoint.migrate`d), for a run of `epochs`."""
        saved = dict(state["progress"])
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
    plan_lines: list[str]             # what the data is like and what the recipe chose for it, a line each
    size_reason: str | None           # why this width and crop size, when the budget chose them
    split: D.DataSplit
    card: dict[str, Any]              # the saved model's card (`checkpoint.model_card`): its preprocessing
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    workers: int
    model: nn.Module                  # what checkpoints save
    wrapped: nn.Module                # what trains: `model`, maybe DDP-wrapped and compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    select: str                       # the metrics row's key best.pt is chosen by (`selection_key`)
    world: int
    batch: int                        # images per step on this rank: the global batch / world
    main: bool
    steps_per_epoch: int              # of a whole epoch (the loader's length shrinks in a resumed one)

    @property
    def eval_size(self) -> int:
        return int(self.card["eval_size"])

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


def make_loaders(cfg: TrainConfig, split: D.DataSplit, eval_tf: EvalTransform, device: torch.device, rank: int,
                 world: int, local_rank: int) -> tuple[D.TensorLoader | torch.utils.data.DataLoader,
                                                       torch.utils.data.DataLoader | None, int]:
    """(training loader, validation loader, workers), each over this rank's shard, decoding once
    into the cache first when it is on (by default: when the decoded copy is small; always for the
    in-memory loader, which reads its pixels from it): the first process of each machine decodes,
    the others wait for it and read its cache."""
    ta = cfg.auto_augment == "ta_wide"
    if cfg.train_like_eval:
        train_tf = EvalTransform.for_size(cfg.img_size, cfg.crop_pct)
    elif cfg.augment == "pad-crop":
        train_tf = PadCropTransform(cfg.img_size, cfg.padding, cfg.padding_mode, cfg.hflip, cfg.cutout, ta)
    else:
        train_tf = TrainTransform(cfg.img_size, scale=(cfg.scale_min, 1.0), hflip=cfg.hflip, cutout=cfg.cutout,
                                  trivial_augment=ta)
    # In memory, every image is stored at the training size (a centre crop of the shorter side),
    # padded crops need the images at the training size, the others a little larger.
    square = EvalTransform.for_size(cfg.img_size, 1.0) if cfg.in_memory else None
    cache_size = (cfg.img_size if cfg.augment == "pad-crop" and not cfg.train_like_eval
                  else D.cache_size_for(max(cfg.img_size, eval_tf.img_size)))
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
    weights = D.balanced_weights([s.label for s in split.train]) if cfg.class_balance == "sampler" else None
    if cfg.in_memory:
        images, labels, positions, failures = D.in_memory(train_cache, [s.label for s in split.train])
        train_loader = D.TensorLoader(images, labels, positions, batch_size, train_tf, cfg.seed,
                                      rank, world, drop_last, failures, weights)
    else:
        train_loader = D.make_loader(D.ImageDataset(split.train, train_tf, train_cache), batch_size, True, workers,
                                     cfg.seed, device.type == "cuda", rank, world, drop_last=drop_last, weights=weights)
    val_loader = (D.make_loader(D.ImageDataset(split.val, eval_tf, val_cache), batch_size * VAL_BATCH_FACTOR,
                                False, workers, cfg.seed, device.type == "cuda", rank, world)
                  if split.val else None)
    return train_loader, val_loader, workers


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
    weights, trained_at = read_pretrained(cfg.pretrained, cfg.arch) if cfg.pretrained and not resuming else (None, None)
    if weights is not None:
        cfg = fitted_to(cfg, weights)
    split = D.discover(cfg.data, cfg.val, cfg.val_split, cfg.seed, cfg.label_pattern)
    changed = D.data_changed(split, state["classes"], D.read_listing(Path(cfg.out) / "train.csv")) if resuming else None
    if changed:
        raise ConfigError(f"{cfg.data} has {changed}: a run resumes only on the data it trained on; put it back "
                          f"as it was, or train a new run (another --out)")
    if not split.val:
        log.warning("no validation set: best.pt follows training accuracy")
    recipe, stats, recipe_lines = None, None, []
    if not resuming and recipe_applies(cfg):
        stats = D.describe(split.train, len(split.classes), cfg.seed)
        cfg, recipe, recipe_lines = apply_recipe(cfg, stats)
    elif weights is not None and cfg.preset == "finetune":
        cfg, recipe_lines = plan_finetune(cfg, len(split.train), trained_at)
    counts = class_counts(split.train, len(split.classes))
    cfg, balance_lines = with_class_balance(cfg, counts, resuming)
    history = state["progress"]["history"] if resuming else []  # its epochs so far
    cfg = capped_batch(cfg, len(split.train), world) if not resuming else cfg
    batch = ddp.per_rank_batch(cfg.batch_size, world)
    # Before the first step (the precision's timing is one): a step that cannot fit is one line, not an OOM kill.
    check_step_memory(cfg.arch, cfg.width, cfg.img_size, len(split.classes), device, batch, cfg.batch_size)
    precision = run_precision(cfg, device, batch, len(split.classes), (state or {}).get("precision"))
    size_reason = state["size_reason"] if resuming else None  # a resumed run keeps the size it chose
    if cfg.max_minutes and recipe is not None:
        # A size given is the one rung timed, and kept: the epochs it buys still decide the plan below.
        timed = recipe if cfg.fit_size else replace(recipe, ladder=((cfg.width, cfg.img_size),))
        sized, why, epochs = size_for_budget(cfg, timed, split, device, batch, world, precision.dtype)
        if cfg.fit_size:
            cfg, size_reason = sized, why
        # Planned again from the epochs the budget buys: the choices that depend on them (TrivialAugment)
        cfg, recipe, recipe_lines = apply_recipe(cfg, stats, epochs)
    plan_lines = state["plan"] if resuming else [*recipe_lines, *split.notes, *balance_lines]
    # A resumed run rebuilds the network its checkpoint describes, options older files lack included.
    options = state["model_options"] if resuming else {"zero_init_residual": cfg.zero_init_residual, "width": cfg.width}
    card = model_card(cfg.arch, options, split.classes, cfg.eval_size or eval_size_for(cfg.img_size), cfg.crop_pct,
                      cfg.tta, cfg.tta_shift)
    train_loader, val_loader, workers = make_loaders(cfg, split, eval_transform(card), device, rank, world, local_rank)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    sample = whitening_sample(train_loader) if cfg.whiten and not resuming else None
    model, net = build_model(cfg, options, len(split.classes), weights, device, world, sample)
    return Run(cfg=cfg, out=out, device=device, precision=precision, plan_lines=plan_lines, size_reason=size_reason,
               split=split, card=card, train_loader=train_loader, val_loader=val_loader, workers=workers, model=model,
               wrapped=net, optimizer=make_optimizer(model, cfg),
               scaler=torch.amp.GradScaler(device.type, enabled=precision.dtype == torch.float16),
               criterion=make_criterion(cfg, counts, device), select=selection_key(split, history), world=world,
               batch=batch, main=rank == 0, steps_per_epoch=len(train_loader))


def fitted_to(cfg: TrainConfig, weights: dict[str, torch.Tensor]) -> TrainConfig:
    """The configuration at the width of pretrained `weights` unless --width was given (a network
    `resnet train` made is half width, torchvision's full), checked to fit them on shapes alone,
    before the data is read."""
    with torch.device("meta"):
        if "width" not in cfg.given and "fc.weight" in weights:
            width = weights["fc.weight"].shape[1] / create_model(cfg.arch).fc.in_features
            cfg = replace(cfg, width=width) if 0 < width <= MAX_WIDTH else cfg  # else refused below, shapes named
        probe = create_model(cfg.arch, num_classes=weights["fc.weight"].shape[0] if "fc.weight" in weights else None,
                             width=cfg.width)
    fit_weights(probe, weights, cfg.pretrained, cfg.arch)
    return cfg


def with_class_balance(cfg: TrainConfig, counts: list[int], resuming: bool) -> tuple[TrainConfig, list[str]]:
    """(the configuration with what `--class-balance auto` chose for these training `counts`, and
    flip TTA where they are imbalanced (`recipe.imbalanced_tta`), the plan's lines for them). The
    choices are recorded (config.json, the checkpoint) and kept on resume."""
    if resuming:
        return cfg, []
    balance, why = class_balance_for(counts, cfg.class_balance)
    cfg = replace(cfg, class_balance=balance)
    tta_why = imbalanced_tta(cfg, counts)
    if tta_why:
        cfg = replace(cfg, tta=True)
    return cfg, [line for line in (why, tta_why) if line]


def class_counts(samples: list[D.Sample], num_classes: int) -> list[int]:
    return torch.bincount(torch.tensor([s.label for s in samples]), minlength=num_classes).tolist()


class LogitAdjustedLoss(nn.Module):
    """Cross-entropy of the logits plus `shift` (tau x the log class priors): Menon et al. 2021's
    logit-adjusted loss. A frequent class must win by its prior's margin in the loss, so the
    trained model's own logits estimate the balanced posterior: inference is unchanged."""

    def __init__(self, shift: torch.Tensor, label_smoothing: float):
        super().__init__()
        self.register_buffer("shift", shift)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits + self.shift, labels, label_smoothing=self.label_smoothing)


def make_criterion(cfg: TrainConfig, counts: list[int], device: torch.device) -> nn.Module:
    """The training loss for `cfg.class_balance` over classes of these training `counts`:
    cross-entropy, re-weighted by 1 / (classes x a class's share) (scikit-learn's
    class_weight="balanced"), or logit-adjusted; class-balanced sampling keeps it plain."""
    prior = torch.tensor(counts, dtype=torch.float32).clamp(min=1) / max(1, sum(counts))
    if cfg.class_balance == "reweight":
        return nn.CrossEntropyLoss(weight=(1 / (len(counts) * prior)).to(device), label_smoothing=cfg.label_smoothing)
    if cfg.class_balance == "logit-adjust":
        return LogitAdjustedLoss((LOGIT_ADJUST_TAU * prior.log()).to(device), cfg.label_smoothing)
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def selection_key(split: D.DataSplit, history: list[dict]) -> str:
    """What best.pt is chosen by: balanced accuracy where the validation classes are imbalanced
    (accuracy would choose the epoch that best ignores the rare classes), else accuracy; training
    accuracy without a validation set. A resumed run whose `history` was recorded without
    balanced accuracy (before it was measured) goes on choosing as it began, by accuracy."""
    if not split.val:
        return "train_acc"
    if any("val_balanced_acc" not in row for row in history):
        return "val_acc"
    return "val_balanced_acc" if imbalanced(class_counts(split.val, len(split.classes))) else "val_acc"


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
        whiten_conv(model.conv1, whitening, WHITEN_EPS, WHITEN_FLOOR, WHITEN_CHUNK_BYTES)
    if cfg.whiten:  # frozen, in a resumed run too (requires_grad is not in a state_dict)
        model.conv1.weight.requires_grad_(False)
    if cfg.freeze:  # a linear probe: no gradient below the classifier (none is computed there)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("fc."))
    if cfg.sync_bn and world > 1:
        model = ddp.sync_batchnorm(model, device)
    model = model.to(device, memory_format=memory_format(cfg.channels_last))
    net: nn.Module = model
    if torch.distributed.is_initialized():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)  # checkpoints still save `model`: plain state_dict names
    return model, net
