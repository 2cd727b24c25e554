"""The time budget (`--max-minutes`) on a fake clock: plans, refits, resumes."""

import math

import pytest
import torch
from torch import nn

from resnet.budget import Budget, RunShape, compute_time_by_size, fit, fit_steps, largest_that_fits
from resnet.schedule import crop_size_at
from resnet.tuning import GROW_MARGIN


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


def true_step_s(size: int) -> float:
    """The simulated machine: 40 ms of fixed cost a step, compute growing as size ** 1.9."""
    return 0.04 + 0.2 * (size / 64) ** 1.9


def simulate(budget_s: float, clock: Clock, budget: Budget, steps: int = 200, first_steps: int = 12,
             stop_after: int | None = None) -> tuple[int, list[dict]]:
    """The training loop's use of the budget, with known step times: plan after the first steps (whose
    timing is off, as real first steps are), refit every epoch, stop when another epoch cannot fit.
    Returns (the planned steps, a row per epoch); the last epoch ends where the steps do."""
    shape, history, epoch = budget.shape, [], 0
    per_epoch = shape.steps_per_epoch
    while epoch < math.ceil(steps / per_epoch):
        crop = shape.crop_at(epoch, math.ceil(steps / per_epoch))
        t0 = clock.t
        if budget.model is None:
            clock.t += first_steps * true_step_s(crop)
            # measured: a noisy step time, compute at two sizes with a p that is off
            steps = budget.plan(epoch, 1.1 * true_step_s(crop), 0.85 * (true_step_s(crop) - 0.04), crop, 1.6)
            clock.t += (min(per_epoch, steps - epoch * per_epoch) - first_steps) * true_step_s(crop)
        else:
            clock.t += min(per_epoch, steps - epoch * per_epoch) * true_step_s(crop)
        clock.t += 3.0  # validation
        history.append({"seconds": clock.t - t0, "img_size": crop})
        epoch += 1
        if stop_after is not None and epoch == stop_after:
            return steps, history
        if epoch < math.ceil(steps / per_epoch):
            steps = budget.refit(history, epoch, steps)
            if budget.cannot_fit(history[-1]["seconds"]):
                break
    return steps, history


def shape() -> RunShape:
    return RunShape(steps_per_epoch=20, val_images=640, batch_size=64, eval_size=112,
                    crop_at=lambda e, n: crop_size_at(e, n, 96, None))


def test_a_ten_minute_budget_ends_within_3_percent_of_it():
    clock = Clock()
    start = clock.t
    budget = Budget(600, shape(), clock=clock)
    clock.t += 15  # scanning the data and building the decoded cache count too
    steps, history = simulate(600, clock, budget)
    assert len(history) == math.ceil(steps / 20) > 10  # the plan was refitted to what the budget buys
    trained = clock.t - start
    final_evaluation = 0.03 * 600  # what the reserve is kept for
    assert abs(trained + final_evaluation - 600) <= 0.03 * 600, trained  # the whole run within 3 %
    assert trained < 600
    sizes = [h["img_size"] for h in history]
    assert sizes[0] == 64 and sizes[-1] == 96 and sizes == sorted(sizes)


def test_a_refit_shrinks_as_soon_as_the_plan_overruns_and_grows_only_with_a_margin_to_spare():
    clock = Clock()
    budget = Budget(600, RunShape(20, 640, 64, 64, crop_at=lambda e, n: 64), clock=clock)
    budget.plan(0, step_s=0.3, compute_s=0.25, size=64, p=2.0)
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


def test_a_resumed_budget_keeps_the_time_already_spent():
    clock = Clock()
    budget = Budget(600, shape(), clock=clock)
    steps, history = simulate(600, clock, budget, stop_after=5)
    state = budget.state()
    assert state["spent_s"] == pytest.approx(sum(h["seconds"] for h in history))
    later = Clock()
    later.t = 5000.0  # another process, another clock
    resumed = Budget.restore(600, shape(), state, clock=later)
    assert resumed.elapsed() == pytest.approx(state["spent_s"]) and resumed.model == budget.model
    _, rest = simulate(600, later, resumed, steps=steps)
    # no second first-plan: the step model came with the checkpoint
    total = state["spent_s"] + sum(h["seconds"] for h in rest)
    assert abs(total + 0.03 * 600 - 600) <= 0.03 * 600, total


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

    from resnet import budget

    clock = [0.0]
    monkeypatch.setattr(budget, "time", SimpleNamespace(perf_counter=lambda: clock[0], monotonic=lambda: clock[0]))
    model = Sleepy(power, clock)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seconds, p = compute_time_by_size(model, (16, 32), torch.device("cpu"), None, False, 4)
    assert p == pytest.approx(power) and seconds == pytest.approx(0.02)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched
    assert all(q.grad is None for q in model.parameters()) and model.training
