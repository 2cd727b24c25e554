"""The training loop, read top to bottom: one epoch's steps (`train_epoch`), validation through
the one inference path (`validate`), the epoch's record, whether to go on (`should_stop`), and last
`train`, the loop itself. What it stands on has its own room: the configuration (`config`), the
schedule (`schedule`), the set-up (`run`), the time budget (`budget`), the records (`records`)."""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import threading
from dataclasses import asdict, dataclass
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import data as D
from ..checkpoint import restore_run
from ..constants import FIRST_FIT_STEPS, SELECTION_STANDARD_ERRORS, UNTIMED_STEPS
from ..device import is_out_of_memory, out_of_memory, pick_device
from ..errors import Interrupted, TrainingError
from ..inference.runtime import TorchNet, run_eval
from ..metrics import balanced_accuracy_error, class_scores
from ..outputs import write_text_atomically
from . import distributed as ddp
from .budget import Budget, RunShape, compute_time_by_size, now, val_forwards
from .config import TrainConfig
from .optim import lr_scale
from .records import announce, epoch_bar, epochs_fit, record_epoch, save, summary, tensorboard_writer
from .run import Run, Progress, set_up
from .step import apply_gradients, forward_loss


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


def first_budget_steps(run: Run, progress: Progress, budget: Budget, step_s: float, crop: int) -> int:
    """The first target of a time budget, in steps, from the first steps' time and the compute
    measured at the sizes training will see."""
    largest = run.cfg.img_size if run.cfg.img_size != crop else run.eval_size
    compute, p = compute_time_by_size(run.model, (crop, largest), run.device, run.dtype, run.cfg.channels_last,
                                      run.batch)
    steps = ddp.from_rank0([budget.first_fit(progress.epoch, step_s, compute, crop, p)], run.device)[0]
    tqdm.write(f"--max-minutes {run.cfg.max_minutes}: {epochs_fit(steps, run.steps_per_epoch)} fit"
               f" (forward + backward measured to grow as crop size ** {budget.step_time.p:.2f})")
    return steps


