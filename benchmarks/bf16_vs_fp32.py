"""Is bf16 autocast faster than fp32 on this CPU? Training steps (forward + backward, as
`--amp auto` times them) and inference batches (BatchNorm folded, as every `Classifier` runs) of the
networks the presets train, in both precisions, rounds alternating, medians printed with the CPU's
model and flags. What `policy.cpu_prefers_bf16` (the untimed rule) rests on.

    python benchmarks/bf16_vs_fp32.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from resnet import create_model
from resnet.inference import policy, runtime
from resnet.device import pick_device
from machine import cpu_description
from resnet.training.budget import step_seconds

# (arch, width, crop px, batch): the default preset's network at its final and evaluation sizes,
# full-width ResNet-18 and ResNet-50 at 224 px, the paper's ResNet-20 at 32 px.
CASES = (("resnet18", 0.5, 96, 64), ("resnet18", 0.5, 112, 64), ("resnet18", 1.0, 224, 32),
         ("resnet50", 1.0, 224, 16), ("resnet20", 1.0, 32, 128))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    if not policy.cpu_has_bf16():
        raise SystemExit(f"{cpu_description()}\nthis CPU has no bf16 kernels: bf16 would be emulated")
    device = pick_device("cpu")
    print(cpu_description())
    print(f"{a.rounds} alternating rounds, medians; each timing the fastest of 3 batches after one untimed")
    print("| network | batch | train step fp32 | bf16 | bf16 speed-up | inference fp32 | bf16 | bf16 speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for arch, width, size, batch in CASES:
        model = create_model(arch, num_classes=10, width=width).to(memory_format=torch.channels_last)
        net = runtime.TorchNet.prepare(create_model(arch, num_classes=10, width=width), device, None, True)
        train: dict[str, list[float]] = {"fp32": [], "bf16": []}
        infer: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(a.rounds):
            for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                train[name].append(step_seconds(model, size, device, True, batch, dtype))
                net.dtype = dtype
                infer[name].append(runtime.net_seconds(net, size, batch))
        t = {k: statistics.median(v) * 1e3 for k, v in train.items()}
        i = {k: statistics.median(v) * 1e3 for k, v in infer.items()}
        print(f"| {arch} width {width:g} @ {size} px | {batch} | {t['fp32']:.0f} ms | {t['bf16']:.0f} ms | "
              f"{t['fp32'] / t['bf16']:.2f}x | {i['fp32']:.0f} ms | {i['bf16']:.0f} ms | {i['fp32'] / i['bf16']:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
