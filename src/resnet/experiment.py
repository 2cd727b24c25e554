"""The ResNet paper's degradation experiment (He et al. 2015, section 4.2, Figure 6), in one command.

Plain networks (no shortcuts) train worse as they get deeper: plain-56 ends with a higher training
error than plain-20. With identity shortcuts the deeper network trains at least as well: ResNet-56
at or below ResNet-20. Each network is trained with the same recipe (`--preset cifar-paper`: the
paper's optimiser, augmentation and step decay at the same fractions of the run) for the same
number of epochs, and its training and test error are recorded every epoch.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

from . import data as D
from .errors import ConfigError
from .models import CIFAR_DEPTHS
from .train import make_config, train
from .tuning import EXPERIMENT_EPOCH_OVERHEAD, EXPERIMENT_PLAN_FRACTION


def networks(depths: Sequence[int]) -> list[tuple[str, str]]:
    """(name, architecture) for each depth, plain then residual: plain20, resnet20, plain56..."""
    unknown = [d for d in depths if d not in CIFAR_DEPTHS]
    if unknown or not depths:
        raise ConfigError(f"--depths {','.join(map(str, depths))}: the paper's CIFAR depths are "
                          f"{', '.join(map(str, CIFAR_DEPTHS))}")
    return [(f"{kind}{depth}",) * 2 for depth in depths for kind in ("plain", "resnet")]


def subset(data: str | Path, val: str | Path | None, train_images: int | None, val_images: int | None,
           seed: int, out: Path) -> tuple[str, str]:
    """CSV files of the training and test images (a stratified, seeded subset when asked), written
    to `out`: every network then trains and is tested on exactly the same images."""
    split = D.discover(data, val, 0.1 if val is None else None, seed)
    train_s, test_s = split.train, split.val

    def take(samples: list[D.Sample], n: int | None) -> list[D.Sample]:
        if n is None or n >= len(samples):
            return samples
        keep, _ = D.stratified_split([s.label for s in samples], 1 - n / len(samples), seed)
        return [samples[i] for i in keep]

    out.mkdir(parents=True, exist_ok=True)
    D.write_samples(out / "train.csv", take(train_s, train_images), split.classes)
    D.write_samples(out / "test.csv", take(test_s, val_images), split.classes)
    return str(out / "train.csv"), str(out / "test.csv")


def plan_epochs(archs: Sequence[str], train_images: int, test_images: int, minutes: float,
                batch_size: int = 128) -> int:
    """Epochs that every network can have within `minutes`, from real training steps of each
    (`resnet benchmark train`'s code: forward, backward and the SGD step at 32 px); a test image
    costs about a third of a training one (forward only)."""
    from .bench import bench_model

    seconds = 0.0
    for arch in archs:
        ips = bench_model("train", arch, 32, batch_size, steps=3, device="cpu", amp="off")["images_per_second"]
        seconds += EXPERIMENT_EPOCH_OVERHEAD * (train_images + test_images / 3) / ips
    return max(1, math.floor(minutes * 60 * EXPERIMENT_PLAN_FRACTION / seconds))


def degradation(data: str | Path, out: str | Path, val: str | Path | None = None, depths: Sequence[int] = (20, 56),
                epochs: int | None = None, max_minutes: float | None = None, train_images: int | None = None,
                test_images: int | None = None, seed: int = 0, workers: int = 0, batch_size: int = 128,
                lr: float | None = None) -> dict[str, Any]:
    """Train plain and residual networks of each depth on the same images for the same epochs;
    write history.csv, summary.json and figure6.png to `out`. Returns the summary. `lr`: for batch
    256 (None: the paper's), the same for every network."""
    if (epochs is None) == (max_minutes is None):
        raise ConfigError("give --epochs N or --max-minutes M (one of them)")
    out = Path(out)
    nets = networks(depths)
    train_csv, test_csv = subset(data, val, train_images, test_images, seed, out)
    n_train = len(Path(train_csv).read_text().splitlines()) - 1
    n_test = len(Path(test_csv).read_text().splitlines()) - 1
    if epochs is None:
        epochs = plan_epochs([a for _, a in nets], n_train, n_test, max_minutes, batch_size)
        print(f"--max-minutes {max_minutes}: {epochs} epochs for each of {len(nets)} networks "
              f"({n_train} training, {n_test} test images)")
    history, summary = [], {}
    for name, arch in nets:
        cfg = make_config("cifar-paper", data=train_csv, val=test_csv, arch=arch, epochs=epochs,
                          out=str(out / name), seed=seed, workers=workers, batch_size=batch_size, lr=lr)
        started = time.monotonic()
        train(cfg)
        seconds = time.monotonic() - started
        with open(out / name / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            history.append({"network": name, "epoch": int(r["epoch"]),
                            "train_error": 1 - float(r["train_acc"]), "test_error": 1 - float(r["val_acc"])})
        last = history[-1]
        summary[name] = {"final_train_error": last["train_error"], "final_test_error": last["test_error"],
                         "epochs": len(rows), "seconds": round(seconds, 1)}
        print(f"{name}: training error {last['train_error']:.2%}, test error {last['test_error']:.2%} "
              f"after {len(rows)} epochs ({seconds / 60:.1f} min)")
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["network", "epoch", "train_error", "test_error"], lineterminator="\n")
        w.writeheader()
        w.writerows(history)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_figure6(history, [n for n, _ in nets], out / "figure6.png")
    return summary


def plot_figure6(history: list[dict], names: Sequence[str], path: Path) -> None:
    """The paper's Figure 6: plain networks left, ResNets right; training error dashed, test error
    bold, one colour per depth; error in % against epochs."""
    from .evaluate import _plt

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
    fig.suptitle("Training (dashed) and test (bold) error on CIFAR-10", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
