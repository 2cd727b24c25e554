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
- channels_last memory format (oneDNN's faster layout on CPU); fp32 on CPU because bf16 autocast
  is many times slower on CPUs without AVX-512 BF16, bf16 autocast on CUDA.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import data as D
from .checkpoint import read_checkpoint, save_checkpoint
from .models import create_model, load_pretrained, model_spec
from .runtime import TorchNet, amp_dtype, autocast, pick_device, run_eval
from .transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform, normalize

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot go on (a NaN loss, say); the last good checkpoint is kept."""


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
    eval_size: int | None = None          # default: `test_size_for(img_size)`
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.4                       # for batch 256; scaled linearly with batch_size
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-5
    schedule: str = "onecycle"            # onecycle (warm-up + cosine) | cosine | constant
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    scale_min: float = 0.25               # RandomResizedCrop's lower area bound
    hflip: bool = True
    train_like_eval: bool = False         # the tutorial trains on its eval preprocessing
    zero_init_residual: bool = False      # measured: on short schedules it stalls learning
    pretrained: str | None = None
    workers: int | None = None
    cache: bool | None = None             # None: on when the decoded copy is small (see below)
    cache_dir: str | None = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: str = "auto"                     # auto | off | bf16 | fp16
    channels_last: bool = True
    compile: bool = False                 # torch.compile: measured faster on CUDA, slower on this CPU
    max_minutes: float | None = None
    patience: int | None = None
    save_every: int = 0                   # also write last.pt every N steps (long epochs)
    preset: str = "default"


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # The tutorial exactly: its network at 224, its PREPROCESS for training too, batch 8,
    # plain SGD lr 0.01, CrossEntropy, 10 epochs.
    "seed": dict(arch="resnet18_seed", width=1.0, img_size=224, min_img_size=224, eval_size=224, batch_size=8,
                 lr=0.01 * 256 / 8,
                 momentum=0.0, nesterov=False, weight_decay=0.0, schedule="constant",
                 warmup_epochs=0.0, label_smoothing=0.0, train_like_eval=True, hflip=False,
                 channels_last=False, epochs=10),
    # Fine-tuning ImageNet weights: full resolution, a tenth of the learning rate, short.
    "finetune": dict(width=1.0, img_size=224, min_img_size=224, eval_size=224, lr=0.02, epochs=5, warmup_epochs=0.5,
                     scale_min=0.35, weight_decay=1e-4),
}


def make_config(preset: str = "default", **overrides: Any) -> TrainConfig:
    """A preset's values, then every override that is not None."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from: {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
    cfg = TrainConfig(preset=preset, **values)
    model_spec(cfg.arch)  # an unknown name fails now, not after scanning the data
    for name, value, allowed in (("schedule", cfg.schedule, ("onecycle", "cosine", "constant")),
                                 ("amp", cfg.amp, ("auto", "off", "bf16", "fp16"))):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return cfg


# ---------------------------------------------------------------------------------------------
# Pieces


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)  # BN scales/shifts and biases are 1-D
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, total: int, warmup: int, peak: float, schedule: str) -> float:
    if schedule == "constant":
        return peak
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) under torchrun, else (0, 1, 0). Under torchrun the process
    group is started even for one process, so a one-GPU launch runs the same DDP code as eight."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if (world > 1 or "TORCHELASTIC_RUN_ID" in os.environ) and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


@dataclass
class EpochResult:
    loss: float
    acc: float
    images: int
    seconds: float


# ---------------------------------------------------------------------------------------------
# The run


