"""The time budget (`--max-minutes`) on a fake clock: plans, refits, resumes."""

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import killed_before_epoch
from resnet.training.budget import Budget, RunShape, compute_time_by_size, fit, fit_steps, largest_that_fits
from resnet.constants import GROW_MARGIN


def test_fit_counts_the_epochs_that_fit():
    # 12 s an epoch; 97 % of 135 s minus 5 s spent = 126 s -> 10 epochs fit, 11 do not
    assert fit(135, spent_s=5, epochs_done=0, epoch_s=lambda e, n: 12.0) == 10
    assert fit(1, 5, 0, lambda e, n: 12.0) == 1  # at least one epoch
    assert fit(135, 5, 4, lambda e, n: 12.0) == 14  # 4 epochs done: 10 more fit
    # epochs that cost twice as much in the second half of the run: fewer fit
    assert fit(135, 5, 0, lambda e, n: 12.0 if e < n / 2 else 24.0) == 7


def test_the_minutes_left_after_whole_epochs_buy_part_of_one_more():
    # 12 s an epoch of 10 steps, 2 s of it validation: 125.95 s left -> 10 epochs, and the 5.95 s
    # after them pay one more validation pass and 3 steps (3.95 s of training)
    assert fit_steps(135, 5, 0, 10, lambda e, n: 12.0, val_s=2.0) == 103
    assert fit_steps(135, 5, 4, 10, lambda e, n: 12.0, val_s=2.0) == 143  # 4 epochs done
    # under a fifth of an epoch left once the validation pass is paid: whole epochs only
    assert fit_steps(132, 5, 0, 10, lambda e, n: 12.0, val_s=2.0) == 100
    assert fit_steps(1, 5, 0, 10, lambda e, n: 12.0, val_s=2.0) == 10  # at least one epoch
    # 10 epochs done, 5.95 s left: not one more epoch, but 3 steps of it; a sliver: none (it ends)
    assert fit_steps(135, 125, 10, 10, lambda e, n: 12.0, val_s=2.0) == 103
    assert fit_steps(135, 127, 10, 10, lambda e, n: 12.0, val_s=2.0) == 100


def test_the_largest_size_that_still_gets_enough_epochs():
    epochs = {"s": 200, "m": 90, "l": 59, "xl": 30}
    timed = []

    def epochs_of(size: str) -> int:
        timed.append(size)
        return epochs[size]

    assert largest_that_fits(["s", "m", "l", "xl"], epochs_of, 60) == (1, [200, 90, 59])
    assert timed == ["s", "m", "l"]  # a size dearer than one that fell short is not timed
    assert largest_that_fits(["s", "m"], lambda s: 40, 60) == (0, [40])  # none gets enough: the first
    assert largest_that_fits(["s", "m"], lambda s: 100, 60) == (1, [100, 100])


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_refit_shrinks_as_soon_as_the_plan_overruns_and_grows_only_with_a_margin_to_spare():
    clock = Clock()
    budget = Budget(600, RunShape(20, 640, 64, 64, crop_at=lambda e, n: 64), clock=clock)
    budget.first_fit(0, step_s=0.3, compute_s=0.25, size=64, p=2.0)
    epoch_s = budget.epoch_at(64)
    clock.t += 0.97 * 600 - 10.5 * epoch_s  # an epoch as predicted, then time passed: 10.5 epochs left
    history = [{"seconds": epoch_s, "img_size": 64}]
    exact = budget.steps_fit(1)
    assert budget.refit(history, 1, exact) == exact
    assert budget.refit(history, 1, exact + 1) == exact  # one step more than fits: cut at once
    cautious = budget.steps_fit(1, extra_s=GROW_MARGIN * epoch_s)  # what still fits with the margin spent
    assert cautious < exact
    assert budget.refit(history, 1, cautious) == cautious  # less than the margin spare: kept
    assert budget.refit(history, 1, cautious - 5) == cautious  # more: grown, as far as the margin allows


def budget_run(folder: Path, out: Path, **kw) -> dict:
    from resnet.training import config, loop

    return loop.train(config.make_config("default", data=str(folder), arch="resnet20", img_size=32, min_img_size=16,
                                         batch_size=8,
                                         workers=0, out=str(out), seed=3, val_split=0.25, deterministic=True,
                                         max_minutes=5, **kw))


def test_the_training_loop_ends_a_budget_within_3_percent_of_it(tiny_folder, tmp_path, step_clock, monkeypatch):
    """The real loop (`train_epoch`, `should_stop`) on a machine whose steps cost 4 s at 24 px and
    grow with pixels while the crops grow 16 -> 32 px: 5 minutes end within 3 % of the budget,
    the final evaluation's reserve included, and so does a run killed before epoch 5 and resumed
    (its clock a new process's: the time spent comes from the checkpoint)."""
    from resnet.training import config, loop

    step_clock.step_s, step_clock.power = 4.0, 2.0
    start = step_clock.t
    summary = budget_run(tiny_folder, tmp_path / "straight")
    trained = step_clock.t - start
    assert abs(trained + 0.03 * 300 - 300) <= 0.03 * 300, trained
    assert summary["epochs"] > 10  # planned from the budget: the preset's 10 epochs were not it
    sizes = [float(line.split(",")[1]) for line in (tmp_path / "straight" / "metrics.csv").read_text().split()[1:]]
    assert sizes[0] == 16 and sizes[-1] == 32 and sizes == sorted(sizes)

    start = step_clock.t
    killed_before_epoch(monkeypatch, lambda: budget_run(tiny_folder, tmp_path / "resumed"), 5)
    first = step_clock.t - start
    step_clock.t = 5000.0  # another process, another clock
    loop.train(*config.resume_config(tmp_path / "resumed" / "last.pt"))
    total = first + step_clock.t - 5000.0
    assert abs(total + 0.03 * 300 - 300) <= 0.03 * 300, total


class Sleepy(nn.Module):
    """Forward + backward that take 20 ms x (size / 16) ** power on `clock` (it moves when the
    model runs, and only then): the exponent is measured as the code measures it, with nothing of
    the machine's speed or load in it."""

    def __init__(self, power: float, clock: list[float]):
        super().__init__()
        self.power, self.clock = power, clock
        self.w = nn.Parameter(torch.ones(1))
        self.bn = nn.BatchNorm1d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock[0] += 0.02 * (x.shape[-1] / 16) ** self.power
        return self.bn(x.mean((1, 2, 3))[:, None] * self.w)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_compute_time_by_size_measures_how_time_grows(power, monkeypatch):
    from types import SimpleNamespace

    from resnet.inference import runtime

    from resnet.training import budget

    clock, steps = [0.0], []
    monkeypatch.setattr(runtime, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    real = budget.forward_loss
    monkeypatch.setattr(budget, "forward_loss", lambda *a: steps.append(a[2].images.dtype) or real(*a))
    model = Sleepy(power, clock)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seconds, p = compute_time_by_size(model, (16, 32), torch.device("cpu"), None, False, 4)
    assert p == pytest.approx(power) and seconds == pytest.approx(0.02)
    assert steps == [torch.uint8] * 8  # the training step's own forward, on uint8 batches: 2 sizes, 4 rounds
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched
    assert all(q.grad is None for q in model.parameters()) and model.training
