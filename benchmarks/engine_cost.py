"""What `--engine auto` weighs: the one-off cost of exporting a checkpoint to ONNX, the time a
timed choice adds to loading, and the per-image times of PyTorch and onnxruntime (batch 64,
alternating rounds, medians), for ResNet-18 at 224 px (random weights) and any checkpoints given.
From these follows `constants.ONNX_MIN_IMAGES`: the export pays for itself after
export seconds / (PyTorch - onnxruntime seconds per image) images.

    python benchmarks/engine_cost.py [CHECKPOINT ...] [--rounds 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from resnet.inference import runtime
from machine import cpu_description
from resnet.throughput import save_benchmark_checkpoint
from resnet.models import create_model
from resnet.inference.predict import Classifier


def random_resnet18(path: Path) -> Path:
    torch.manual_seed(0)
    return save_benchmark_checkpoint(path, create_model("resnet18", num_classes=1000), "resnet18", 224)


def seconds(load) -> tuple[Classifier, float]:
    t = time.perf_counter()
    clf = load()
    return clf, time.perf_counter() - t


def measure(checkpoint: Path, cache: Path, rounds: int) -> str:
    eager, load_s = seconds(lambda: Classifier.from_checkpoint(checkpoint, engine="torch"))
    onnx, export_s = seconds(lambda: Classifier.from_checkpoint(checkpoint, engine="onnxruntime", cache_dir=cache))
    _, again_s = seconds(lambda: Classifier.from_checkpoint(checkpoint, engine="onnxruntime", cache_dir=cache))
    auto, auto_s = seconds(lambda: Classifier.from_checkpoint(checkpoint, images=math.inf, cache_dir=cache))
    size = eager.transform.img_size
    x = torch.randint(0, 256, (64, 3, size, size), dtype=torch.uint8)
    per_image: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for _ in range(rounds + 1):  # the first round is a warm-up
        for name, clf in (("torch", eager), ("onnxruntime", onnx)):
            t = time.perf_counter()
            runtime.logits(clf.net, x, clf.mean, clf.std)
            per_image[name].append((time.perf_counter() - t) / len(x))
    med = {name: statistics.median(v[1:]) for name, v in per_image.items()}
    gain = med["torch"] - med["onnxruntime"]
    pays = f"{(export_s - again_s) / gain:,.0f} images" if gain > 0 else "never"
    return (f"| {checkpoint.name} @{size} | {med['torch'] * 1e3:.2f} | {med['onnxruntime'] * 1e3:.2f} | "
            f"{med['torch'] / med['onnxruntime']:.2f}x | {load_s:.2f} | {export_s:.1f} | {again_s:.2f} | "
            f"{auto_s:.2f}: {auto.engine.name} | {pays} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoints", nargs="*", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    print(f"CPU: {cpu_description()}\n")
    print("| model | PyTorch ms/img | onnxruntime ms/img | ratio | load, PyTorch s | first load with export s "
          "| load of the cached export s | auto load (timed) s | export pays after |")
    print("|---" * 9 + "|")
    with tempfile.TemporaryDirectory() as work:
        for checkpoint in [*a.checkpoints, random_resnet18(Path(work) / "resnet18-random.pt")]:
            print(measure(checkpoint, Path(work) / f"cache-{checkpoint.stem}", a.rounds), flush=True)


if __name__ == "__main__":
    main()
