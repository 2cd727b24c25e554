"""`--max-minutes`: how many steps fit a time budget, measured rather than guessed.

The `Budget` measures (a step-time model from the first steps, each epoch's real time), targets (how
many steps fit: whole epochs, with progressive resizing making later epochs dearer, then part of
one more) and refits the target every epoch. It returns targets; the training loop decides what to do
with them, and the run's configuration is never rewritten. Its state (time already spent, the step
model) travels in the checkpoint, so a resumed run keeps the budget it was given. Before a run
whose size is left open, `largest_that_fits` picks the largest network the budget still trains for
enough epochs, and `size_for_budget` turns that into the run's width and crop size.
"""

from __future__ import annotations

import math
import time
import functools
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch import nn

from ..constants import BUDGET_RESERVE, GROW_MARGIN, MIN_TAIL, REFIT_WINDOW, VAL_BATCH_COST, VAL_BATCH_FACTOR
from .. import data as D
from ..data import DataSplit
from ..inference.runtime import fastest_seconds, memory_format, tta_views
from ..models import create_model
from . import distributed as ddp
from .config import TrainConfig
from .recipe import Recipe, eval_size_for
from .schedule import crop_size_at
from .step import forward_loss

T = TypeVar("T")


@dataclass
class StepModel:
    """Seconds per training step at a crop size: a part that does not grow with pixels (loading,
    the optimiser step...) plus forward + backward, which grows as size ** p."""

    overhead: float
    compute: float
    size: int
    p: float

    def compute_at(self, size: int) -> float:
        return self.compute * (size / self.size) ** self.p

    def step_at(self, size: int) -> float:
        return self.overhead + self.compute_at(size)


@dataclass
class RunShape:
    """What an epoch of this run is made of."""

    steps_per_epoch: int
    val_images: int          # through the network in one validation pass (each twice with TTA)
    batch_size: int
    eval_size: int
    crop_at: Callable[[int, int], int]  # (epoch, epochs in the run) -> training crop size


def fit(budget_s: float, spent_s: float, epochs_done: int, epoch_s: Callable[[int, int], float]) -> int:
    """How many epochs in total fit `budget_s`, at least one more than `epochs_done`.
    `epoch_s(epoch, epochs)` is the predicted time of an epoch when the run has `epochs` in all:
    with progressive resizing, later epochs cost more, and where they fall depends on the total.
    `BUDGET_RESERVE` of the budget is kept for the final evaluation and report. The time left
    grows with the total, so the largest total that fits is found by doubling, then bisecting: a
    long budget of short epochs (thousands of them) is planned in milliseconds, not minutes."""
    left = budget_s * (1 - BUDGET_RESERVE) - spent_s

    def fits(total: int) -> bool:
        return sum(epoch_s(e, total) for e in range(epochs_done, total)) <= left

    low, high = epochs_done + 1, epochs_done + 2  # `low` is always taken; is `high` within budget?
    while fits(high):
        low, high = high, epochs_done + 2 * (high - epochs_done)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def fit_steps(budget_s: float, spent_s: float, epochs_done: int, steps_per_epoch: int,
              epoch_s: Callable[[int, int], float], val_s: float) -> int:
    """How many steps in total fill `budget_s`: the whole epochs `fit` finds, then as many steps of
    one more as the time left pays for once that epoch's validation pass (`val_s`) is paid; none
    under `MIN_TAIL` of an epoch. The run then has one more epoch, so every epoch is predicted as
    the crop schedule of that many lays it out. Where not even one more whole epoch fits (`fit`
    still gives one), a run under way gets part of one, or ends now; a run's first epoch is whole."""
    budget_left = budget_s * (1 - BUDGET_RESERVE) - spent_s
    whole = fit(budget_s, spent_s, epochs_done, epoch_s)
    if epochs_done and sum(epoch_s(e, whole) for e in range(epochs_done, whole)) > budget_left:
        whole = epochs_done
    left = budget_left - sum(epoch_s(e, whole + 1) for e in range(epochs_done, whole))
    train_s = epoch_s(whole, whole + 1) - val_s
    fraction = (left - val_s) / train_s if train_s > 0 else 0.0
    tail = min(steps_per_epoch - 1, int(fraction * steps_per_epoch)) if fraction >= MIN_TAIL else 0
    return whole * steps_per_epoch + tail


