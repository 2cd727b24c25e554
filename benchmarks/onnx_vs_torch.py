"""Inference speed of one model in every way it can run, through the one inference path
(`runtime.logits`, the `Classifier`'s): PyTorch in fp32, PyTorch under bf16 autocast (where the CPU
has bf16 kernels), ONNX fp32 and static int8 ONNX, both on onnxruntime. Rounds alternate between
them and the medians are printed, with the CPU's model and flags.

    python benchmarks/onnx_vs_torch.py [--arch resnet18] [--width 1.0] [--img-size 224]
                                       [--batch-size 64] [--calib DIR] [--rounds 5]

Weights are random (speed does not depend on them). int8 is calibrated on `--calib` images when
given (photos give realistic activation ranges), else on random ones.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnet import Classifier, create_model, policy, runtime
from resnet.bench import cpu_description, save_benchmark_checkpoint
from resnet.export import export_onnx, quantize_onnx


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--calib", help="a folder of photos to calibrate int8 on")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_benchmark_checkpoint(Path(tmp) / "model.pt", create_model(a.arch, num_classes=1000, width=a.width),
                                         a.arch, a.img_size, a.width)
        fp32 = export_onnx(ckpt, Path(tmp) / "model.onnx")
        calib = a.calib
        if calib is None:
            calib = Path(tmp) / "calib"
            calib.mkdir()
            rng = np.random.default_rng(0)
            for i in range(32):
                Image.fromarray(rng.integers(0, 256, (a.img_size + 32, a.img_size + 64, 3), dtype=np.uint8)).save(
                    calib / f"{i}.png")
        int8 = quantize_onnx(fp32, Path(tmp) / "model.int8.onnx", calib)
        contenders = {"pytorch": Classifier.from_checkpoint(ckpt, device="cpu", amp="off", engine="torch")}
        if policy.cpu_has_bf16():
            contenders["pytorch bf16"] = Classifier.from_checkpoint(ckpt, device="cpu", amp="bf16", engine="torch")
        contenders |= {"onnx fp32": Classifier.from_onnx(fp32), "onnx int8": Classifier.from_onnx(int8)}
        x = torch.randint(0, 256, (a.batch_size, 3, a.img_size, a.img_size), dtype=torch.uint8)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for clf in contenders.values():  # warm-up: first runs pay for kernel selection
            runtime.logits(clf.net, x, clf.mean, clf.std)
        for _ in range(a.rounds):
            for name, clf in contenders.items():
                # onnxruntime's threads spin for a while after each run, waiting for more work: on
                # 2 cores that would slow whatever runs next (PyTorch measured ~2x slower after it).
                time.sleep(0.5)
                t = time.perf_counter()
                runtime.logits(clf.net, x, clf.mean, clf.std)
                times[name].append(time.perf_counter() - t)
    print(cpu_description())
    print(f"{a.arch} width {a.width:g} @{a.img_size}, batch {a.batch_size}, {a.rounds} alternating rounds, median img/s")
    base = a.batch_size / statistics.median(times["pytorch"])
    print("| path | precision | img/s | vs PyTorch |")
    print("|---|---|---|---|")
    for name, clf in contenders.items():
        ips = a.batch_size / statistics.median(times[name])
        print(f"| {name} | {clf.describe()['precision']} | {ips:.1f} | {ips / base:.2f}x |")


if __name__ == "__main__":
    main()
