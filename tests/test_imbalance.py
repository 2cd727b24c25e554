"""Imbalanced folders and many classes of few images: what a score means (balanced accuracy,
macro-F1, the headline), how training counters the imbalance (`--class-balance`), which epoch
best.pt keeps, and a folder of 120 classes with 1 to 17 photos each trained by default."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score

from resnet.training import config as TC, loop as TL
from resnet import data as D
from resnet.cli import main
from resnet.metrics import balanced_accuracy_error, class_scores, headline, imbalanced, most_confused
from resnet.training.recipe import class_balance_for
from resnet.training.run import LogitAdjustedLoss, make_criterion, selection_key
from resnet.training import threshold as TH

from conftest import photo


def test_class_scores_are_scikit_learns_and_skip_absent_classes():
    """Balanced accuracy and macro-F1 from a confusion matrix equal scikit-learn's from the labels,
    over the classes that have images (a class absent from the set has no recall to average)."""
    rng = np.random.default_rng(0)
    y = rng.choice(4, 300, p=[0.7, 0.2, 0.1, 0.0])
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 3, 300))
    confusion = np.zeros((4, 4), int)
    np.add.at(confusion, (y, pred), 1)
    balanced, macro_f1 = class_scores(confusion)
    assert balanced == pytest.approx(balanced_accuracy_score(y, pred))
    assert macro_f1 == pytest.approx(f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=0))
    assert math.isnan(class_scores(np.zeros((3, 3)))[0])


def test_what_counts_as_imbalanced_and_what_leads():
    assert not imbalanced([300, 286, 300]) and not imbalanced([5000] * 10) and not imbalanced([3, 2])
    assert imbalanced([4000, 200]) and imbalanced([10, 3]) and not imbalanced([7, 0, 7])  # an absent class aside
    assert headline([4000, 200]) == "balanced_accuracy" and headline([100, 90]) == "accuracy"
    confusion = np.array([[5, 3, 0], [0, 4, 1], [2, 0, 6]])
    pairs = most_confused(confusion, ["a", "b", "c"], 2)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("a", "b", 3), ("c", "a", 2)]
    assert pairs[0]["share"] == pytest.approx(3 / 8)


def test_the_plan_balances_only_imbalanced_classes_and_a_given_choice_stands():
    assert class_balance_for([100, 95], "auto") == ("none", None)
    choice, line = class_balance_for([4000, 200], "auto")
    assert choice == "sampler" and "4000 to 200 images a class, 20.0:1" in line and "balanced accuracy" in line
    assert class_balance_for([4000, 200], "none") == ("none", None)
    assert class_balance_for([100, 95], "sampler") == ("sampler", None)


def test_each_loss_is_the_one_it_names():
    """reweight is scikit-learn's class_weight="balanced" in the loss; logit-adjust adds the log
    priors to the logits before the cross-entropy (a loss that ignored them, or subtracted them,
    would differ); none and sampler are the plain loss."""
    from sklearn.utils.class_weight import compute_class_weight

    counts = [30, 10, 60]
    labels = torch.tensor([0, 1, 2, 2, 1])
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    cfg = TC.TrainConfig(label_smoothing=0.1)
    prior = torch.tensor(counts, dtype=torch.float32) / 100
    plain = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    for balance in ("none", "sampler"):
        assert torch.allclose(make_criterion(TC.TrainConfig(label_smoothing=0.1, class_balance=balance), counts,
                                             torch.device("cpu"))(logits, labels), plain)
    reweight = make_criterion(TC.TrainConfig(label_smoothing=0.1, class_balance="reweight"), counts, torch.device("cpu"))
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.repeat(np.arange(3), counts))
    assert torch.allclose(reweight.weight, torch.tensor(expected, dtype=torch.float32))
    adjusted = make_criterion(TC.TrainConfig(label_smoothing=0.1, class_balance="logit-adjust"), counts,
                              torch.device("cpu"))
    assert isinstance(adjusted, LogitAdjustedLoss)
    assert torch.allclose(adjusted(logits, labels), torch.nn.functional.cross_entropy(
        logits + prior.log(), labels, label_smoothing=0.1))
    assert not torch.allclose(adjusted(logits, labels), plain)
    del cfg


def test_class_balanced_sampling_draws_each_class_alike_and_replays_exactly():
    """With `balanced_weights`, an epoch draws a 20:1 folder's classes about equally often; the
    draws are a function of (seed, epoch), so a resumed epoch (`start`) continues them exactly."""
    labels = [0] * 200 + [1] * 10
    sampler = D.EpochSampler(len(labels), True, seed=3, weights=D.balanced_weights(labels))
    sampler.set_epoch(2)
    draws = [d.index for d in sampler]
    minority = sum(labels[i] for i in draws) / len(draws)
    assert len(draws) == 210 and 0.4 < minority < 0.6
    sampler.set_epoch(2, start=50)
    assert [d.index for d in sampler] == draws[50:]
    sampler.set_epoch(3)
    assert [d.index for d in sampler] != draws


def write_classes(root, layout: dict[str, int], size: int = 32) -> None:
    for k, (name, n) in enumerate(layout.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            photo(size, size, seed=1000 * k + i, bright=k % 2 == 1).save(root / name / f"{i}.png")


@pytest.fixture(scope="module")
def imbalanced_run(tmp_path_factory):
    """A 5:1 folder trained by default for two epochs: (data, run folder, stdout)."""
    root = tmp_path_factory.mktemp("imbalanced")
    write_classes(root / "data", {"common": 50, "rare": 10})
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", str(root / "data"), "--arch", "resnet20", "--img-size", "24", "--epochs", "2",
                     "--batch-size", "8", "--workers", "0", "--deterministic", "--out", str(root / "run")]) == 0
    return root / "data", root / "run", out.getvalue()


def test_an_imbalanced_folder_is_trained_balanced_and_scored_by_balanced_accuracy(imbalanced_run, capsys):
    """The plan says the classes are imbalanced and balances them (recorded: a resume keeps it);
    metrics.csv has balanced accuracy and macro-F1 beside accuracy; the summary, evaluate's JSON
    and last line and the report lead with balanced accuracy."""
    data, run, text = imbalanced_run
    assert "plan: imbalanced classes (40 to 8 images a class, 5.0:1): each class drawn equally often" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("best.pt's validation balanced accuracy (the mean per-class recall: the classes are "
                           "imbalanced)")
    config = json.loads((run / "config.json").read_text())
    assert config["class_balance"] == "sampler" and config["tta"] is True
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["tta"] is True  # scored so wherever it is loaded
    assert best["logit_adjustment"]["tau"] >= 0  # the threshold moved (or not) on the validation images
    assert "best.pt's threshold moved toward the rarer classes: logits - " in text
    assert "logit_adjustment" not in torch.load(run / "last.pt", weights_only=True)  # what resumes is as trained
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[6:9] == ["val_acc", "val_balanced_acc", "val_macro_f1"]
    assert main(["evaluate", str(run / "best.pt"), str(data), "--json", str(run / "e.json"),
                 "--report", str(run / "r")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads((run / "e.json").read_text())
    assert result["headline"] == "balanced_accuracy" and out[-1].startswith("balanced accuracy: ")
    assert f"{result['balanced_accuracy']:.4f}" in out[-1] and "macro-F1" in out[-1]
    report = (run / "r" / "report.md").read_text().splitlines()
    assert report[2].startswith("- balanced accuracy: **") and report[3].startswith("- accuracy: ")


def test_best_pt_is_chosen_by_balanced_accuracy_where_the_classes_are_imbalanced(tmp_path, monkeypatch):
    """Epoch 2 has the higher accuracy (it calls everything the common class), epoch 1 the higher
    balanced accuracy: best.pt keeps epoch 1 on an imbalanced set, epoch 2 on a balanced one."""
    scores = {1: TL.ValScores(1.0, 0.70, 0.65, 0.6), 2: TL.ValScores(1.0, 0.83, 0.50, 0.45)}
    monkeypatch.setattr(TL, "validate", lambda run, progress: scores[progress.epoch + 1])
    for layout, best in (({"common": 50, "rare": 10}, 1), ({"a": 30, "b": 30}, 2)):
        root = tmp_path / str(best)
        write_classes(root / "data", layout)
        summary = TL.train(TC.make_config(data=str(root / "data"), arch="resnet20", img_size=24, epochs=2,
                                          batch_size=8, workers=0, out=str(root / "run")))
        assert summary["best_epoch"] == best, layout
        assert torch.load(root / "run" / "best.pt", weights_only=True)["epoch"] == best


def test_best_pt_is_the_latest_epoch_within_a_standard_error_of_the_highest_where_classes_are_imbalanced(
        tmp_path, monkeypatch):
    """Balanced accuracies 0.70, 0.80, 0.77, 0.70 with a standard error of 0.05: best.pt is epoch 3
    (0.77 is within 0.05 of 0.80, and later), not epoch 4 (0.70 is not); the summary says both. On
    a balanced set, chosen by accuracy, the highest stays best.pt whatever the error."""
    scores = {1: (0.70, 0.70), 2: (0.80, 0.80), 3: (0.77, 0.77), 4: (0.70, 0.70)}
    monkeypatch.setattr(TL, "validate", lambda run, progress: TL.ValScores(1.0, *scores[progress.epoch + 1],
                                                                           0.5, 0.05))
    for layout, best in (({"common": 50, "rare": 10}, 3), ({"a": 30, "b": 30}, 2)):
        root = tmp_path / str(best)
        write_classes(root / "data", layout)
        summary = TL.train(TC.make_config(data=str(root / "data"), arch="resnet20", img_size=24, epochs=4,
                                          batch_size=8, workers=0, out=str(root / "run")))
        assert torch.load(root / "run" / "best.pt", weights_only=True)["epoch"] == best, layout
        assert (summary["best_epoch"], summary["best_acc"]) == (best, scores[best][0])
        assert (summary["highest_epoch"], summary["highest_acc"]) == (2, 0.80)


def test_imbalanced_classes_are_scored_with_flip_tta_unless_told_otherwise():
    """Planned where the training classes are imbalanced, with its line; not where they are
    balanced, nor where --tta / --no-tta was given, nor for a run without mirror images."""
    from resnet.training.run import with_class_balance

    photos = TC.make_config(data="x")
    assert photos.tta is False
    cfg, lines = with_class_balance(photos, [3200, 160], resuming=False)
    assert cfg.tta is True and cfg.class_balance == "sampler"
    assert lines[1].startswith("imbalanced classes scored with flip TTA") and "--no-tta" in lines[1]
    assert with_class_balance(photos, [300, 290], resuming=False)[0].tta is False
    for given in (TC.make_config(data="x", tta=False), TC.make_config(data="x", hflip=False)):
        cfg, lines = with_class_balance(given, [3200, 160], resuming=False)
        assert cfg.tta is False and len(lines) == 1
    assert with_class_balance(photos, [3200, 160], resuming=True) == (photos, [])  # kept as it began


def test_the_balanced_accuracy_error_is_each_recall_a_binomial_share_of_its_class():
    confusion = np.array([[28, 12], [160, 640]])  # 40 cats at recall 0.7, 800 dogs at 0.8
    expected = math.sqrt(0.7 * 0.3 / 40 + 0.8 * 0.2 / 800) / 2
    assert balanced_accuracy_error(confusion) == pytest.approx(expected)  # ~0.037: the 40 cats' noise
    assert balanced_accuracy_error(np.array([[28, 12, 0], [160, 640, 0], [0, 0, 0]])) == pytest.approx(expected)
    assert math.isnan(balanced_accuracy_error(np.zeros((2, 2))))


def test_selection_follows_the_validation_classes():
    s = lambda val: D.DataSplit(["a", "b"], [D.Sample("x", 0)], val)  # noqa: E731
    skewed = s([D.Sample("x", 0)] * 9 + [D.Sample("y", 1)] * 2)
    assert selection_key(s([]), []) == "train_acc"
    assert selection_key(skewed, []) == "val_balanced_acc"
    assert selection_key(skewed, [{"val_acc": 0.9, "val_balanced_acc": 0.6}]) == "val_balanced_acc"
    assert selection_key(skewed, [{"val_acc": 0.9}]) == "val_acc"  # resumed from before: chosen as it began
    assert selection_key(s([D.Sample("x", 0)] * 3 + [D.Sample("y", 1)] * 3), []) == "val_acc"


def test_a_hundred_and_twenty_classes_of_few_photos_each_train_by_default(tmp_path, capsys):
    """120 classes of 1 to 17 photos (one with a single photo, many with 2 or 3): the default run
    is not refused; it holds out what can be held out, class by class, and says so; the report
    lists the most confused pairs instead of a 120x120 grid, the per-class table worst first, and
    top-5 accuracy leads beside accuracy."""
    rng = np.random.default_rng(0)
    layout = {f"breed{k:03d}": int(n) for k, n in enumerate(rng.integers(2, 18, 120))}
    layout["breed000"] = 1
    write_classes(tmp_path / "data", layout, size=20)
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "data"), "--arch", "resnet20", "--img-size", "16", "--epochs", "1",
                 "--batch-size", "32", "--workers", "0", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "plan: 1 class with a single image, trained on and not validated: breed000" in text
    val, train = (D.read_listing(out / f) for f in ("val.csv", "train.csv"))
    val_classes = {path.split("/")[-2] for path in val}
    assert len(val_classes) == 119 and "breed000" not in val_classes  # every class with two photos held one out
    assert len(train) + len(val) == sum(layout.values()) and not set(train) & set(val)
    assert "plan: too few images for a stratified 20% of every class" in text
    report = (out / "report" / "report.md").read_text()
    assert not (out / "report" / "confusion_matrix.png").exists() and "the most confused pairs" in report
    assert "top-5 accuracy: " in report
    result = json.loads((out / "evaluation.json").read_text())
    rows = [line.split("|") for line in report.splitlines() if line.startswith("| breed")]
    f1s = [float(cells[4]) for cells in rows if len(cells) == 7]  # the per-class table, not the pairs
    assert f1s == sorted(f1s) and len(f1s) == 120
    assert len(result["most_confused"]) <= 15 and "top5_accuracy" in result


def test_the_threshold_moves_toward_the_rare_class_by_the_middle_of_the_taus_that_score_highest():
    """Rare images (label 1) score 0.5 below the common class, common ones 2.0 above the rare: the
    rare class wins once tau x log(0.8 / 0.2) passes 0.5, the common class loses past 2.0, and tau
    is the middle of that span; where any move would cost a common image, tau stays 0 (never
    toward the common class)."""
    log_prior = np.log([0.8, 0.2])
    log_probs = np.array([[0.0, -0.5]] * 10 + [[0.0, -2.0]] * 10)
    labels = np.array([1] * 10 + [0] * 10)
    tau, before, after = TH.choose_tau(log_probs, labels, log_prior)
    gap = math.log(4)
    span = [t for t in TH.POSTHOC_TAUS if 0.5 < t * gap < 2.0]
    assert (before, after) == (0.5, 1.0) and tau == pytest.approx(float(np.median(span)))
    tight = np.array([[0.0, 0.5]] * 10 + [[0.0, -0.01]] * 10)  # every image right at tau 0, one the edge
    assert TH.choose_tau(tight, labels, log_prior) == (0.0, 1.0, 1.0)


@pytest.mark.parametrize("arch", ["resnet20", "resnet9"])  # resnet9 scales its last layer's output
def test_moving_the_threshold_shifts_best_pts_logits_by_tau_times_the_log_shares_once(arch, tmp_path, monkeypatch):
    from resnet.checkpoint import load_checkpoint, model_card, save_checkpoint
    from resnet.models import create_model

    write_classes(tmp_path / "train", {"common": 8, "rare": 2})
    write_classes(tmp_path / "val", {"common": 2, "rare": 2})
    card = model_card(arch, {}, ["common", "rare"], 32, 1.0, False)
    save_checkpoint(tmp_path / "best.pt", {**card, "model": create_model(arch, num_classes=2).state_dict()})
    before, _ = load_checkpoint(tmp_path / "best.pt")
    monkeypatch.setattr(TH, "choose_tau", lambda *args: (0.5, 0.5, 0.75))
    moved = TH.move_threshold(tmp_path / "best.pt", tmp_path / "val", tmp_path / "train", workers=0)
    assert moved == {"tau": 0.5, "val_balanced_acc": 0.5, "val_balanced_acc_adjusted": 0.75}
    again = TH.move_threshold(tmp_path / "best.pt", tmp_path / "val", tmp_path / "train", workers=0)
    after, state = load_checkpoint(tmp_path / "best.pt")
    assert again == moved and state["logit_adjustment"] == moved
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        shift = after(x) - before(x)
    expected = torch.tensor(-0.5 * np.log([0.8, 0.2]), dtype=torch.float32).expand(3, 2)
    torch.testing.assert_close(shift, expected, atol=1e-5, rtol=0)


def test_a_balanced_run_keeps_its_threshold(trained):
    """Balanced classes: best.pt is the epoch's weights as trained, nothing moved."""
    _, run = trained
    assert "logit_adjustment" not in torch.load(run / "best.pt", weights_only=True)
