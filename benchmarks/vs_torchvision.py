"""ResNet-18 at 224 px, ours against torchvision's own model, side by side in one run: training
steps (batch 32: forward, backward, SGD) and inference (batch 64). Rounds alternate between all
configurations and the medians are printed as a markdown table, with the CPU's model and flags.

    python benchmarks/vs_torchvision.py [--rounds 3] [--steps 4] [--peer-python /tmp/tv-peer/bin/python]

torchvision runs in the peer venv (../shared/peers/setup-torchvision-peer.sh), configured by hand as
its users would: the default (fp32, NCHW), channels_last, and channels_last with bf16 autocast (only
on CPUs whose oneDNN has bf16 kernels: elsewhere it is emulated, ~15x slower, and skipped). Ours is
`resnet benchmark train|infer` with its defaults: what the tool chooses on this machine (inference
is the `Classifier`'s path, from uint8 pixels, normalisation included, with the engine a long-lived
`Classifier` chooses by timing; `--engine torch` and `--compile` are shown beside it). Ours keeps
freed memory in glibc's heap (`device.keep_freed_memory`); torchvision's channels_last fp32 is run
a second time with the same allocator settings (glibc's environment variables), so the table shows
what that part of the difference is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import os
import subprocess
import sys

from resnet.inference import policy
from machine import cpu_description
from resnet.constants import HEAP_KEEP_BYTES

PEER = """
import json, sys, time, tvpeer, torch, torchvision
task, layout, amp, batch, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
model = torchvision.models.resnet18().to(memory_format=fmt)
x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if amp == "bf16" else torch.no_grad
if task == "train":
    y = torch.randint(0, 1000, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    def step():
        with (torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else torch.enable_grad()):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
else:
    model.eval()
    def step():
        with torch.inference_mode(), cast():
            model(x)
for _ in range(2):
    step()
t = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"images_per_second": batch * steps / (time.perf_counter() - t)}))
"""

BATCH = {"train": 32, "infer": 64}
HEAP_KEPT = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(HEAP_KEEP_BYTES)}  # keep_freed_memory's mallopt


def peer(python: str, task: str, layout: str, amp: str, steps: int, heap_kept: bool) -> float:
    env = {**os.environ, **HEAP_KEPT} if heap_kept else None
    out = subprocess.run([python, "-c", PEER, task, layout, amp, str(BATCH[task]), str(steps)],
                         check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_second"]


def ours(task: str, steps: int, *options: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "resnet", "benchmark", task, "--arch", "resnet18", "--img-size", "224",
                          "--batch-size", str(BATCH[task]), "--steps", str(steps), "--json", *options],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--peer-python", default="/tmp/tv-peer/bin/python")
    a = ap.parse_args()
    amps = ["fp32", "bf16"] if policy.cpu_has_bf16() else ["fp32"]
    peers = [("NCHW", "fp32", False)] + [("channels_last", amp, False) for amp in amps] + [("channels_last", "fp32", True)]
    results: dict[tuple[str, str], list[float]] = {}
    chosen = {}
    for rnd in range(a.rounds):
        for task in ("train", "infer"):
            for layout, amp, heap_kept in peers:
                if task == "infer" and layout == "NCHW":
                    continue  # the manual inference configs are the channels_last ones
                name = f"torchvision {layout} {amp}" + (" + heap kept" if heap_kept else "")
                results.setdefault((task, name), []).append(peer(a.peer_python, task, layout, amp, a.steps, heap_kept))
            r = ours(task, a.steps)
            chosen[task] = f"{r['amp']}: {r['precision_reason']}" + (
                f"; engine {r['engine']}: {r['engine_reason']}" if "engine" in r else "")
            results.setdefault((task, "ours"), []).append(r["images_per_second"])
            if task == "infer":  # the default's alternatives, each pinned: PyTorch eager, and compiled
                for option in (["--engine", "torch"], ["--compile"]):  # with freezing (warm-up pays it)
                    results.setdefault((task, f"ours {' '.join(option)}"), []).append(
                        ours(task, a.steps, *option)["images_per_second"])
        print(f"round {rnd + 1}/{a.rounds} done", file=sys.stderr)
    print(f"CPU: {cpu_description()}\n")
    names = list(dict.fromkeys(name for _, name in results))
    print("| ResNet-18 @224 | " + " | ".join(names) + " | ours / best of torchvision | ours / torchvision + heap kept |")
    print("|---" * (len(names) + 3) + "|")
    for task in ("train", "infer"):
        row = {name: statistics.median(v) for (t, name), v in results.items() if t == task}
        best = max(v for name, v in row.items() if name.startswith("torchvision") and not name.endswith("heap kept"))
        kept = row["torchvision channels_last fp32 + heap kept"]
        cells = [f"{row[name]:.1f}" if name in row else "—" for name in names]
        label = "train step, batch 32, img/s" if task == "train" else "inference, batch 64, img/s"
        ratios = [", ".join(f"{row[n] / ref:.2f}x" for n in row if n.startswith("ours")) for ref in (best, kept)]
        print(f"| {label} | " + " | ".join(cells) + f" | {ratios[0]} | {ratios[1]} |")
    for task, why in chosen.items():
        print(f"\nours, {task}: {why}")


if __name__ == "__main__":
    main()
