"""Inference speed of one model on every engine and in every precision it can run in, at several
batch sizes, through the one inference path (`runtime.logits`, the `Classifier`'s: uint8 pixels in,
normalisation included): PyTorch (fp32, and bf16 autocast where the CPU has bf16 kernels),
onnxruntime (fp32 export, int8 export) and OpenVINO (the same files: f32, bf16 where the CPU has
bf16 kernels, int8), and what `--engine auto` takes for an fp32 and for a bf16 model. Rounds
alternate between all of them and the medians are printed as a markdown table, with the CPU's
model and flags.

    python benchmarks/engines.py [--arch resnet18] [--width 1.0] [--img-size 224]
                                 [--batch-sizes 1,8,64] [--calib DIR] [--rounds 3] [--steps 4]

Weights are random (speed does not depend on them). int8 is calibrated on `--calib` images when
given (photos give realistic activation ranges), else on random ones.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnet import Classifier, create_model
from resnet.inference import policy, runtime
from machine import cpu_description
from resnet.throughput import save_benchmark_checkpoint
from resnet.inference.exports import export_onnx, quantize_onnx, sample_images


def contenders(ckpt: Path, fp32: Path, int8: Path, cache: Path) -> dict[str, Classifier]:
    bf16 = policy.cpu_has_bf16()
    out = {"pytorch fp32": Classifier.from_checkpoint(ckpt, device="cpu", amp="off", engine="torch")}
    if bf16:
        out["pytorch bf16"] = Classifier.from_checkpoint(ckpt, device="cpu", amp="bf16", engine="torch")
    out["onnxruntime fp32"] = Classifier.from_onnx(fp32, amp="off", engine="onnxruntime")
    out["openvino f32"] = Classifier.from_onnx(fp32, amp="off", engine="openvino")
    if bf16:
        out["openvino bf16"] = Classifier.from_onnx(fp32, amp="bf16", engine="openvino")
    out["onnxruntime int8"] = Classifier.from_onnx(int8, amp="off", engine="onnxruntime")
    out["openvino int8"] = Classifier.from_onnx(int8, amp="off", engine="openvino")
    # What a long-lived Classifier (serve, benchmark infer) takes by itself, for each precision.
    out["auto, fp32 model"] = Classifier.from_checkpoint(ckpt, device="cpu", amp="off", images=math.inf, cache_dir=cache)
    if bf16:
        out["auto, bf16 model"] = Classifier.from_checkpoint(ckpt, device="cpu", amp="bf16", images=math.inf,
                                                             cache_dir=cache)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-sizes", default="1,8,64")
    p.add_argument("--calib", help="a folder of photos to calibrate int8 on")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="timed batches per round (median taken)")
    a = p.parse_args()
    sizes = [int(b) for b in a.batch_sizes.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = save_benchmark_checkpoint(work / "model.pt", create_model(a.arch, num_classes=1000, width=a.width),
                                         a.arch, a.img_size, a.width)
        fp32 = export_onnx(ckpt, work / "model.onnx")
        calib = a.calib
        if calib is None:
            calib = work / "calib"
            calib.mkdir()
            rng = np.random.default_rng(0)
            for i in range(32):
                Image.fromarray(rng.integers(0, 256, (a.img_size + 32, a.img_size + 64, 3), dtype=np.uint8)).save(
                    calib / f"{i}.png")
        int8 = quantize_onnx(fp32, work / "model.int8.onnx", sample_images(calib, 128, "calibrate"))
        clfs = contenders(ckpt, fp32, int8, work / "cache")
        times = {(name, b): [] for name in clfs for b in sizes}
        batches = {b: torch.randint(0, 256, (b, 3, a.img_size, a.img_size), dtype=torch.uint8) for b in sizes}
        for clf in clfs.values():  # warm-up: first runs pay for kernel selection and shape compilation
            for x in batches.values():
                runtime.logits(clf.net, x, clf.mean, clf.std)
        for _ in range(a.rounds):
            for name, clf in clfs.items():
                for b, x in batches.items():
                    # onnxruntime's threads spin for a while after each run, waiting for more work:
                    # on 2 cores that would slow whatever runs next.
                    time.sleep(0.3)
                    for _ in range(a.steps):
                        t = time.perf_counter()
                        runtime.logits(clf.net, x, clf.mean, clf.std)
                        times[name, b].append(time.perf_counter() - t)
    print(cpu_description())
    print(f"{a.arch} width {a.width:g} @{a.img_size}, {a.rounds} alternating rounds of {a.steps} batches, "
          "median images per second (x: against PyTorch fp32 at the same batch size)")
    print("| engine, precision | " + " | ".join(f"batch {b}" for b in sizes) + " | auto's reason |")
    print("|---|" + "---|" * len(sizes) + "---|")
    base = {b: b / statistics.median(times["pytorch fp32", b]) for b in sizes}
    for name, clf in clfs.items():
        cells = []
        for b in sizes:
            ips = b / statistics.median(times[name, b])
            cells.append(f"{ips:.1f} ({ips / base[b]:.2f}x)")
        why = f"{clf.engine.name}, {clf.precision.name}: {clf.engine.reason}" if name.startswith("auto") else ""
        print(f"| {name} | " + " | ".join(cells) + f" | {why} |")


if __name__ == "__main__":
    main()