def train(cfg: TrainConfig, resume: str | None = None, epochs: int | None = None) -> dict[str, Any]:
    """Train per `cfg`, or continue the run saved in `resume` with its own configuration (and
    `epochs`, when given, to extend it). Returns the final summary."""
    start_time = time.monotonic()
    state: dict[str, Any] | None = None
    if resume:
        state = read_checkpoint(resume)
        if "optimizer" not in state:
            raise ValueError(f"{resume} holds no training state to resume from")
        known = {f.name for f in fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in state["config"].items() if k in known})
        cfg.epochs = epochs or cfg.epochs
    rank, world, local_rank = distributed()
    main_process = rank == 0
    device = pick_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not cfg.deterministic
    dtype = amp_dtype(cfg.amp, device)
    seed_everything(cfg.seed, cfg.deterministic)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    # Data
    split = D.discover(cfg.data, cfg.val, cfg.val_split, cfg.seed, cfg.label_pattern)
    if not split.val:
        log.warning("no validation set: best.pt follows training accuracy")
    eval_size = cfg.eval_size or test_size_for(cfg.img_size)
    eval_tf = EvalTransform.for_size(eval_size)
    train_tf = (EvalTransform.for_size(cfg.img_size) if cfg.train_like_eval
                else TrainTransform(cfg.img_size, scale=(cfg.scale_min, 1.0), hflip=cfg.hflip))
    train_cache = val_cache = None
    cache_size = D.cache_size_for(max(cfg.img_size, eval_size))  # crops are cut from this copy
    n_images = len(split.train) + len(split.val)
    use_cache = cfg.cache if cfg.cache is not None else D.cache_bytes(n_images, cache_size) <= D.AUTO_CACHE_BYTES
    if use_cache:
        root = cfg.cache_dir or D.default_cache_dir()
        if main_process:
            tqdm.write(f"decoded cache: {n_images} images at {cache_size}px in {root}")
        def bar(total: int):
            return lambda items: tqdm(items, total=total, desc="decoding", leave=False,
                                      disable=not main_process)

        train_cache = D.build_cache(split.train, root, cache_size, bar(len(split.train)))
        val_cache = (D.build_cache(split.val, root, eval_tf.resize_size, bar(len(split.val)), eval_tf)
                     if split.val else None)
    workers = cfg.workers if cfg.workers is not None else D.default_workers(device.type)
    train_ds = D.ImageDataset(split.train, train_tf, train_cache)
    batch_size = cfg.batch_size // world
    train_loader = D.make_loader(train_ds, batch_size, True, workers, cfg.seed,
                                 device.type == "cuda", rank, world, drop_last=len(train_ds) > batch_size * world)
    # Validation runs whole on the main process: exact figures with no gathering across ranks.
    val_loader = (D.make_loader(D.ImageDataset(split.val, eval_tf, val_cache), batch_size * 2, False,
                                workers, cfg.seed, device.type == "cuda")
                  if split.val and main_process else None)
    skipped = dict(split.skipped)
    if main_process:
        D.write_samples(out / "train.csv", split.train, split.classes)
        if split.val:
            D.write_samples(out / "val.csv", split.val, split.classes)

    # Model and optimiser
    options = {"zero_init_residual": cfg.zero_init_residual, "width": cfg.width}
    model = create_model(cfg.arch, num_classes=len(split.classes), **options)
    if cfg.pretrained and state is None:
        load_pretrained(model, cfg.pretrained, cfg.arch)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    peak_lr = cfg.lr * cfg.batch_size / 256  # linear scaling rule (Goyal et al.)
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=peak_lr,
                                momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    epoch, step, best_acc, history = 0, 0, -1.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state.get("scaler") or {})
        epoch, step = state["epoch"], state["scheduler"]["step"]
        total_steps = max(state["scheduler"]["total_steps"], steps_per_epoch * cfg.epochs)
        best_acc = state.get("best_acc", -1.0)
        history = list(state.get("history", []))
        torch.set_rng_state(state["rng"]["torch"])
        skipped.update(dict(state.get("skipped", [])))
    net: nn.Module = model
    if torch.distributed.is_initialized():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)  # checkpoints still save `model`: plain state_dict names
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def checkpoint(path: Path, epoch_done: int, metrics: dict) -> None:
        if not main_process:
            return
        save_checkpoint(path, {
            "model": model.state_dict(), "arch": cfg.arch, "model_options": options,
            "classes": split.classes, "eval_size": eval_size, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "epoch": epoch_done, "metrics": metrics,
            "config": asdict(cfg), "optimizer": optimizer.state_dict(),
            "scheduler": {"step": step, "total_steps": total_steps}, "scaler": scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state()}, "best_acc": best_acc, "history": history,
            "skipped": sorted(skipped.items())})

    def crop_at(e: int, n: int) -> int:
        """This run's crop size in epoch `e` of `n`."""
        return crop_size_at(e, n, cfg.img_size, cfg.min_img_size)

    if main_process:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        first = crop_at(0, cfg.epochs)
        sizes = f"{first} -> {cfg.img_size}" if first != cfg.img_size else str(first)
        ddp = (f", DDP over {world} process(es) ({torch.distributed.get_backend()})"
               if torch.distributed.is_initialized() else "")
        tqdm.write(f"{cfg.arch} on {device.type}{ddp}: {len(split.train)} train / {len(split.val)} val "
                   f"images, {len(split.classes)} classes, {cfg.epochs} epochs of {steps_per_epoch} steps"
                   f" at {sizes} px, {workers} workers" + (f", {len(skipped)} files skipped" if skipped else ""))

    board = tensorboard_writer(out) if main_process else None
    budget = cfg.max_minutes * 60 if cfg.max_minutes else None

    timing: dict[str, float] = {}  # the step-time model, from `first_fit`

    def step_time(size: int) -> float:
        """Seconds per training step at a crop size: what does not grow with pixels (loading,
        the optimiser step...) plus forward + backward, which grows as size ** p."""
        return timing["overhead"] + timing["compute"] * (size / timing["size"]) ** timing["p"]

    def epoch_time(size: int) -> float:
        # a validation batch is twice as large and forward only: ~2/3 of a training step's compute
        val_batches = len(split.val) / (2 * batch_size)
        val = val_batches * timing["compute"] * 2 / 3 * (eval_size / timing["size"]) ** timing["p"]
        return steps_per_epoch * step_time(size) + val

    def first_fit(step_s: float) -> int:
        """From the first steps' time, before a whole epoch has been seen."""
        crop = crop_at(epoch, cfg.epochs)
        largest = cfg.img_size if cfg.img_size != crop else eval_size  # the sizes training will see
        compute, p = compute_time_by_size(model, (crop, largest), device, dtype, cfg.channels_last, batch_size)
        timing.update(size=crop, compute=min(compute, step_s), overhead=max(0.0, step_s - compute), p=p)
        return fit_to_budget(budget, time.monotonic() - start_time, epoch, lambda e, n: epoch_time(crop_at(e, n)))

    def refit() -> int:
        """From the whole epochs so far: the first steps can mislead (prefetched batches, warm-up),
        and so can one epoch (a slow validation, a busy machine). Predictions are scaled by the
        median ratio of measured to predicted time over the last five epochs (the crop sizes now
        in use; the first epoch, which starts the workers, left out once there are two). The count
        moves only when it would with half an epoch to spare, so noise does not shake the schedule."""
        ratios = sorted(r["seconds"] / epoch_time(r["img_size"]) for r in history[max(min(1, epoch - 1), epoch - 5):])
        k = ratios[len(ratios) // 2]

        def fit(extra_s: float) -> int:
            return fit_to_budget(budget, time.monotonic() - start_time + extra_s, epoch,
                                 lambda e, n: k * epoch_time(crop_at(e, n)))

        half = k * epoch_time(crop_at(epoch, cfg.epochs)) / 2
        more, fewer = fit(half), fit(-half)
        return more if more > cfg.epochs else fewer if fewer < cfg.epochs else cfg.epochs

    bad_epochs = 0
    t_warm = time.monotonic()
    while epoch < cfg.epochs:
        start_in_epoch = step - epoch * steps_per_epoch
        crop = crop_at(epoch, cfg.epochs)
        train_loader.sampler.set_epoch(epoch, start_in_epoch * batch_size, crop)
        net.train()
        t0 = time.monotonic()
        seen = correct = 0
        loss_sum = 0.0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not main_process,
                   leave=False, dynamic_ncols=True)
        for batch in bar:
            for i, reason in batch.failures:
                skipped.setdefault(split.train[i].path, reason)
            if len(batch.labels) == 0:
                continue
            x = normalize(batch.images, device=device, channels_last=cfg.channels_last)
            y = batch.labels.to(device, non_blocking=True)
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, total_steps, warmup, peak_lr, cfg.schedule)
            with autocast(device, dtype):
                logits = net(x)
                loss = criterion(logits.float(), y)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}: "
                                    f"stopped; the last good checkpoint is {out / 'last.pt'}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            n = len(y)
            seen += n
            loss_sum += loss.item() * n
            correct += (logits.argmax(1) == y).sum().item()
            elapsed = time.monotonic() - t0
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                            img_s=f"{seen * world / elapsed:.0f}")
            if step == 2:
                t_warm = time.monotonic()  # the first steps pay one-off costs: not measured
            if budget and state is None and step == min(12, steps_per_epoch):
                step_s = (time.monotonic() - t_warm) / max(1, step - 2)
                cfg.epochs = from_rank0([first_fit(step_s)], device)[0]
                total_steps = cfg.epochs * steps_per_epoch
                bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
                tqdm.write(f"--max-minutes {cfg.max_minutes}: {cfg.epochs} epochs ({total_steps} steps) fit"
                           f" (forward + backward measured to grow as crop size ** {timing['p']:.2f})")
            if cfg.save_every and step % cfg.save_every == 0 and step % steps_per_epoch:
                checkpoint(out / "last.pt", epoch, {})
        bar.close()
        train_time = time.monotonic() - t0
        train_res = EpochResult(loss_sum / max(seen, 1), correct / max(seen, 1), seen, train_time)
        val_loss = val_acc = float("nan")
        if val_loader is not None:
            model.eval()
            logits, labels, _, failures = run_eval(TorchNet(model, device, dtype, cfg.channels_last), val_loader,
                                                   IMAGENET_MEAN, IMAGENET_STD)
            for i, reason in failures:
                skipped.setdefault(split.val[i].path, reason)
            if len(labels):
                val_loss = F.cross_entropy(logits, labels).item()
                val_acc = (logits.argmax(1) == labels).float().mean().item()
        epoch += 1
        row = {"epoch": epoch, "img_size": crop, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": train_res.loss, "train_acc": train_res.acc, "val_loss": val_loss, "val_acc": val_acc,
               "images_per_second": seen * world / max(train_time, 1e-9),
               "seconds": time.monotonic() - t0}
        history.append(row)
        score = val_acc if val_loader is not None else train_res.acc
        improved = score > best_acc
        if improved:
            best_acc, bad_epochs = score, 0
        else:
            bad_epochs += 1
        if main_process:
            write_metrics(out / "metrics.csv", history)
            if board is not None:
                for key, value in row.items():
                    if key != "epoch":
                        board.add_scalar(key, value, epoch)
            checkpoint(out / "last.pt", epoch, row)
            if improved:
                checkpoint(out / "best.pt", epoch, row)
            tqdm.write(f"epoch {epoch}/{cfg.epochs}  loss {train_res.loss:.4f}  acc {train_res.acc:.4f}  "
                       f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  "
                       f"{row['images_per_second']:.0f} img/s  {row['seconds']:.0f}s")
        # Rank 0 decides (it alone validates): ranks that disagreed would wait on each other forever.
        stop = 0
        if cfg.patience and bad_epochs >= cfg.patience:
            tqdm.write(f"no improvement for {cfg.patience} epochs: stopping early")
            stop = 1
        fitted = cfg.epochs
        if budget and state is None and epoch < cfg.epochs:
            # Refitted every epoch: larger crops are only measured once the ramp reaches them, and a
            # shorter plan still ends with the schedule annealed, where stopping early would not.
            fitted = refit()
            if time.monotonic() - start_time + row["seconds"] > budget:  # the last resort
                tqdm.write("time budget spent: stopping")
                stop = 1
        stop, fitted = from_rank0([stop, fitted], device)
        if stop:
            break
        if fitted != cfg.epochs:
            tqdm.write(f"--max-minutes {cfg.max_minutes}: {fitted} epochs fit (measured over epoch {epoch})")
            cfg.epochs, total_steps = fitted, fitted * steps_per_epoch
    if main_process and skipped:
        D.write_skipped(out / "skipped.txt", sorted(skipped.items()))
    if board is not None:
        board.close()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return {"best_acc": best_acc, "epochs": epoch, "out": str(out), "classes": split.classes,
            "skipped": len(skipped), "seconds": time.monotonic() - start_time,
            "main_process": main_process}