def recent(epochs: Sequence[T], done: int) -> Sequence[T]:
    """The last `REFIT_WINDOW` of the `done` epochs a refit goes by; the first, which pays one-off
    costs (workers, kernel choices), left out once there are two."""
    return epochs[max(min(1, done - 1), done - REFIT_WINDOW):done]


def steady(planned: int, fit_with: Callable[[float], int], grow_s: float, shrink_s: float) -> int:
    """A target refitted with hysteresis, so noise in the timings does not shake the schedule (whose
    decay points are fractions of the target): it grows only to what still fits with `grow_s` more
    seconds spent, and shrinks only to what fits with `shrink_s` fewer. `fit_with(extra_s)` is the
    target were `extra_s` more seconds spent."""
    cautious = fit_with(grow_s)
    if cautious > planned:
        return cautious
    generous = fit_with(-shrink_s)
    return generous if generous < planned else planned


def steady_fit(budget_s: float, spent_s: float, epochs_done: int, planned: int,
               epoch_s: Callable[[int, int], float]) -> int:
    """`fit` again for a run that has a target of `planned` whole epochs: the count moves only when
    it would with half an epoch to spare either way."""
    half = epoch_s(epochs_done, planned) / 2
    return steady(planned, lambda extra_s: fit(budget_s, spent_s + extra_s, epochs_done, epoch_s), half, half)


def largest_that_fits(sizes: Sequence[T], epochs_of: Callable[[T], int], enough: int) -> tuple[int, list[int]]:
    """(index of the last of `sizes`, cheapest first, that still gets `enough` epochs — the first
    when none does; the epochs of each size timed). Sizes are timed cheapest first and the search
    stops at the first that falls short: a dearer one cannot get more epochs."""
    counts = [epochs_of(sizes[0])]
    while len(counts) < len(sizes) and counts[-1] >= enough:
        counts.append(epochs_of(sizes[len(counts)]))
    return max((i for i, n in enumerate(counts) if n >= enough), default=0), counts


def now() -> float:
    """The clock a run's time is read from, its budget's and its epochs' (one, so that tests can
    drive it instead of waiting on it)."""
    return time.monotonic()


