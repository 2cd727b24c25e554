import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from resnet.training import (budget as TB, config as TC, loop as TL, optim as TO, recipe as TP, records as TRec,
                             run as TR)
from resnet.training import schedule as TS
from resnet.checkpoint import CHECKPOINT_SCHEMA, migrate, read_checkpoint, save_checkpoint
from resnet.errors import CheckpointError
from resnet.training.recipe import Recipe, eval_size_for

from conftest import killed_before_epoch
from resnet.cli import main


def quick(tiny_folder: Path, out: Path, **kw) -> TC.TrainConfig:
    opts = dict(data=str(tiny_folder), arch="resnet20", img_size=24, epochs=2, batch_size=8,
                workers=0, out=str(out), deterministic=True, seed=3, val_split=0.25)
    return TC.make_config("default", **{**opts, **kw})


def weights(path: Path) -> dict:
    return read_checkpoint(path)["model"]


def test_resume_after_a_kill_ends_with_the_same_weights(tiny_folder, tmp_path, monkeypatch):
    TL.train(quick(tiny_folder, tmp_path / "straight"))

    killed_before_epoch(monkeypatch, lambda: TL.train(quick(tiny_folder, tmp_path / "resumed")))
    assert read_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    TL.train(*TC.resume_config(tmp_path / "resumed" / "last.pt"))

    a, b = weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "resumed" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + both epochs, none lost or repeated


def older_layout(state: dict, version: int) -> dict:
    """A checkpoint's `state` as a run of `checkpoint.CHECKPOINT_SCHEMA` version 0 or 1 wrote it."""
    state = {k: v for k, v in state.items() if k not in ("schema", "plan", "size_reason", "budget", "precision")}
    state["config"] = {k: v for k, v in state["config"].items() if k != "class_balance"}
    if version == 0:  # the run's place at the top level; the epoch and the scheduler's step are there already
        progress = state.pop("progress")
        state.update(best_acc=progress["best_acc"], history=progress["history"],
                     skipped=list(progress["skipped"].items()))
    return state


@pytest.mark.parametrize("version", [0, 1])
def test_a_checkpoint_of_an_older_layout_resumes_as_the_run_would_have_gone_on(tiny_folder, tmp_path, monkeypatch,
                                                                               version):
    """Killed after its first epoch, its last.pt rewritten in an older layout, the run resumes
    through `migrate` to the weights of the run never stopped, and goes on in the current layout;
    a layout newer than this version's is refused in one line."""
    TL.train(quick(tiny_folder, tmp_path / "straight"))
    killed_before_epoch(monkeypatch, lambda: TL.train(quick(tiny_folder, tmp_path / "resumed")))
    last = tmp_path / "resumed" / "last.pt"
    current = read_checkpoint(last)
    assert current["schema"] == CHECKPOINT_SCHEMA and current["config"]["class_balance"] == "none"
    save_checkpoint(last, older_layout(current, version))
    assert "schema" not in read_checkpoint(last)
    TL.train(*TC.resume_config(last))

    a, b = weights(tmp_path / "straight" / "last.pt"), weights(last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "resumed" / "metrics.csv").read_text().splitlines()) == 3
    assert read_checkpoint(last)["schema"] == CHECKPOINT_SCHEMA
    with pytest.raises(CheckpointError, match=f"layout 99 is not one .* reads \\(0 to {CHECKPOINT_SCHEMA}\\)"):
        migrate({**current, "schema": 99}, last)


def test_two_runs_of_one_deterministic_command_are_bit_identical(tiny_folder, tmp_path):
    """Whatever the CPU and precision: --deterministic chooses the precision without timing, so a
    close timing cannot make two runs differ."""
    for name in ("a", "b"):
        TL.train(quick(tiny_folder, tmp_path / name))
    a, b = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "metrics.csv").read_text().split("\n")[1].split(",")[:7] == \
        (tmp_path / "b" / "metrics.csv").read_text().split("\n")[1].split(",")[:7]