def crop_size_at(epoch: int, epochs: int, img_size: int, min_img_size: int | None,
                 ramp: tuple[float, float] = (0.4, 0.85)) -> int:
    """Progressive resizing (fast.ai; FFCV's ResNet recipes): cheap low-resolution epochs while the
    network learns coarse features, then a linear ramp to full size over the `ramp` fraction of the
    run, so the last epochs train at the size the model is evaluated near. `min_img_size` None is
    two thirds of `img_size`. Sizes in between are multiples of 8 px."""
    low = min_img_size if min_img_size is not None else max(8, int(round(img_size * 2 / 3 / 8)) * 8)
    t = (epoch / max(1, epochs - 1) - ramp[0]) / (ramp[1] - ramp[0])
    if low >= img_size or t >= 1:
        return img_size
    if t <= 0:
        return low
    return min(img_size, max(low, int(round((low + t * (img_size - low)) / 8)) * 8))


def test_size_for(img_size: int) -> int:
    """Evaluate ~15 % larger than the random crops were: they zoom in (scale < 1), so objects look
    larger in training than in a centre crop of the same size (Touvron et al. 2019). Multiple of 8."""
    return max(8, int(round(img_size * 1.15 / 8)) * 8)


def fit_to_budget(budget_s: float, spent_s: float, epochs_done: int,
                  epoch_s: Callable[[int, int], float]) -> int:
    """How many epochs in total fit the budget, at least one more than `epochs_done`.
    `epoch_s(epoch, epochs)` is the predicted time of an epoch (training and validation) when the
    run has `epochs` in total: with progressive resizing, later epochs cost more, and where they
    fall depends on the total. 3 % of the budget is kept for the final evaluation and report
    (measured: 18 s of a 20-minute run on 2 cores)."""
    left = budget_s * 0.97 - spent_s
    epochs = epochs_done + 1
    while sum(epoch_s(e, epochs + 1) for e in range(epochs_done, epochs + 1)) <= left:
        epochs += 1
    return epochs


