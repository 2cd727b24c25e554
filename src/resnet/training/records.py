"""What a run leaves behind and says as it goes: checkpoints (last.pt every epoch, best.pt when
it improves), metrics.csv, TensorBoard, the opening lines, an epoch's progress bar or plain log
lines, and the summary it returns."""

from __future__ import annotations

import csv
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..checkpoint import training_checkpoint, save_checkpoint
from ..constants import LOG_EVERY_S
from ..outputs import replace_atomically
from .budget import Budget, now
from .run import Run, Progress


def tensorboard_writer(out: Path):
    """A SummaryWriter in OUT/tensorboard when the optional `tensorboard` package is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def write_metrics(path: Path, rows: list[dict]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    replace_atomically(path, write)


def save(run: Run, path: Path, progress: Progress, budget: Budget | None, metrics: dict) -> None:
    """A checkpoint of the run as it stands (main process only), in `checkpoint.training_checkpoint`'s layout."""
    if not run.main:
        return
    cfg = run.cfg
    card = {**run.card, "epoch": progress.epoch, "metrics": metrics}
    state = {"config": asdict(cfg), "progress": asdict(progress), "precision": run.precision.record(),
             "scheduler": {"step": progress.step, "total_steps": progress.total_steps(run.steps_per_epoch)},
             "plan": run.plan_lines, "size_reason": run.size_reason, "budget": budget.state() if budget else None}
    save_checkpoint(path, training_checkpoint(run.model, run.optimizer, run.scaler, card, state))


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
    for line in run.plan_lines:
        tqdm.write(f"plan: {line}")
    tqdm.write(f"precision: {run.precision.name} ({run.precision.reason})")
    if run.size_reason:
        tqdm.write(f"size: {run.size_reason}")


class PlainBar:
    """An epoch's progress off a terminal (a SLURM log, CI, `> log`), where tqdm's redraws would
    land in the file as carriage returns: a plain line at a quarter, a half and three quarters of
    the epoch, each only if `LOG_EVERY_S` have passed since the last, so a log holds at most four
    lines an epoch with the epoch's own, and none but that one for short epochs."""

    def __init__(self, iterable, desc: str):
        self.iterable, self.desc, self.postfix = iterable, desc, ""
        self.total = len(iterable)
        self.last = now()

    def __iter__(self):
        marks = {self.total * q // 4 for q in (1, 2, 3)}
        for done, item in enumerate(self.iterable):
            if done in marks and now() - self.last >= LOG_EVERY_S:
                self.last = now()
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


def epochs_fit(steps: int, steps_per_epoch: int) -> str:
    whole, tail = divmod(steps, steps_per_epoch)
    return f"{whole} epochs" + (f" and {tail} of {steps_per_epoch} steps of one more" if tail else "")


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
    balanced = f"  val_balanced_acc {row['val_balanced_acc']:.4f}" if run.select == "val_balanced_acc" else ""
    tqdm.write(f"{name + ' ' if name else ''}epoch {progress.epoch}/{progress.epochs}  loss {row['train_loss']:.4f}  "
               f"acc {row['train_acc']:.4f}  val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}{balanced}  "
               f"{row['images_per_second']:.0f} img/s  {row['seconds']:.0f}s")


def summary(run: Run, progress: Progress, started: float) -> dict[str, Any]:
    """The run's result. best.pt is the epoch that scored best on the validation set by the run's
    `select` key, which that choice flatters (the final weights' score is reported beside it), or
    by balanced accuracy (imbalanced classes) the latest within a standard error of the highest
    (`loop.end_epoch`), which is reported beside it."""
    key = run.select
    final = progress.history[-1] if progress.history else {}
    highest = next((r["epoch"] for r in progress.history if r.get(key) == progress.best_acc), None)
    best_epoch = progress.best_epoch or highest
    best_acc = next((r[key] for r in progress.history if r["epoch"] == best_epoch), progress.best_acc)
    return {"best_acc": best_acc, "best_epoch": best_epoch, "highest_acc": progress.best_acc, "highest_epoch": highest,
            "final_acc": final.get(key), "selected_by": key, "class_balance": run.cfg.class_balance,
            "epochs": progress.epoch, "out": str(run.out), "classes": run.split.classes,
            "skipped": len(progress.skipped), "validated": bool(run.split.val),
            "final_train_acc": final.get("train_acc"), "seconds": now() - started,
            "main_process": run.main, "model": run.model}