class Budget:
    def __init__(self, seconds: float, shape: RunShape, spent_s: float = 0.0,
                 step_time: StepModel | None = None, clock: Callable[[], float] = now,
                 started: float | None = None):
        self.seconds, self.shape, self.step_time, self.clock = seconds, shape, step_time, clock
        self.started = clock() if started is None else started  # this process's share starts here
        self.spent_before = spent_s

    def elapsed(self) -> float:
        """Seconds of the budget used, this process's and those of the runs it resumes."""
        return self.spent_before + self.clock() - self.started

    def state(self) -> dict[str, Any]:
        return {"spent_s": self.elapsed(), "step_time": asdict(self.step_time) if self.step_time else None}

    @classmethod
    def restore(cls, seconds: float, shape: RunShape, state: dict[str, Any] | None,
                clock: Callable[[], float] = now, started: float | None = None) -> "Budget":
        """A budget that goes on from a checkpoint's `state()` (None: a fresh one)."""
        state = state or {}
        step_time = StepModel(**state["step_time"]) if state.get("step_time") else None
        return cls(seconds, shape, state.get("spent_s", 0.0), step_time, clock, started)

    def val_s(self) -> float:
        """Predicted seconds of a validation pass."""
        s = self.shape
        return s.val_images / (VAL_BATCH_FACTOR * s.batch_size) * VAL_BATCH_COST * self.step_time.compute_at(s.eval_size)

    def epoch_at(self, size: int) -> float:
        """Predicted seconds of an epoch whose training crops are `size` px, validation included."""
        return self.shape.steps_per_epoch * self.step_time.step_at(size) + self.val_s()

    def steps_fit(self, epochs_done: int, k: float = 1.0, extra_s: float = 0.0) -> int:
        """`fit_steps` with every prediction scaled by `k`, `extra_s` more seconds spent."""
        return fit_steps(self.seconds, self.elapsed() + extra_s, epochs_done, self.shape.steps_per_epoch,
                         lambda e, n: k * self.epoch_at(self.shape.crop_at(e, n)), k * self.val_s())

    def first_fit(self, epochs_done: int, step_s: float, compute_s: float, size: int, p: float) -> int:
        """The first target, in steps, from the first steps' time (`step_s` each, of which
        `compute_s` is forward + backward at crop `size`, growing as size ** p)."""
        self.step_time = StepModel(overhead=max(0.0, step_s - compute_s), compute=min(compute_s, step_s),
                               size=size, p=p)
        return self.steps_fit(epochs_done)

    def refit(self, history: list[dict], epochs_done: int, planned: int) -> int:
        """The target of `planned` steps again, from whole epochs: predictions are scaled by the
        median ratio of measured to predicted time over the last `REFIT_WINDOW` epochs (the first
        epoch, which starts the workers, left out once there are two). It grows only when it would
        with `GROW_MARGIN` of an epoch to spare, so noise in the timings does not shake the
        schedule; it shrinks as soon as it no longer fits, so the run ends annealed within its
        budget."""
        ratios = sorted(r["seconds"] / self.epoch_at(r["img_size"]) for r in recent(history, epochs_done))
        k = ratios[len(ratios) // 2]
        epochs = math.ceil(planned / self.shape.steps_per_epoch)
        margin = GROW_MARGIN * k * self.epoch_at(self.shape.crop_at(epochs_done, epochs))
        return steady(planned, lambda extra_s: self.steps_fit(epochs_done, k, extra_s), margin, 0.0)

    def cannot_fit(self, next_epoch_s: float) -> bool:
        """The last resort: another epoch like the last one would overrun the budget."""
        return self.elapsed() + next_epoch_s > self.seconds


def step_seconds(model: nn.Module, size: int, device: torch.device, channels_last: bool, batch_size: int,
                 dtype: torch.dtype | None) -> float:
    """Forward + backward of one batch at `size` in `dtype`: what choosing the precision compares."""
    return compute_time_by_size(model, (size, size), device, dtype, channels_last, batch_size)[0]


def compute_time_by_size(model: nn.Module, sizes: tuple[int, int], device: torch.device,
                         dtype: torch.dtype | None, channels_last: bool, batch_size: int
                         ) -> tuple[float, float]:
    """(seconds of a training step's forward and backward for a batch at the smaller size, p) with
    that time growing as size ** p: timed on random images at both sizes through the step's own
    halves (`step.forward_loss`, the backward of `apply_gradients`; the update is in the overhead
    the first real steps measure). Compute grows with pixels (p = 2) only in theory: fixed
    per-layer costs and kernel choices bend it (about 1.65 between 64 and 96 px on the development
    CPU). Eval mode, so BatchNorm statistics are untouched; gradients are dropped. With a single
    size, p is taken as 2."""
    small, large = sorted(sizes)
    was_training = model.training
    model.eval()
    criterion = nn.CrossEntropyLoss()

    def random_batch(size: int) -> D.Batch:
        images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
        return D.Batch(images, torch.zeros(batch_size, dtype=torch.long), torch.arange(batch_size), [])

    def step(batch: D.Batch) -> None:
        forward_loss(model, criterion, batch, device, dtype, channels_last)[0].backward()

    best = fastest_seconds({size: functools.partial(step, random_batch(size)) for size in (small, large)}, device)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if small == large:
        return best[small], 2.0
    p = math.log(max(best[large], 1e-9) / max(best[small], 1e-9)) / math.log(large / small)
    return best[small], max(0.5, min(3.0, p))  # a busy machine can time a size absurdly: bounded


def val_forwards(cfg: TrainConfig, split: DataSplit, world: int) -> int:
    """Images one rank's validation pass puts through the network: what it costs the budget."""
    return math.ceil(len(split.val) / world) * tta_views(cfg.tta, cfg.tta_shift)


def size_for_budget(cfg: TrainConfig, recipe: Recipe, split: DataSplit, device: torch.device, batch: int,
                    world: int, dtype: torch.dtype | None) -> tuple[TrainConfig, str, int]:
    """(the configuration at the largest (width, crop size) of the recipe's ladder that still gets
    its `enough_epochs` in `--max-minutes`, why, the whole epochs it gets). More epochs of a small
    network stop paying once it has enough; a budget that buys more goes to resolution and width
    instead. Each candidate's
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
        return budget.first_fit(0, compute, compute, first, p) // steps  # whole epochs

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
            f"width {width:g}, {size} px, {why} (epochs estimated from timed forward + backward: {estimates})",
            counts[index])