def from_rank0(values: list[int], device: torch.device) -> list[int]:
    """Rank 0's values on every rank (identity outside DDP)."""
    if not torch.distributed.is_initialized():
        return values
    nccl = torch.distributed.get_backend() == "nccl"
    t = torch.tensor(values, dtype=torch.long, device=device if nccl else "cpu")
    torch.distributed.broadcast(t, 0)
    return t.tolist()


def compute_time_by_size(model: nn.Module, sizes: tuple[int, int], device: torch.device,
                         dtype: torch.dtype | None, channels_last: bool, batch_size: int
                         ) -> tuple[float, float]:
    """(seconds of forward + backward for a batch at the smaller size, p) with that time growing as
    size ** p: timed on random images at both sizes. Compute grows with pixels (p = 2) only in
    theory: fixed per-layer costs and kernel choices bend it (about 1.65 between 64 and 96 px on
    the development CPU). Eval mode, so BatchNorm statistics are untouched; gradients are dropped."""
    small, large = sorted(sizes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    best = {small: math.inf, large: math.inf}  # one entry when the sizes are equal
    for rnd in range(4):  # the first round warms up; the fastest of the other three counts
        for size in best:
            x = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=fmt)
            t = time.perf_counter()
            with autocast(device, dtype):
                model(x).float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rnd:
                best[size] = min(best[size], time.perf_counter() - t)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if small == large:
        return best[small], 2.0
    ratio = max(best[large], 1e-9) / max(best[small], 1e-9)
    return best[small], max(0.5, min(3.0, math.log(ratio) / math.log(large / small)))


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
