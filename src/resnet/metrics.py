"""What a score means when the classes are not balanced: balanced accuracy (the mean of the
per-class recalls, scikit-learn's `balanced_accuracy_score`) and macro-F1 from a confusion matrix,
the rule that makes a set imbalanced, and which figure leads. Training's validation (summed over
ranks as a confusion matrix) and `evaluate` both read them from here. No torch."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .constants import IMBALANCE_RATIO


def imbalanced(counts: Sequence[int]) -> bool:
    """Whether the classes present (a count above 0) differ by more than `IMBALANCE_RATIO`."""
    present = [int(c) for c in counts if c > 0]
    return len(present) > 1 and max(present) > IMBALANCE_RATIO * min(present)


def _recalls(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the confusion matrix in float64, which classes have images in it, their recalls): a class
    absent from the set has no recall to count."""
    confusion = np.asarray(confusion, dtype=np.float64)
    support = confusion.sum(1)
    present = support > 0
    return confusion, present, np.diag(confusion)[present] / support[present]


def class_scores(confusion: np.ndarray) -> tuple[float, float]:
    """(balanced accuracy, macro-F1) of a confusion matrix (rows: true class, columns: predicted),
    over the classes that have images in it."""
    confusion, present, recall = _recalls(confusion)
    if not present.any():
        return float("nan"), float("nan")
    predicted, hits = confusion.sum(0), np.diag(confusion)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)[present]
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(recall),
                   where=precision + recall > 0)
    return float(recall.mean()), float(f1.mean())


def balanced_accuracy_error(confusion: np.ndarray) -> float:
    """The standard error of a confusion matrix's balanced accuracy, each class's recall a binomial
    share of its own images: sqrt(sum r (1 - r) / n) / classes. A class of 40 images at recall 0.7
    alone puts ~3.6 points of noise on a two-class balanced accuracy, however many the other has."""
    confusion, present, recall = _recalls(confusion)
    if not present.any():
        return float("nan")
    return float(np.sqrt(np.sum(recall * (1 - recall) / confusion.sum(1)[present])) / len(recall))


def headline(counts: Sequence[int]) -> str:
    """The figure a score of a set with these class counts leads with: "balanced_accuracy" where
    they are imbalanced (accuracy then mostly counts the largest class), else "accuracy"."""
    return "balanced_accuracy" if imbalanced(counts) else "accuracy"


def most_confused(confusion: np.ndarray, classes: Sequence[str], shown: int) -> list[dict]:
    """The `shown` largest off-diagonal cells, largest first: which class is taken for which, how
    often, and the share of the true class's images that is."""
    confusion = np.asarray(confusion)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:shown]
    pairs = []
    for flat in order:
        t, p = divmod(int(flat), len(classes))
        if off[t, p] == 0:
            break
        pairs.append({"true": classes[t], "predicted": classes[p], "count": int(off[t, p]),
                      "share": float(off[t, p] / confusion[t].sum())})
    return pairs
