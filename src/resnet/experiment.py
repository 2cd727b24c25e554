"""The ResNet paper's degradation experiment (He et al. 2015, section 4.2, Figure 6), in one command.

Plain networks (no shortcuts) train worse as they get deeper: plain-56 ends with a higher training
error than plain-20. With identity shortcuts the deeper network trains at least as well: ResNet-56
at or below ResNet-20. Every network is trained with one recipe (`--preset cifar-paper`'s optimiser,
augmentation and step decay, with the batch, learning rate and warm-up below) on the same images
for the same epochs, side by side: one epoch of each network in turn, so that a time budget can be
refitted as it goes and every network keeps the same plan. Training and test error are recorded
every epoch.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from . import data as D
from .constants import (BUDGET_RESERVE, EXPERIMENT_EPOCH_OVERHEAD, EXPERIMENT_EPOCHS, EXPERIMENT_MIN_IMAGES,
                        EXPERIMENT_RECIPE, EXPERIMENT_TEST_IMAGES, VAL_BATCH_COST, VAL_BATCH_FACTOR)
from .errors import ConfigError
from .models import CIFAR_DEPTHS
from .outputs import check_output_dir, sole_writer
from .training.budget import fit, now, recent, steady_fit
from .training.config import check_range, make_config
from .training.loop import begin, end_epoch, train_epoch, validate
from .training.records import record_epoch
from .training.run import Run, Progress, set_up


def networks(depths: Sequence[int] | str) -> list[str]:
    """The architecture of each depth, plain then residual: plain20, resnet20, plain56...; `depths`
    as numbers, or as --depths gives them ("20,56")."""
    if isinstance(depths, str):
        try:
            depths = [int(d) for d in depths.split(",") if d.strip()]
        except ValueError:
            raise ConfigError(f"--depths {depths!r}: give whole numbers separated by commas, e.g. 20,56") from None
    unknown = [d for d in depths if d not in CIFAR_DEPTHS]
    if unknown or not depths:
        raise ConfigError(f"--depths {','.join(map(str, depths))}: the paper's CIFAR depths are "
                          f"{', '.join(map(str, CIFAR_DEPTHS))}")
    return [f"{kind}{depth}" for depth in depths for kind in ("plain", "resnet")]


# ---------------------------------------------------------------------------------------------
# The plan: images, epochs and recipe from the budget (pure: no torch, no files)


@dataclass(frozen=True)
class Design:
    train_images: int
    test_images: int
    epochs: int
    batch_size: int
    lr: float                      # for batch 256, scaled linearly to the batch
    warmup_epochs: float
    reasons: tuple[str, ...]       # one line per decision, printed and saved in plan.json


def round_seconds(train_images: int, test_images: int, step_s: Sequence[float], batch_size: int) -> float:
    """Predicted seconds of one epoch of every network: training steps from `step_s` (one per
    network, at `batch_size`), a test image at a third of a training one (forward only)."""
    per_image = EXPERIMENT_EPOCH_OVERHEAD * sum(step_s) / batch_size
    return per_image * (train_images + test_images * VAL_BATCH_COST / VAL_BATCH_FACTOR)


def design_experiment(available_train: int, available_test: int, seconds: float | None, step_s: Sequence[float] | None,
                    batch_size: int | None = None, epochs: int | None = None, train_images: int | None = None,
                    test_images: int | None = None, lr: float | None = None,
                    warmup_epochs: float | None = None) -> Design:
    """The experiment's plan for `seconds` of training (None: `epochs` given), every network's
    training step taking `step_s` at the planned batch. Options given are kept. A budget buys
    `EXPERIMENT_EPOCHS` epochs of as many training images as it can pay for (at least
    `EXPERIMENT_MIN_IMAGES`, at most all), then as many epochs of those as fit."""
    batch = batch_size or EXPERIMENT_RECIPE["batch_size"]
    reasons = []
    n_test = min(available_test, test_images or EXPERIMENT_TEST_IMAGES)
    if test_images is None and n_test < available_test:
        reasons.append(f"test images: {n_test:,} of {available_test:,} (stratified): the error of each "
                       f"network within ~1.6 points, at a fraction of the time (--test-images changes it)")
    if train_images is not None or seconds is None:
        n_train = min(available_train, train_images or available_train)
    else:
        per_round = round_seconds(1, 0, step_s, batch)
        affordable = int(seconds * (1 - BUDGET_RESERVE) / EXPERIMENT_EPOCHS / per_round
                         - n_test * VAL_BATCH_COST / VAL_BATCH_FACTOR)
        n_train = min(available_train, max(EXPERIMENT_MIN_IMAGES, affordable))
        reasons.append(f"training images: {n_train:,} of {available_train:,} (stratified), "
                       + ("all of them fit " if n_train == available_train else "the most that fit ")
                       + f"{EXPERIMENT_EPOCHS} epochs of every network in the budget: the deeper ResNet trains "
                         f"below the shallower only once it fits its images, which takes epochs "
                         f"(--train-images changes it)")
    if epochs is None:
        one = round_seconds(n_train, n_test, step_s, batch)
        epochs = fit(seconds, 0.0, 0, lambda e, n: one)
        reasons.append(f"epochs: {epochs} of {max(1, n_train // batch)} steps "
                       f"for every network (an epoch of all of them predicted at {one:.0f} s from timed steps; "
                       f"refitted after each)")
    rate = EXPERIMENT_RECIPE["lr"] if lr is None else lr
    warmup = EXPERIMENT_RECIPE["warmup_epochs"] if warmup_epochs is None else warmup_epochs
    chosen = [what for what, given in ((f"batch {batch}", batch_size), (f"lr {rate:g} per 256 images", lr),
                                       (f"warm-up {warmup:g} epochs", warmup_epochs)) if given is None]
    if chosen:
        reasons.append(f"{', '.join(chosen)}: a short run's recipe, measured (docs/science.md)")
    return Design(n_train, n_test, epochs, batch, rate, warmup, tuple(reasons))


# ---------------------------------------------------------------------------------------------
# The run


def timed_steps(archs: Sequence[str], batch_size: int, device: str) -> list[float]:
    """Seconds of one training step of each network (forward, backward, SGD, at 32 px, in the
    precision its run will choose: `resnet benchmark train`'s code)."""
    from .throughput import bench_network

    return [batch_size / bench_network("train", arch, 32, batch_size, steps=3, device=device)["images_per_second"]
            for arch in archs]


def subset(split: D.DataSplit, train_images: int, test_images: int, seed: int, out: Path) -> tuple[str, str]:
    """CSV files of the training and test images (a stratified, seeded subset of each where fewer
    are planned), written to `out`: every network trains and is tested on exactly these images."""

    def take(samples: list[D.Sample], n: int) -> list[D.Sample]:
        if n >= len(samples):
            return samples
        keep, _ = D.stratified_split([s.label for s in samples], 1 - n / len(samples), seed)
        return [samples[i] for i in keep]

    out.mkdir(parents=True, exist_ok=True)
    D.write_samples(out / "train.csv", take(split.train, train_images), split.classes)
    D.write_samples(out / "test.csv", take(split.val, test_images), split.classes)
    return str(out / "train.csv"), str(out / "test.csv")


def replan(budget_s: float, spent_s: float, done: int, planned: int, round_s: list[float]) -> int:
    """Epochs in the plan after `done` epochs of every network, from the measured time of the
    recent ones (`budget.recent`, as `train --max-minutes` refits); `done` when
    another would overrun the budget. Once the first step decay has passed, the plan may shrink but
    not grow: growing would move the decay past epochs already trained at the lower rate."""
    one = statistics.median(recent(round_s, done))
    if spent_s + one > budget_s * (1 - BUDGET_RESERVE):
        return done
    planned_now = steady_fit(budget_s, spent_s, done, planned, lambda e, n: one)
    return min(planned_now, planned) if 2 * done >= planned else planned_now


def epoch_of_each(runs: dict[str, tuple[Run, Progress]]) -> None:
    """One epoch of every network in turn, each recorded as `train` records its epochs."""
    for name, (run, progress) in runs.items():
        sums = train_epoch(run, progress, None)
        t_val = now()
        row, improved = end_epoch(run, progress, sums, validate(run, progress), run.cfg.img_size,
                                  sums.seconds + now() - t_val)
        record_epoch(run, progress, None, None, row, improved, name)


def degradation(data: str | Path, out: str | Path, val: str | Path | None = None,
                depths: Sequence[int] | str = (20, 56), epochs: int | None = None, max_minutes: float | None = None,
                train_images: int | None = None, test_images: int | None = None, seed: int = 0, workers: int = 0,
                batch_size: int | None = None, lr: float | None = None, warmup_epochs: float | None = None,
                device: str = "auto") -> dict[str, Any]:
    """Train plain and residual networks of each depth side by side on the same images for the
    same epochs; write plan.json, history.csv, summary.json and figure6.png to `out`. Returns the
    summary. With `max_minutes` the plan fits the whole experiment, set-up included, in it."""
    if (epochs is None) == (max_minutes is None):
        raise ConfigError("give --epochs N or --max-minutes M (one of them)")
    check_range("max_minutes", max_minutes)
    archs = networks(depths)
    check_output_dir("--out", out, [data, *([val] if val else [])])
    with sole_writer(out):  # one experiment writes a folder at a time
        started = now()
        out = Path(out)
        split = D.discover(data, val, 0.1 if val is None else None, seed)
        batch = batch_size or EXPERIMENT_RECIPE["batch_size"]
        step_s = timed_steps(archs, batch, device) if max_minutes else None
        budget_s = max_minutes * 60 if max_minutes else None
        plan = design_experiment(len(split.train), len(split.val),
                                 budget_s - (now() - started) if budget_s else None, step_s,
                                 batch_size, epochs, train_images, test_images, lr, warmup_epochs)
        for line in plan.reasons:
            tqdm.write(f"plan: {line}")
        train_csv, test_csv = subset(split, plan.train_images, plan.test_images, seed, out)
        runs = {}
        for arch in archs:
            cfg = make_config("cifar-paper", data=train_csv, val=test_csv, arch=arch, epochs=plan.epochs,
                              out=str(out / arch), seed=seed, workers=workers, batch_size=plan.batch_size, lr=plan.lr,
                              warmup_epochs=plan.warmup_epochs, in_memory=True, device=device)
            run = set_up(cfg, None)
            runs[arch] = (run, begin(run, None, started)[0])
        round_s = side_by_side(runs, plan.epochs, budget_s, started)
        return report(runs, plan, round_s, step_s, out)


def side_by_side(runs: dict[str, tuple[Run, Progress]], planned: int, budget_s: float | None,
                 started: float) -> list[float]:
    """Train every network one epoch at a time, in turn, for the plan's epochs; with a budget
    (seconds since `started`), the plan is refitted after each epoch of all and given to every
    network. Returns the seconds of each epoch of all."""
    round_s: list[float] = []
    while len(round_s) < planned:
        t = now()
        epoch_of_each(runs)
        round_s.append(now() - t)
        if budget_s is not None and len(round_s) < planned:
            fits = replan(budget_s, now() - started, len(round_s), planned, round_s)
            if fits != planned:
                tqdm.write(f"--max-minutes {budget_s / 60:g}: {fits} epochs of every network fit "
                           f"(measured over epoch {len(round_s)})")
            planned = fits
            for _, progress in runs.values():
                progress.epochs = planned
    return round_s


def report(runs: dict[str, tuple[Run, Progress]], plan: Design, round_s: list[float], step_s: list[float] | None,
           out: Path) -> dict[str, Any]:
    """history.csv, summary.json, plan.json and figure6.png; a line per network. Returns the summary."""
    history, summary = [], {}
    for name, (run, progress) in runs.items():
        rows = [{"network": name, "epoch": r["epoch"], "train_error": 1 - r["train_acc"], "test_error": 1 - r["val_acc"]}
                for r in progress.history]
        history += rows
        seconds = sum(r["seconds"] for r in progress.history)
        summary[name] = {"final_train_error": rows[-1]["train_error"], "final_test_error": rows[-1]["test_error"],
                         "epochs": len(rows), "steps": progress.step, "seconds": round(seconds, 1)}
        tqdm.write(f"{name}: training error {rows[-1]['train_error']:.2%}, test error {rows[-1]['test_error']:.2%} "
                   f"after {len(rows)} epochs, {progress.step} steps ({seconds / 60:.1f} min)")
        if progress.skipped:
            D.write_skipped(run.out / "skipped.txt", sorted(progress.skipped.items()))
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["network", "epoch", "train_error", "test_error"], lineterminator="\n")
        w.writeheader()
        w.writerows(history)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    predicted = (round_seconds(plan.train_images, plan.test_images, step_s, plan.batch_size) if step_s else None)
    (out / "plan.json").write_text(json.dumps({**asdict(plan), "epochs_trained": len(round_s),
                                               "epoch_seconds_predicted": predicted,
                                               "epoch_seconds_measured": [round(s, 1) for s in round_s]},
                                              indent=2) + "\n")
    steps = max(p.step for _, p in runs.values())
    plot_figure6(history, list(runs), out / "figure6.png",
                 f"{plan.train_images:,} training images, {len(round_s)} epochs ({steps:,} steps of {plan.batch_size})")
    return summary


def plot_figure6(history: list[dict], names: Sequence[str], path: Path, what: str) -> None:
    """The paper's Figure 6: plain networks left, ResNets right; training error dashed, test error
    bold, one colour per depth; error in % against epochs; `what` was trained, in the title."""
    from .inference.evaluate import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    depths = sorted({int("".join(c for c in n if c.isdigit())) for n in names})
    for ax, kind, title in ((axes[0], "plain", "plain networks"), (axes[1], "resnet", "ResNets")):
        for i, depth in enumerate(depths):
            name = f"{kind}{depth}"
            rows = [h for h in history if h["network"] == name]
            if not rows:
                continue
            ep = [r["epoch"] for r in rows]
            label = f"{'plain' if kind == 'plain' else 'ResNet'}-{depth}"
            ax.plot(ep, [100 * r["train_error"] for r in rows], "--", color=colours[i], linewidth=1.2,
                    label=f"{label} train")
            ax.plot(ep, [100 * r["test_error"] for r in rows], "-", color=colours[i], linewidth=2.4,
                    label=f"{label} test")
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    fig.suptitle(f"Training (dashed) and test (bold) error: {what}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
