"""`resnet experiment degradation`: the plan from the budget (pure), its refit, and the command on
a tiny synthetic folder: the files and their schema (the science is in docs/science.md, measured on
CIFAR-10)."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import resnet.experiment as E
from conftest import photo
from resnet.cli import main
from resnet.data.transforms import EvalTransform, PadCropTransform
from resnet.constants import EXPERIMENT_EPOCHS, EXPERIMENT_MIN_IMAGES, EXPERIMENT_RECIPE

# Training steps at batch 64 of plain-20, ResNet-20, plain-56, ResNet-56 on a 2-core Xeon (fp32).
XEON = (0.095, 0.132, 0.266, 0.306)


def test_a_faster_cpu_buys_more_images_for_the_same_epochs():
    """The experiment's budget goes to training images, not to epochs (the paper's result needs
    its ~100 epochs): a CPU three times faster trains three times the images for the same epochs;
    a budget that buys more than the folder holds takes it all, for more epochs; too little for
    any takes the smallest set that shows the result."""
    budget = 30 * 60
    plan = E.design_experiment(45000, 5000, budget, XEON)
    assert 800 <= plan.train_images <= 1000 and plan.test_images == 1000 and plan.epochs == EXPERIMENT_EPOCHS
    fast = E.design_experiment(45000, 5000, budget, [s / 3 for s in XEON])
    assert fast.epochs == EXPERIMENT_EPOCHS and 2.9 < (fast.train_images + 333) / (plan.train_images + 333) < 3.1
    long = E.design_experiment(45000, 5000, 20 * 3600, XEON)
    assert long.train_images == 45000 and long.epochs > EXPERIMENT_EPOCHS
    short = E.design_experiment(45000, 5000, 60, XEON)
    assert short.train_images == EXPERIMENT_MIN_IMAGES and 1 <= short.epochs < EXPERIMENT_EPOCHS
    assert plan.batch_size == EXPERIMENT_RECIPE["batch_size"] and plan.lr == EXPERIMENT_RECIPE["lr"]
    assert len(plan.reasons) == 4  # test images, training images, epochs, the recipe: each said


def test_options_given_are_kept():
    plan = E.design_experiment(45000, 5000, 30 * 60, XEON, train_images=500)
    assert plan.train_images == 500 and plan.epochs > EXPERIMENT_EPOCHS  # the budget goes to epochs
    assert not any(r.startswith("training images") for r in plan.reasons)
    given = E.design_experiment(45000, 5000, None, None, batch_size=32, epochs=7, test_images=300, lr=0.5,
                              warmup_epochs=1.5)
    assert (given.train_images, given.test_images, given.epochs) == (45000, 300, 7)  # no budget: all images
    assert (given.batch_size, given.lr, given.warmup_epochs, given.reasons) == (32, 0.5, 1.5, ())
    few = E.design_experiment(800, 90, None, None, epochs=3)
    assert (few.train_images, few.test_images) == (800, 90)  # fewer than the default test set: all


def test_replan_keeps_one_plan_steady_and_never_grows_past_the_first_decay():
    # 10 s an epoch of every network in 1,000 s, of which 970 usable
    assert E.replan(1000, 50, 2, 20, [12.0, 10.0]) == 93  # room for 91 more, with half an epoch to spare
    assert E.replan(1000, 60, 3, 93, [12.0, 10.0, 10.1]) == 93  # noise does not move it
    assert E.replan(1000, 500, 10, 20, [10.0] * 10) == 20  # past the first decay: no growing
    assert E.replan(1000, 900, 10, 20, [10.0] * 10) == 17  # ...but shrinking, yes
    assert E.replan(1000, 965, 10, 20, [10.0] * 10) == 10  # another epoch would overrun: stop here
    assert E.replan(1000, 50, 2, 20, [300.0, 10.0]) == 93  # a slow first epoch is left out


def test_every_network_follows_the_one_plan(tmp_path, monkeypatch):
    """The epochs refitted after each epoch reach every network, and each one's schedule follows
    the new plan: all train the same epochs, and all end at the decayed rate."""
    root = tiny_cifar(tmp_path)
    monkeypatch.setattr(E, "timed_steps", lambda archs, batch, device: [0.01] * len(archs))
    plans = iter([4, 4, 4])
    monkeypatch.setattr(E, "replan", lambda *a: next(plans))
    summary = E.degradation(root, tmp_path / "exp", depths=[20], max_minutes=10, train_images=20, batch_size=10,
                            lr=0.4)
    assert [s["epochs"] for s in summary.values()] == [4, 4] and [s["steps"] for s in summary.values()] == [8, 8]
    for name in summary:
        with open(tmp_path / "exp" / name / "metrics.csv") as f:
            lrs = [float(r["lr"]) for r in csv.DictReader(f)]
        peak = 0.4 * 10 / 256
        assert lrs[-1] == pytest.approx(peak / 100)  # the last quarter of 4 epochs, not of the first plan
    plan = json.loads((tmp_path / "exp" / "plan.json").read_text())
    assert plan["epochs_trained"] == 4 and len(plan["epoch_seconds_measured"]) == 4


def tiny_cifar(tmp_path):
    root = tmp_path / "cifar"
    for c, bright in (("cat", False), ("dog", True)):
        (root / c).mkdir(parents=True)
        for i in range(20):
            photo(32, 32, seed=i + (40 if bright else 0), bright=bright).save(root / c / f"{i}.png")
    return root


def test_degradation_writes_history_summary_and_figure(tmp_path):
    root = tiny_cifar(tmp_path)
    out = tmp_path / "exp"
    assert main(["experiment", "degradation", str(root), "--depths", "20", "--epochs", "2", "--out", str(out),
                 "--train-images", "20", "--lr", "0.05"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["plain20", "resnet20"]
    for name, s in summary.items():  # each network's errors are its own run's last epoch, not another's
        assert set(s) == {"final_train_error", "final_test_error", "epochs", "steps", "seconds"}
        with open(out / name / "metrics.csv") as f:
            last = list(csv.DictReader(f))[-1]
        assert s["epochs"] == 2 and s["final_train_error"] == pytest.approx(1 - float(last["train_acc"]))
        assert s["final_test_error"] == pytest.approx(1 - float(last["val_acc"]))
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["network"], r["epoch"]) for r in rows] == [("plain20", "1"), ("plain20", "2"),
                                                          ("resnet20", "1"), ("resnet20", "2")]
    assert float(rows[-1]["train_error"]) == summary["resnet20"]["final_train_error"]
    with Image.open(out / "figure6.png") as im:
        assert im.size[0] > 800 and im.size[1] > 300
    # every network saw the same images: one training list (the subset asked for), one test list
    assert len((out / "train.csv").read_text().splitlines()) == 1 + 20
    assert len((out / "test.csv").read_text().splitlines()) == 1 + 4  # the paper's 10 % held out
    for name in summary:  # one recipe for all: --lr reached every network's run (its batch of 64 capped at the
        cfg = json.loads((out / name / "config.json").read_text())  # 20 images, at the same peak rate)
        assert cfg["batch_size"] == 20 and cfg["lr"] * cfg["batch_size"] == pytest.approx(0.05 * 64)


def test_pad_crop_moves_the_image_without_resampling():
    a = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    g = torch.Generator().manual_seed(1)
    t = PadCropTransform(32, pad=4, hflip=False)
    seen = set()
    for _ in range(40):
        out = t(a, g).permute(1, 2, 0).numpy()
        # some shift (dy, dx) in -4..4 maps the crop onto the image, the rest is zero padding
        found = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                 if np.array_equal(out[max(0, -dy):32 - max(0, dy), max(0, -dx):32 - max(0, dx)],
                                   a[max(0, dy):32 + min(0, dy), max(0, dx):32 + min(0, dx)])]
        assert found
        seen.add(found[0])
    assert len(seen) > 10  # the crops really move
    assert torch.equal(EvalTransform.for_size(32, 1.0)(a), torch.from_numpy(a).permute(2, 0, 1))  # no resize