def test_resume_mid_epoch_from_a_step_checkpoint(tiny_folder, tmp_path, monkeypatch):
    TL.train(quick(tiny_folder, tmp_path / "straight", epochs=1))
    calls = {"n": 0}
    real = TL.forward_loss

    def dies_at_step_3(*a):
        calls["n"] += 1  # a training step
        if calls["n"] == 3:  # the third of the epoch's 3 steps, after the step-2 checkpoint
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(TL, "forward_loss", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        TL.train(quick(tiny_folder, tmp_path / "resumed", epochs=1, save_every=2))
    monkeypatch.setattr(TL, "forward_loss", real)
    assert read_checkpoint(tmp_path / "resumed" / "last.pt")["scheduler"]["step"] == 2
    TL.train(*TC.resume_config(tmp_path / "resumed" / "last.pt"))
    a, b = weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "resumed" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the resumed epoch's row counts the whole epoch, not only the step after the resume
    straight, resumed = (read_checkpoint(tmp_path / d / "last.pt")["metrics"] for d in ("straight", "resumed"))
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-6)
    assert resumed["train_acc"] == straight["train_acc"]


def test_sigterm_mid_epoch_2_saves_that_step_exits_143_and_resumes_bit_identical(tiny_folder, tmp_path, monkeypatch):
    """`kill`, `docker stop`, SLURM before a preemption: SIGTERM arrives during step 5 (epoch 2 of 3,
    3 steps each). The step finishes, last.pt holds it, the command exits 143 in one line (and
    takes no second SIGTERM's default death on its way out), Ctrl-C's handler is the process's own
    again, and resuming ends bit-identical to a run that was never stopped (a run killed at once
    would have lost steps 4-5, or left them unsaved)."""
    args = ["train", str(tiny_folder), "--arch", "resnet20", "--img-size", "24", "--epochs", "3", "--batch-size",
            "8", "--workers", "0", "--deterministic", "--seed", "3", "--val-split", "0.25"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    real, steps = TL.forward_loss, [0]

    def terminated_in_step_5(*a):
        steps[0] += 1  # a training step
        if steps[0] == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step, as a scheduler's does
        return real(*a)

    monkeypatch.setattr(TL, "forward_loss", terminated_in_step_5)
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    out = tmp_path / "stopped"
    try:
        assert main([*args, "--out", str(out)]) == 143
        assert signal.getsignal(signal.SIGINT) is sigint and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    monkeypatch.setattr(TL, "forward_loss", real)
    last = read_checkpoint(out / "last.pt")
    assert (last["scheduler"]["step"], last["progress"]["epoch"], steps[0]) == (5, 1, 5)
    assert main(["train", "--resume", str(out / "last.pt")]) == 0
    assert all(torch.equal(a, b) for a, b in zip(weights(out / "last.pt").values(),
                                                 weights(tmp_path / "straight" / "last.pt").values()))
    assert len((out / "metrics.csv").read_text().splitlines()) == 4  # header + 3 epochs, none repeated


def test_best_pt_is_the_epoch_that_scored_best_not_the_last(tiny_folder, tmp_path, monkeypatch):
    """Validation scores 0.5, 0.9, 0.7 over three epochs: best.pt is epoch 2's model (its step, its
    metrics row), last.pt epoch 3's, and the summary names epoch 2 (a run that saved best.pt on
    every epoch, or kept the first, would hold another)."""
    scores = iter([0.5, 0.9, 0.7])
    monkeypatch.setattr(TL, "validate", lambda run, progress: TL.ValScores(1.0, next(scores), 0.5, 0.5))
    summary = TL.train(quick(tiny_folder, tmp_path / "run", epochs=3))
    best, last = read_checkpoint(tmp_path / "run" / "best.pt"), read_checkpoint(tmp_path / "run" / "last.pt")
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [float(r.split(",")[6]) for r in rows[1:]] == [0.5, 0.9, 0.7] and rows[0].split(",")[6] == "val_acc"
    assert (best["epoch"], best["metrics"]["val_acc"], best["progress"]["step"]) == (2, 0.9, 6)
    assert last["epoch"] == 3 and any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    assert (summary["best_epoch"], summary["best_acc"], summary["final_acc"]) == (2, 0.9, 0.7)


def test_zero_init_residual_and_schedule_flags_reach_the_run(tiny_folder, tmp_path):
    """`--zero-init-residual` starts every block's last BatchNorm at zero (at a learning rate of
    1e-9 they are still zero after an epoch) and is recorded for resume; `--schedule step` is the
    run's schedule (a flag that the parser took but the run ignored would leave the default's)."""
    out = tmp_path / "run"
    assert main(["train", str(tiny_folder), "--arch", "resnet20", "--img-size", "24", "--epochs", "1", "--batch-size",
                 "8", "--workers", "0", "--val-split", "0.25", "--lr", "1e-9", "--warmup-epochs", "0",
                 "--zero-init-residual", "--schedule", "step", "--deterministic", "--out", str(out)]) == 0
    ckpt = read_checkpoint(out / "last.pt")
    last_bns = [v for k, v in ckpt["model"].items() if k.endswith("bn2.weight")]
    assert len(last_bns) == 9 and all(float(w.abs().max()) < 1e-6 for w in last_bns)
    assert ckpt["model_options"]["zero_init_residual"] and ckpt["config"]["schedule"] == "step"


def test_a_failed_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "arch": "resnet20", "classes": ["a"],
                           "eval_size": 32, "mean": [0.0], "std": [1.0]})
    real_save = torch.save

    def dies_half_way(obj, f, *a, **kw):  # as torch.save fails on a full disk
        f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 12")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*unexpected pos"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(read_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_sigkill_during_checkpoint_writes_never_corrupts(tmp_path):
    """Killed as it starts its fourth write (it says so after each one: no clock involved)."""
    path = tmp_path / "last.pt"
    script = f"""
import torch
from resnet.checkpoint import save_checkpoint
i = 0
while True:
    save_checkpoint({str(path)!r}, {{"model": {{"w": torch.full((2_000_000,), float(i))}}, "arch": "resnet20",
                     "classes": ["a"], "eval_size": 32, "mean": [0.0], "std": [1.0]}})
    i += 1
    print(i, flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    while int(proc.stdout.readline() or 0) < 3:
        assert proc.poll() is None, "the writer died"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    w = read_checkpoint(path)["model"]["w"]
    assert torch.all(w == w[0])  # whole, one consistent write


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    TL.train(quick(tiny_folder, out, epochs=1))
    good = weights(out / "last.pt")
    real = torch.nn.CrossEntropyLoss.forward
    calls = {"n": 0}

    def nan_at_step_2(self, logits, y):
        calls["n"] += 1
        loss = real(self, logits, y)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", nan_at_step_2)
    code = main(["train", "--resume", str(out / "last.pt"), "--epochs", "2", str(tiny_folder)])
    assert code == 1
    err = capsys.readouterr().err
    assert "nan" in err and "step" in err and "last.pt" in err
    after = weights(out / "last.pt")
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_outputs_of_a_run(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(tiny_folder), "--arch", "resnet20", "--img-size", "24", "--epochs", "2",
                 "--batch-size", "8", "--workers", "0", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["arch"] == "resnet20" and cfg["epochs"] == 2
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == ("epoch,img_size,lr,train_loss,train_acc,val_loss,val_acc,val_balanced_acc,val_macro_f1,"
                       "images_per_second,seconds")
    assert len(rows) == 3
    # the last line: best.pt's score and epoch, and beside it the final weights' (selection flatters best.pt)
    val = [float(r.split(",")[6]) for r in rows[1:]]
    best = max(val)
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert (f"best validation accuracy: {best:.4f} at epoch {val.index(best) + 1} of 2" in last_line
            and f"final weights: {val[-1]:.4f}" in last_line), last_line
    ckpt = torch.load(out / "best.pt", weights_only=True)
    for key in ("model", "arch", "model_options", "classes", "eval_size", "mean", "std", "epoch",
                "metrics", "config", "optimizer", "scheduler", "scaler", "rng"):
        assert key in ckpt
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["num_images"] == 7 and ev["classes"] == ["a", "b"]  # ceil(0.2 * 32): the default split
    for png in ("confusion_matrix.png", "training_curves.png"):
        assert (out / "report" / png).stat().st_size > 1000
    assert not (out / "skipped.txt").exists()


def test_a_log_off_a_terminal_has_plain_lines(tiny_folder, tmp_path, monkeypatch, capsys):
    """stdout and stderr into one file, as a SLURM log: no carriage returns (tqdm's redraws), the
    epochs' lines and a few more; long epochs add a line at their quarters, at most."""
    log = tmp_path / "log"
    with open(log, "wb") as f:
        r = subprocess.run([sys.executable, "-m", "resnet", "train", str(tiny_folder), "--arch", "resnet20",
                            "--img-size", "24", "--epochs", "3", "--batch-size", "8", "--workers", "0",
                            "--out", str(tmp_path / "run")], stdout=f, stderr=subprocess.STDOUT)
    text = log.read_bytes()
    assert r.returncode == 0, text.decode()[-2000:]
    assert b"\r" not in text
    lines = text.decode().splitlines()
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/3", "2/3", "3/3"]
    lines = [line for line in lines if not line.startswith("plan: ")]  # what the data is and what it gets
    assert len(lines) <= 3 + 8, lines  # the epochs and the run's own lines (start, cache, report, result)

    monkeypatch.setattr(TRec, "LOG_EVERY_S", 0)  # a long epoch: a line at each quarter, none in between
    bar = TRec.PlainBar(list(range(8)), "epoch 1/1")
    for step in bar:
        bar.set_postfix(loss=f"{step:.1f}")
    assert capsys.readouterr().out.splitlines() == [f"epoch 1/1: {n}/8 steps  loss {n - 1:.1f}" for n in (2, 4, 6)]


def test_seed_preset_trains_as_the_tutorial(tiny_folder, tmp_path):
    """The tutorial's run, as the optimiser and the records show it: ResNet-18 at 224 px trained on
    its evaluation crops, plain SGD at 0.01 from the first step (no warm-up, no momentum, no weight
    decay), batch 8."""
    out = tmp_path / "seed"
    small = tmp_path / "small"
    for c in ("a", "b"):
        (small / c).mkdir(parents=True)
        for p in sorted((tiny_folder / c).iterdir())[:4]:
            (small / c / p.name).write_bytes(p.read_bytes())
    # fp32, as the tutorial trains: timing its 16x-compute stem (3x3, stride 1) at 224 px in both
    # precisions would take a minute on a bf16 CPU, and emulated bf16 on AVX2 far longer.
    assert main(["train", str(small), "--preset", "seed", "--epochs", "1", "--workers", "0",
                 "--val-split", "0.25", "--amp", "off", "--out", str(out)]) == 0
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["arch"] == "resnet18_seed" and ckpt["eval_size"] == 224 and ckpt["config"]["train_like_eval"]
    opt = ckpt["optimizer"]["param_groups"]
    assert all(g["lr"] == pytest.approx(0.01) and g["momentum"] == 0 and g["weight_decay"] == 0 for g in opt)
    assert not opt[0]["nesterov"] and ckpt["progress"]["step"] == 6 // 8 + 1  # 6 training images, batch 8
    row = (out / "metrics.csv").read_text().splitlines()
    assert float(row[1].split(",")[2]) == pytest.approx(0.01) and row[0].split(",")[2] == "lr"


def test_explicit_flags_override_a_preset():
    cfg = TC.make_config("seed", batch_size=16, epochs=None)
    assert cfg.batch_size == 16 and cfg.epochs == 10
    with pytest.raises(ValueError, match="unknown preset"):
        TC.make_config("fastest")


def test_only_a_budget_with_the_size_left_open_picks_the_size():
    assert TC.make_config("default", max_minutes=20).fit_size
    for given in (dict(width=0.5), dict(img_size=96), dict(eval_size=112), dict(pretrained="imagenet")):
        assert not TC.make_config("default", max_minutes=20, **given).fit_size, given
    assert not TC.make_config("default").fit_size  # no budget: the preset's size
    assert not TC.make_config("cifar-paper", max_minutes=20).fit_size


def test_a_budget_trains_the_largest_size_its_compute_buys(tiny_folder, tmp_path, monkeypatch, capsys, step_clock):
    # A fake machine where forward + backward costs 1.5 us per parameter at 24 px, growing with pixels:
    # in 6 s, width 0.5 gets ~20 epochs at 24 px and ~12 at 32 px, width 1.0 (4x the parameters) ~3.
    def fake_compute(model, sizes, *args):
        return 1.5e-6 * sum(p.numel() for p in model.parameters()) * (min(sizes) / 24) ** 2, 2.0

    monkeypatch.setattr(TB, "compute_time_by_size", fake_compute)
    monkeypatch.setattr(TP, "plan_recipe", lambda stats, budget, epochs: Recipe("photos", {}, ((0.5, 24), (0.5, 32), (1.0, 32)), 5))
    cfg = TC.make_config("default", data=str(tiny_folder), arch="resnet20", batch_size=8, workers=0,
                        out=str(tmp_path / "run"), seed=3, val_split=0.25, max_minutes=0.1)
    TL.train(cfg)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["width"], config["img_size"]) == (0.5, 32)
    assert "the largest that still gets 5 epochs" in config["size_reason"]
    out = capsys.readouterr().out
    assert "size: width 0.5, 32 px" in out
    assert "as many epochs of" in out and f"{cfg.epochs} epochs of" not in out  # not the preset's, unplanned
    best = read_checkpoint(tmp_path / "run" / "best.pt")
    assert best["model_options"]["width"] == 0.5 and best["eval_size"] == eval_size_for(32)
    # Resumed, the run keeps the size it chose, without choosing again, and names its planned epochs.
    monkeypatch.setattr(TR, "size_for_budget", lambda *a: pytest.fail("the size was chosen again on resume"))
    planned = read_checkpoint(tmp_path / "run" / "last.pt")["progress"]["epochs"]
    TL.train(*TC.resume_config(tmp_path / "run" / "last.pt"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["size_reason"] == config["size_reason"]
    assert f"{planned} epochs of" in capsys.readouterr().out


@pytest.mark.parametrize("given", [{}, {"img_size": 64}])
@pytest.mark.parametrize("bought, augment", [(24, "none"), (67, "ta_wide")])
def test_a_budget_plans_again_from_the_epochs_its_size_buys(tiny_folder, tmp_path, monkeypatch, bought, augment,
                                                           given):
    """Photos of few images a class plan TrivialAugment before the budget is sized; the run trains
    with what the epochs its size buys decide (24 are too few: it lost 2.9 points at 20), and its
    plan says so. A size given is timed too (the epochs it buys), and kept."""
    from resnet.data.stats import DataStats

    photos = DataStats(images=200, classes=2, short_side=180, short_side_p10=180, short_side_p90=180, grey=0.0,
                       smallest_class=100, largest_class=100)
    monkeypatch.setattr(TR.D, "describe", lambda *a: photos)
    monkeypatch.setattr(TR, "size_for_budget", lambda cfg, *a: (replace(cfg, width=0.5, img_size=32), "sized", bought))
    run = TR.set_up(TC.make_config("default", data=str(tiny_folder), out=str(tmp_path / "run"), max_minutes=1.0,
                                   workers=0, **given), None)
    assert run.cfg.auto_augment == augment and run.cfg.img_size == given.get("img_size", 32)
    assert any(f"the {bought} epochs the time budget buys" in line for line in run.plan_lines), run.plan_lines
    assert sum("TrivialAugment" in line for line in run.plan_lines) == 1  # the first plan's line replaced


def test_a_budget_that_ends_mid_epoch_stops_there_annealed(tiny_folder, tmp_path, monkeypatch):
    """A plan of two epochs and one step: the third epoch is that one step, and the schedule is laid
    over the steps planned, not over three whole epochs."""
    planned, real_plan = [], TB.Budget.first_fit

    def plan(self, *args) -> int:
        real_plan(self, *args)  # the step model it measures
        planned.append(2 * self.shape.steps_per_epoch + 1)
        return planned[0]

    monkeypatch.setattr(TB.Budget, "first_fit", plan)
    monkeypatch.setattr(TB.Budget, "refit", lambda self, history, done, steps: steps)
    TL.train(quick(tiny_folder, tmp_path / "run", epochs=10, max_minutes=10, warmup_epochs=0.0))
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    total = planned[0]
    assert last["progress"]["step"] == last["scheduler"]["total_steps"] == total
    assert [row["epoch"] for row in last["progress"]["history"]] == [1, 2, 3]
    peak = last["config"]["lr"] * last["config"]["batch_size"] / 256
    lr = last["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(TS.lr_at(total - 1, total, 0, peak, "onecycle"))
    assert lr != pytest.approx(TS.lr_at(total - 1, total + 1, 0, peak, "onecycle"))


def test_schedule_warms_up_then_decays():
    lrs = [TS.lr_at(s, 100, 10, 1.0, "onecycle") for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01


def test_flat_cos_holds_the_peak_for_three_quarters_then_decays():
    lrs = [TS.lr_at(s, 100, 10, 1.0, "flat-cos") for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[10:75] == [1.0] * 65  # warm-up, then flat to 3/4
    assert lrs[76] < 1.0 and all(a > b for a, b in zip(lrs[75:], lrs[76:])) and lrs[-1] < 0.01
    assert lrs[87] == pytest.approx(0.5, abs=0.05)  # a cosine: half way down half way through it


def test_progressive_crop_sizes():
    sizes = [TS.crop_size_at(e, 20, 96, None) for e in range(20)]
    assert sizes[0] == 64 and sizes[-1] == 96 and sizes[-3:] == [96] * 3  # two thirds, then full
    assert sizes == sorted(sizes) and all(s % 8 == 0 for s in sizes)
    assert [TS.crop_size_at(e, 5, 100, 100) for e in range(5)] == [100] * 5  # off
    assert TS.crop_size_at(9, 10, 100, 60) == 100  # the last epoch is exactly img_size


def test_no_weight_decay_on_batchnorm_and_biases():
    from resnet import create_model

    decay, no_decay = TO.param_groups(create_model("resnet20"), 1e-4)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0


def test_fine_tuning_rates_fall_by_stage_below_the_classifier_which_alone_trains_while_frozen():
    from resnet import create_model

    model = create_model("resnet18", num_classes=2)
    groups = TO.param_groups(model, 1e-4, 0.5, by_stage=True)
    stage = {id(p): name.split(".")[0] for name, p in model.named_parameters()}
    depth = {"fc": 0, "layer4": 1, "layer3": 2, "layer2": 3, "layer1": 4, "conv1": 5, "bn1": 5}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for g in groups:
        assert {0.5 ** depth[stage[id(p)]] for p in g["params"]} == {g["lr_scale"]}
        assert g["head"] == (g["lr_scale"] == 1.0)
        assert [TO.lr_scale(g, epoch, 1) for epoch in (0, 1)] == [1.0 if g["head"] else 0.0, g["lr_scale"]]
    assert TO.lr_scale({"params": []}, 0, 1) == 1.0  # a group restored from an older run: one rate


@pytest.mark.parametrize("options", [dict(freeze_epochs=1, layer_decay=0.5), dict(freeze=True)])
def test_a_frozen_body_stays_as_its_pretrained_weights_start(tiny_folder, tmp_path, options):
    """Fine-tuning from a pretrained file: with --freeze-epochs 1, the first epoch moves the
    classifier alone and the second everything; with --freeze (a linear probe) only the classifier
    ever moves, the body's BatchNorm statistics included. The network takes the file's width (a
    quarter, where the preset's is a half). From scratch, either is refused."""
    from resnet import create_model

    start = create_model("resnet20", num_classes=2, width=0.25).state_dict()
    torch.save(start, tmp_path / "pretrained.pth")
    for epochs in (1, 2):
        TL.train(quick(tiny_folder, tmp_path / f"run{epochs}", epochs=epochs, pretrained=str(tmp_path / "pretrained.pth"),
                       **options))
        after = weights(tmp_path / f"run{epochs}" / "last.pt")
        assert read_checkpoint(tmp_path / f"run{epochs}" / "last.pt")["model_options"]["width"] == 0.25
        moved = {k for k in start if not torch.equal(start[k], after[k]) and "num_batches" not in k}
        body = {k for k in moved if not k.startswith("fc.")}
        assert {"fc.weight", "fc.bias"} <= moved
        if epochs == 1 or options.get("freeze"):
            assert all("running_" in k for k in body) if not options.get("freeze") else body == set(), body
        else:
            assert "conv1.weight" in body and "layer3.2.conv2.weight" in body
    with pytest.raises(TC.ConfigError, match="give them"):
        quick(tiny_folder, tmp_path / "scratch", **options)


def test_a_torchvision_file_fine_tunes_at_its_own_width_with_its_head_replaced(tiny_folder, tmp_path):
    """torchvision's ResNet-18 layout (1,000 classes, full width) under the default preset's half
    width: the network takes the file's width, its classifier is replaced for the 2 classes, and a
    linear probe (--freeze) leaves every other weight and statistic as the file has it."""
    from resnet import create_model

    start = create_model("resnet18", num_classes=1000).state_dict()
    torch.save(start, tmp_path / "resnet18.pth")
    TL.train(quick(tiny_folder, tmp_path / "run", arch="resnet18", epochs=1, freeze=True,
                   pretrained=str(tmp_path / "resnet18.pth")))
    ckpt = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["model_options"]["width"] == 1.0 and ckpt["model"]["fc.weight"].shape == (2, 512)
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in start.items() if not k.startswith("fc."))


@pytest.mark.parametrize("cache,tta,shift", [(False, False, 0), (True, False, 0), (False, True, 0), (False, True, 1)])
def test_validation_during_training_is_what_evaluate_says(tiny_folder, tmp_path, cache, tta, shift):
    """With the decoded cache or without it, with flip TTA (and shifted views) or without, the
    validation figures in metrics.csv are those that `evaluate` computes by default for the same
    weights on the same images: the saved model is scored as it was validated."""
    from resnet.inference.evaluate import evaluate

    out = tmp_path / "run"
    TL.train(quick(tiny_folder, out, epochs=1, cache=cache, cache_dir=str(tmp_path / "cache"), tta=tta,
                   tta_shift=shift))
    assert (tmp_path / "cache").exists() == cache
    row = read_checkpoint(out / "last.pt")["metrics"]
    result, _, _ = evaluate(out / "last.pt", out / "val.csv", workers=0, device="cpu")
    assert result["accuracy"] == pytest.approx(row["val_acc"]) and result["num_images"] == 8
    assert result["loss"] == pytest.approx(row["val_loss"], rel=1e-5) and result["tta"] == tta
    assert result["tta_shift"] == shift
    other, _, _ = evaluate(out / "last.pt", out / "val.csv", tta=not tta, workers=0, device="cpu")
    assert other["loss"] != pytest.approx(row["val_loss"], rel=1e-5)  # the two ways differ on these images


def test_patience_stops_a_run_that_does_not_improve(tiny_folder, tmp_path):
    summary = TL.train(quick(tiny_folder, tmp_path / "run", epochs=6, lr=1e-12, patience=2))
    assert summary["epochs"] == 3  # the first epoch sets the best; two more without improving
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 1 + 3


def test_resume_under_a_time_budget_keeps_the_time_spent(tiny_folder, tmp_path, monkeypatch, step_clock):
    """A 10-minute budget (hundreds of tiny epochs, planned by bisection), killed before epochs 3
    and 5: the resumed run counts on from the time already spent (a run that restarted its clock
    would have 10 minutes again), and the plan goes on as planned."""
    killed_before_epoch(monkeypatch, lambda: TL.train(quick(tiny_folder, tmp_path / "run", max_minutes=10)), 3)
    before = read_checkpoint(tmp_path / "run" / "last.pt")
    assert before["budget"]["spent_s"] == pytest.approx(6 * step_clock.step_s)  # 2 epochs of 3 steps
    assert before["budget"]["step_time"] is not None
    # The same checkpoint as schema 2 wrote it (the step-time model under "model") reads as the current.
    older = {**before, "schema": 2, "budget": {"spent_s": before["budget"]["spent_s"],
                                               "model": before["budget"]["step_time"]}}
    assert migrate(older)["budget"] == before["budget"] and migrate(older).keys() == before.keys()
    cfg, state = TC.resume_config(tmp_path / "run" / "last.pt")
    assert cfg.max_minutes == 10 and cfg.epochs == before["progress"]["epochs"] > 100  # the plan goes on
    killed_before_epoch(monkeypatch, lambda: TL.train(cfg, state), 5)
    after = read_checkpoint(tmp_path / "run" / "last.pt")
    assert after["budget"]["spent_s"] == pytest.approx(12 * step_clock.step_s)  # on from 6 steps, 6 more


def test_step_schedule_divides_by_ten_at_half_and_three_quarters():
    lrs = [TS.lr_at(s, 100, 0, 0.1, "step") for s in range(100)]
    assert lrs[49] == 0.1 and lrs[50] == pytest.approx(0.01) and lrs[74] == pytest.approx(0.01)
    assert lrs[75] == pytest.approx(0.001) and lrs[99] == pytest.approx(0.001)
    warm = [TS.lr_at(s, 100, 10, 0.1, "step") for s in range(100)]  # --warmup-epochs (ResNet-110's)
    assert warm[0] == pytest.approx(0.01) and warm[9:50] == pytest.approx([0.1] * 41) and warm[60] == lrs[60]


def test_cifar_paper_preset_divides_the_learning_rate_where_the_paper_did():
    """He et al. 4.2 as the run's schedule gives it: 0.1 from the first step (batch 128, no
    warm-up), divided by 10 at 32k and 48k of 64k iterations, the run 64k iterations long on the
    45k training images (351 an epoch)."""
    from types import SimpleNamespace

    cfg = TC.make_config("cifar-paper", data=".")
    run, progress = SimpleNamespace(cfg=cfg, steps_per_epoch=45_000 // 128), TR.Progress(epochs=cfg.epochs)
    total = progress.total_steps(run.steps_per_epoch)
    assert abs(total - 64_000) < run.steps_per_epoch

    def lr(step: int) -> float:
        progress.step = step
        return TR.Run.lr(run, progress)

    assert lr(0) == pytest.approx(0.1) and lr(total // 2 - 1) == pytest.approx(0.1)
    assert lr(total // 2) == pytest.approx(0.01) and lr(3 * total // 4) == pytest.approx(0.001)
    assert lr(total - 1) == pytest.approx(0.001)
