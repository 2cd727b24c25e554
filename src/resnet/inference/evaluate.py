"""Honest evaluation: accuracy with per-class precision / recall / F1 and the confusion matrix
(scikit-learn), top-5 when there are enough classes, the loss, optional flip TTA, and a report
(plots + markdown) a person can read."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import data as D
from ..constants import CONFUSED_PAIRS_SHOWN, CONFUSION_GRID_MAX, TOP5_HEADLINE_CLASSES
from ..metrics import class_scores, headline, most_confused
from ..outputs import write_text_atomically
from .predict import Classifier


def compute_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Every figure of a scored set. `headline` names the one it leads with: `balanced_accuracy`
    (the mean per-class recall, with `macro_f1`) where its classes are imbalanced
    (`metrics.imbalanced`), `accuracy` where not; `most_confused` lists the largest mistakes."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y, pred = labels.numpy(), logits.argmax(1).numpy()
    k = range(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=list(k), zero_division=0)
    confusion = confusion_matrix(y, pred, labels=list(k))
    balanced, macro_f1 = class_scores(confusion)
    result: dict[str, Any] = {
        "headline": headline(support),
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "balanced_accuracy": balanced,
        "macro_f1": macro_f1,
        "num_images": int(len(y)),
        "loss": float(F.cross_entropy(logits, labels).item()) if len(y) else float("nan"),
        "classes": list(classes),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]),
                          "f1": float(f1[i]), "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": confusion.tolist(),
        "most_confused": most_confused(confusion, classes, CONFUSED_PAIRS_SHOWN),
    }
    if len(classes) >= 5 and len(y):
        top5 = logits.topk(5, dim=1).indices
        result["top5_accuracy"] = float((top5 == labels[:, None]).any(1).float().mean())
    return result


def evaluate(model: str | Path | Classifier, data: str | Path, tta: bool | None = None, batch_size: int = 64,
             workers: int | None = None, device: str = "auto", label_pattern: str | None = None,
             amp: str = "auto", compile: bool = False, engine: str = "auto"
             ) -> tuple[dict[str, Any], list[D.Sample], torch.Tensor]:
    """Score a stored model (checkpoint, safetensors or ONNX) on a labelled source, on the
    `Classifier`'s own inference path: what `predict` would say about each image. Returns (the JSON
    result, the samples that were scored, in order, and their probabilities). `tta` None: as the
    model was scored when it trained. `model` may be a `Classifier` already loaded (then `device`,
    `amp`, `compile` and `engine` are its own)."""
    files, skipped = D.labelled_files(data, label_pattern)
    total = len(files) + len(skipped)  # every image of DATA, readable or not
    clf = model if isinstance(model, Classifier) else Classifier.load(model, device, amp, compile, engine,
                                                                       images=len(files))
    tta = clf.with_tta(tta)
    samples = D.samples_for(files, clf.classes)
    logits, labels, indices, failures = clf.score(samples, tta, batch_size, workers)
    skipped += [(samples[i].path, reason) for i, reason in failures]
    if not len(labels):  # every file was skipped, at scan time or when decoded
        first = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise D.DataError(f"none of the {total} images of {data} could be read{first}")
    result = compute_metrics(logits, labels, clf.classes)
    result["tta"] = tta
    result["tta_shift"] = clf.tta_shift if tta else 0
    result["checkpoint"] = clf.source
    result["precision"], result["precision_reason"] = clf.precision.name, clf.precision.reason
    result["engine"], result["engine_reason"] = clf.engine.name, clf.engine.reason
    result["skipped"] = [{"path": p, "reason": r} for p, r in skipped]
    scored = [samples[i] for i in indices.tolist()]
    probs = logits.softmax(1) if len(labels) else logits
    return result, scored, probs


def headline_lines(result: dict[str, Any], bold: bool = False) -> list[str]:
    """The figures a score leads with, a line each: balanced accuracy and macro-F1 first where the
    classes are imbalanced, accuracy first where not (the lead in bold for the report), and
    top-5 where there are more than `TOP5_HEADLINE_CLASSES` classes."""
    lead = result["headline"] == "balanced_accuracy"

    def figure(value: float, leads: bool) -> str:
        return f"**{value:.4f}**" if bold and leads else f"{value:.4f}"

    accuracy = f"accuracy: {figure(result['accuracy'], not lead)}"
    balanced = (f"balanced accuracy: {figure(result['balanced_accuracy'], lead)} (the mean per-class recall), "
                f"macro-F1 {result['macro_f1']:.4f}")
    lines = [f"{balanced}: the classes are imbalanced", accuracy] if lead else [accuracy, balanced]
    if "top5_accuracy" in result and len(result["classes"]) > TOP5_HEADLINE_CLASSES:
        lines.insert(1, f"top-5 accuracy: {result['top5_accuracy']:.4f}")
    return lines


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(result, indent=2))


# ---------------------------------------------------------------------------------------------
# Report


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(result: dict[str, Any], path: Path) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _plt()
    n = len(result["classes"])
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * n + 2), max(4, 0.6 * n + 2)))
    ConfusionMatrixDisplay(np.array(result["confusion_matrix"]), display_labels=result["classes"]).plot(
        ax=ax, colorbar=False, cmap="Blues", xticks_rotation=45 if n > 4 else "horizontal")
    ax.set_title(f"accuracy {result['accuracy']:.2%} on {result['num_images']} images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(metrics_csv: Path, path: Path) -> bool:
    if not metrics_csv.is_file():
        return False
    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False
    plt = _plt()
    ep = [int(r["epoch"]) for r in rows]
    val = lambda key: [float(r[key]) for r in rows]  # noqa: E731
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, val("train_loss"), "o-", label="train")
    a.plot(ep, val("val_loss"), "o-", label="validation")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.plot(ep, val("train_acc"), "o-", label="train")
    b.plot(ep, val("val_acc"), "o-", label="validation")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_mistakes(samples: Sequence[D.Sample], probs: torch.Tensor, classes: Sequence[str], path: Path,
                  count: int = 16) -> int:
    """The most confidently wrong images, with their true label and the prediction."""
    if not len(samples):
        return 0
    pred = probs.argmax(1)
    labels = torch.tensor([s.label for s in samples])
    wrong = (pred != labels).nonzero().flatten()
    if not len(wrong):
        return 0
    order = wrong[probs[wrong, pred[wrong]].argsort(descending=True)][:count].tolist()
    plt = _plt()
    cols = min(4, len(order))
    rows = math.ceil(len(order) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        img = D.read_images([samples[i].path], draft_size=256)[0]
        if not isinstance(img, str):
            img.thumbnail((256, 256))
            ax.imshow(img)
        ax.set_title(f"true {classes[labels[i]]}\npred {classes[pred[i]]} ({probs[i, pred[i]]:.0%})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return len(order)


def write_report(out: str | Path, result: dict[str, Any], samples: Sequence[D.Sample], probs: torch.Tensor,
                 metrics_csv: str | Path | None = None) -> Path:
    """confusion_matrix.png, training_curves.png (when there is a metrics.csv), mistakes.png and a
    report.md that ties them together. Returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes = result["classes"]
    grid = len(classes) <= CONFUSION_GRID_MAX
    if grid:
        plot_confusion(result, out / "confusion_matrix.png")
    curves = plot_curves(Path(metrics_csv), out / "training_curves.png") if metrics_csv else False
    shown = plot_mistakes(samples, probs, classes, out / "mistakes.png")
    tta = (" (flip TTA" + (f", shifted {result['tta_shift']} px" if result.get("tta_shift") else "") + ")"
           if result.get("tta") else "")
    lines = [f"# Evaluation of `{result.get('checkpoint', '')}`", "",
             *(f"- {line}" for line in headline_lines(result, bold=True)),
             f"- on {result['num_images']} images{tta}; loss: {result['loss']:.4f}",
             f"- skipped files: {len(result['skipped'])}"]
    lines += ["", "Per class, worst first:", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
              for c, m in sorted(result["per_class"].items(), key=lambda cm: (cm[1]["f1"], cm[1]["recall"]))]
    lines += ["", "## Confusion matrix", ""]
    if grid:
        lines.append("![confusion matrix](confusion_matrix.png)")
    else:
        lines += [f"{len(classes)} classes, too many for a grid: the most confused pairs (the full matrix is "
                  "`confusion_matrix` in evaluation.json).", "", "| true class | taken for | images | share of its class |",
                  "|---|---|---|---|"]
        lines += [f"| {m['true']} | {m['predicted']} | {m['count']} | {m['share']:.1%} |" for m in result["most_confused"]]
    if curves:
        lines += ["", "## Training curves", "", "![training curves](training_curves.png)"]
    if shown:
        lines += ["", f"## The {shown} most confidently wrong images", "", "![mistakes](mistakes.png)"]
    if result["skipped"]:
        lines += ["", "## Skipped files", ""] + [f"- `{s['path']}`: {s['reason']}" for s in result["skipped"]]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
