"""best.pt's decision threshold, moved toward the rarer classes where the classes are imbalanced:
Menon et al. 2021's post-hoc logit adjustment ("Long-tail learning via logit adjustment"), the
logits minus tau x the log of each class's share of the training images, with tau >= 0 chosen on
the run's own validation images and folded into the last layer's bias, so that `evaluate`,
`predict`, the server and every export apply it without knowing.

Why, after class-balanced sampling trained the classes equally often: a rare class's few images
are each drawn many times (at 1:20, each cat ~10 times an epoch), so the network learns those
images better than the class, and new photos of it score lower than the training ones did; the
validation images are such new photos. Measured: `constants.POSTHOC_TAUS`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import data as D
from ..checkpoint import load_checkpoint, save_checkpoint
from ..constants import POSTHOC_TAUS
from ..inference.evaluate import evaluate
from ..metrics import class_scores


def balanced_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """`metrics.class_scores`' balanced accuracy of predicting the highest of `scores`."""
    k = scores.shape[1]
    confusion = np.bincount(labels * k + scores.argmax(1), minlength=k * k).reshape(k, k)
    return class_scores(confusion)[0]


def choose_tau(log_probs: np.ndarray, labels: np.ndarray, log_prior: np.ndarray) -> tuple[float, float, float]:
    """(tau, the balanced accuracy at 0, at tau) on these validation scores: the middle of the taus
    of `POSTHOC_TAUS` that score the highest, so that a plateau of equals, common with a rare
    class of a few dozen images, does not end at its edge."""
    scores = [balanced_accuracy(log_probs - tau * log_prior, labels) for tau in POSTHOC_TAUS]
    top = [tau for tau, score in zip(POSTHOC_TAUS, scores) if score >= max(scores) - 1e-12]
    tau = float(np.median(top))
    return tau, scores[0], balanced_accuracy(log_probs - tau * log_prior, labels)


def log_class_shares(train_listing: Path, classes: list[str]) -> np.ndarray:
    """The log of each class's share of the images a run trained on (its train.csv)."""
    files, _ = D.labelled_files(train_listing)
    counts = Counter(label for _, label in files)
    share = np.array([max(counts[c], 1) for c in classes], dtype=np.float64)
    return np.log(share / share.sum())


def move_threshold(best: Path, val_listing: Path, train_listing: Path, **options: Any) -> dict[str, float]:
    """Choose tau for the run's `best` checkpoint on its validation images and fold it into the
    checkpoint's last layer (rewritten atomically, the choice recorded in it as
    `logit_adjustment`): the choice, with the validation balanced accuracy before and after, which
    the choice flatters. A checkpoint that has one already is left as it is (a resumed run whose
    best.pt did not change). `options`: `evaluate`'s."""
    model, state = load_checkpoint(best)
    if "logit_adjustment" in state:
        return state["logit_adjustment"]
    _, samples, probs = evaluate(best, val_listing, **options)
    log_prior = log_class_shares(train_listing, state["classes"])
    tau, before, after = choose_tau(probs.clamp_min(1e-30).log().numpy(), np.array([s.label for s in samples]),
                                    log_prior)
    with torch.no_grad():  # the logits are the last layer's output times the architecture's scale
        model.fc.bias += torch.as_tensor(-tau * log_prior, dtype=model.fc.bias.dtype) / getattr(model, "LOGIT_SCALE", 1.0)
    adjustment = {"tau": tau, "val_balanced_acc": before, "val_balanced_acc_adjusted": after}
    save_checkpoint(best, {**state, "model": model.state_dict(), "logit_adjustment": adjustment})
    return adjustment