def take_step(run: Run, progress: Progress, batch: D.Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step on `batch` at the schedule's learning rate: (loss, logits, labels)."""
    for g in run.optimizer.param_groups:  # fine-tuning's stages at their own share of the rate (`lr_scale`)
        g["lr"] = run.lr(progress) * lr_scale(g, progress.epoch, run.cfg.freeze_epochs)
    loss, logits, y = forward_loss(run.wrapped, run.criterion, batch, run.device, run.dtype, run.cfg.channels_last)
    if not torch.isfinite(loss):
        raise TrainingError(f"loss is {loss.item()} at epoch {progress.epoch + 1}, step {progress.step + 1}: "
                            f"stopped; the last good checkpoint is {run.out / 'last.pt'}")
    apply_gradients(run.optimizer, run.scaler, loss)
    progress.step += 1
    return loss, logits, y


def save_mid_epoch(run: Run, progress: Progress, budget: Budget | None, sums: EpochSums) -> None:
    """last.pt in the middle of an epoch, with the sums of every rank so far (a resumed run goes on
    counting the epoch from them)."""
    progress.partial = asdict(sums.over_ranks())
    save(run, run.out / "last.pt", progress, budget, {})


def train_epoch(run: Run, progress: Progress, budget: Budget | None, signals: list[int] | None = None) -> EpochSums:
    """One epoch (or the rest of one, when resumed mid-epoch), updating `progress` step by step.
    With a budget not yet fitted, the target is set after the first `FIRST_FIT_STEPS` steps.
    `signals`: those `stop_at_a_step` received; one (on any rank) ends the run after this step."""
    cfg, steps = run.cfg, run.steps_per_epoch
    start_in_epoch = progress.step - progress.epoch * steps
    crop = run.crop_at(progress.epoch, progress.epochs)
    run.train_loader.sampler.set_epoch(progress.epoch, start_in_epoch * run.batch, crop)
    # A mid-epoch checkpoint holds the sums of all ranks: rank 0 carries them on, the others add theirs.
    sums = EpochSums(**progress.partial) if start_in_epoch else EpochSums()
    if not run.main:
        sums = EpochSums(seconds=sums.seconds)
    run.wrapped.train()
    if run.cfg.freeze:  # a linear probe: the pretrained body's BatchNorm statistics kept, not re-estimated
        for m in run.model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    t0 = now() - sums.seconds
    t_timed, done_here = t0, 0
    bar = epoch_bar(run.train_loader, f"epoch {progress.epoch + 1}/{progress.epochs}", run.main)
    for batch in bar:
        for i, reason in batch.failures:
            progress.skipped.setdefault(run.split.train[i].path, reason)
        if len(batch.labels) == 0:
            continue
        loss, logits, y = take_step(run, progress, batch)
        done_here += 1
        sums.seen += len(y)
        sums.loss += loss.item() * len(y)
        sums.correct += (logits.argmax(1) == y).sum().item()
        sums.seconds = now() - t0
        bar.set_postfix(loss=f"{sums.loss / sums.seen:.3f}", acc=f"{sums.correct / sums.seen:.3f}",
                        img_s=f"{sums.seen * run.world / max(sums.seconds, 1e-9):.0f}")
        if done_here == UNTIMED_STEPS:
            t_timed = now()
        if budget and budget.step_time is None and done_here == min(FIRST_FIT_STEPS, steps):
            step_s = (now() - t_timed) / max(1, done_here - UNTIMED_STEPS)
            progress.replan(first_budget_steps(run, progress, budget, step_s, crop), steps)
            bar.set_description(f"epoch {progress.epoch + 1}/{progress.epochs}")
        if progress.step >= progress.total_steps(steps):  # a budget's last epoch, cut short
            break
        if cfg.save_every and progress.step % cfg.save_every == 0 and progress.step % steps:
            save_mid_epoch(run, progress, budget, sums)
        # A signal stops the run here, between two steps (at the epoch's last, after its record).
        signum = signal_received(signals, run.device) if signals is not None else 0
        if signum and progress.step % steps:
            save_mid_epoch(run, progress, budget, sums)
            raise interrupted(run, progress, signum)
    bar.close()
    # The last step's gradients are not needed (the next step sets them anew): freed here, they take
    # no memory through validation, nor are they copied with the model it scores.
    run.optimizer.zero_grad(set_to_none=True)
    progress.partial = {}
    return sums.over_ranks()


class ValSums(NamedTuple):
    """One rank's validation: summed loss, its confusion matrix (rows: true class), unreadable files."""

    loss: float
    confusion: list[list[int]]
    failures: list[tuple[int, str]]


class ValScores(NamedTuple):
    """Validation's figures (NaN without a validation set): the loss, accuracy, balanced accuracy
    (the mean per-class recall), macro-F1 and the balanced accuracy's standard error, over every
    rank's images."""

    loss: float
    acc: float
    balanced_acc: float
    macro_f1: float
    balanced_error: float = float("nan")


NO_SCORES = ValScores(float("nan"), float("nan"), float("nan"), float("nan"))


def validate(run: Run, progress: Progress) -> ValScores:
    """`ValScores` on the validation set, through the one inference path. Each rank scores its
    own slice with rank 0's weights, and the confusion matrices are summed."""
    if run.val_loader is None:
        return NO_SCORES
    # The saved model as `evaluate` runs it: a copy with its BatchNorms folded, in the run's
    # precision (in bf16 the folded weights round otherwise than the unfolded ones).
    net = TorchNet.prepare(copy.deepcopy(run.model), run.device, run.dtype, run.cfg.channels_last)
    logits, labels, _, failures = run_eval(net, run.val_loader, run.card["mean"], run.card["std"], run.cfg.tta,
                                           run.cfg.tta_shift)
    k = len(run.split.classes)
    confusion = torch.bincount(labels * k + logits.argmax(1), minlength=k * k).reshape(k, k)
    mine = ValSums(F.cross_entropy(logits, labels, reduction="sum").item() if len(labels) else 0.0,
                   confusion.tolist(), failures)
    parts: list[ValSums] = ddp.gather(mine)
    for i, reason in (f for part in parts for f in part.failures):
        progress.skipped.setdefault(run.split.val[i].path, reason)
    confusion = np.sum([part.confusion for part in parts], axis=0)
    n = int(confusion.sum())
    if not n:
        return NO_SCORES
    return ValScores(sum(part.loss for part in parts) / n, float(np.trace(confusion)) / n, *class_scores(confusion),
                     balanced_accuracy_error(confusion))


def end_epoch(run: Run, progress: Progress, sums: EpochSums, val: ValScores, crop: int,
              seconds: float) -> tuple[dict, bool]:
    """Record the finished epoch in `progress`: (its metrics row, whether it becomes best.pt). By
    accuracy, the best so far; by balanced accuracy (imbalanced classes), the latest epoch within
    `SELECTION_STANDARD_ERRORS` of the best so far, its rarest classes' recall being measured on
    few images (the one-standard-error rule)."""
    progress.epoch += 1
    row = {"epoch": progress.epoch, "img_size": crop, "lr": run.optimizer.param_groups[0]["lr"],
           "train_loss": sums.loss / max(sums.seen, 1), "train_acc": sums.correct / max(sums.seen, 1),
           "val_loss": val.loss, "val_acc": val.acc, "val_balanced_acc": val.balanced_acc, "val_macro_f1": val.macro_f1,
           "images_per_second": sums.seen / max(sums.seconds, 1e-9), "seconds": seconds}
    progress.history.append(row)
    score = row[run.select]
    improved = score > progress.best_acc
    progress.best_acc = max(progress.best_acc, score)
    progress.bad_epochs = 0 if improved else progress.bad_epochs + 1
    margin = SELECTION_STANDARD_ERRORS * val.balanced_error
    within = run.select == "val_balanced_acc" and score >= progress.best_acc - margin
    if improved or within:
        progress.best_epoch = progress.epoch
    return row, improved or within


def should_stop(run: Run, progress: Progress, budget: Budget | None, last_epoch_s: float) -> bool:
    """Whether to stop now, decided on rank 0 and shared (ranks that disagreed would wait on each
    other forever), with a budget's target refitted into `progress`. Stops on --patience, or when the
    budget cannot take another epoch; a budget refits the target every epoch (larger crops are only
    measured once the ramp reaches them, and a shorter target still ends with the schedule annealed,
    where stopping early would not)."""
    spe = run.steps_per_epoch
    stop, planned = False, progress.steps
    if run.cfg.patience and progress.bad_epochs >= run.cfg.patience:
        tqdm.write(f"no improvement for {run.cfg.patience} epochs: stopping early")
        stop = True
    if budget and budget.step_time is not None and progress.epoch < progress.epochs:
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


def begin(run: Run, state: dict[str, Any] | None, started: float) -> tuple[Progress, Budget | None]:
    """Where the run starts (from `state` when resumed), its time budget, and the files that
    describe it (train.csv, val.csv, config.json, the first lines)."""
    progress = Progress(epochs=run.cfg.epochs, skipped=dict(run.split.skipped))
    if state is not None:
        restore_run(state, run.model, run.optimizer, run.scaler)
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
        write_text_atomically(run.out / "config.json", json.dumps(
            {**asdict(run.cfg), "precision": run.precision.record(), "plan": run.plan_lines, "size_reason": run.size_reason},
            indent=2))
        announce(run, progress)
    return progress, budget


@contextlib.contextmanager
def stop_at_a_step() -> Iterator[list[int]]:
    """SIGINT (Ctrl-C) and SIGTERM (`kill`, `docker stop`, SLURM before a preemption, torchrun
    passing its own on) while the epochs run: the step under way finishes, last.pt is written at
    it and `Interrupted` ends the run (exit 130 / 143), on every rank at the same step; a resumed
    run then takes the steps the uninterrupted one would have. A second Ctrl-C stops at once; a
    second SIGTERM (torchrun's, to a rank already stopping) changes nothing. Yields the signals
    received. Off the main thread, where Python takes no handler, none are."""
    received: list[int] = []

    def note(signum: int, frame: Any) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    before = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def signal_received(signals: list[int], device: torch.device) -> int:
    """The signal any rank has received (0: none), the same on every rank: one all-reduce, so that
    all stop after the same step."""
    return ddp.largest(signals[0] if signals else 0, device)


def interrupted(run: Run, progress: Progress, signum: int) -> Interrupted:
    """What a signal ended: said once every rank stands at the same step and last.pt holds it."""
    ddp.barrier()  # no rank leaves (and has torchrun stop the others) before rank 0 has saved
    last = run.out / "last.pt"
    return Interrupted(f"stopped by {signal.Signals(signum).name} after step {progress.step} (epoch "
                       f"{progress.epoch + (progress.step % run.steps_per_epoch > 0)}): {last} holds it; "
                       f"continue with --resume {last}", signum)


def train(cfg: TrainConfig, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train per `cfg`, or continue the run whose saved `state` `resume_config` returned with its
    configuration. Returns the final summary, with the trained `model` (this rank's copy). Under
    torchrun the process group is torn down in order on every way out, errors included
    (`distributed.stop`), and the TensorBoard writer is closed."""
    started = now()  # a time budget counts the data scan and the decoded cache too
    try:
        run = set_up(cfg, state)  # its cfg has the width and crop size the budget chose, where it chose them
        progress, budget = begin(run, state, started)
    except BaseException as e:
        ddp.stop()
        if isinstance(e, RuntimeError) and is_out_of_memory(e):  # the whitened stem's statistics, say
            raise out_of_memory(e, cfg, pick_device(cfg.device), 1) from None
        raise
    board = tensorboard_writer(run.out) if run.main else None
    with stop_at_a_step() as signals:  # to the end of the teardown: a signal then is noted, not fatal
        together = False  # whether every rank is leaving at the same point (then they wait for each other)
        try:
            run_epochs(run, progress, budget, board, signals)
            if run.main and progress.skipped:
                D.write_skipped(run.out / "skipped.txt", sorted(progress.skipped.items()))
            together = True
        except Interrupted:
            together = True
            raise
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            raise out_of_memory(e, run.cfg, run.device, run.world) from None
        finally:
            if board is not None:
                board.close()
            run.wrapped = run.model  # the DDP wrapper (its reducer holds the group) goes before the group
            ddp.stop(together)
    return summary(run, progress, started)


def run_epochs(run: Run, progress: Progress, budget: Budget | None, board, signals: list[int]) -> None:
    """The epochs, until the last one the run targets, an early stop, or a signal."""
    while progress.epoch < progress.epochs:
        crop = run.crop_at(progress.epoch, progress.epochs)
        sums = train_epoch(run, progress, budget, signals)
        ddp.sync_buffers(run.model)
        t_val = now()
        row, improved = end_epoch(run, progress, sums, validate(run, progress), crop, sums.seconds + now() - t_val)
        if run.main:
            record_epoch(run, progress, budget, board, row, improved)
        stop = should_stop(run, progress, budget, row["seconds"])
        signum = signal_received(signals, run.device)
        if signum and not stop and progress.epoch < progress.epochs:  # last.pt was written with the epoch
            raise interrupted(run, progress, signum)
        if stop:
            break
