"""What keeping freed memory in glibc's heap (`device.keep_freed_memory`, done by every CPU run)
is worth: `resnet benchmark` with it and, in the same script, with it switched off, for training
steps and PyTorch inference at several sizes. Rounds alternate; medians of img/s, with each
process's minor page faults (start-up included) and peak memory.

    python benchmarks/heap_kept.py [--rounds 2] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from machine import cpu_description

# Runs `resnet benchmark ARGS` with keep_freed_memory switched off (argv[1] == "off") or as it is,
# then prints its JSON line followed by the process's minor faults and peak memory.
RUN = """
import json, resource, sys
from resnet import cli, device
if sys.argv[1] == "off":
    device.keep_freed_memory = lambda: False
code = cli.main(sys.argv[2:])
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"faults": usage.ru_minflt, "peak_mb": usage.ru_maxrss / 1024}))
sys.exit(code)
"""

WORK = {
    "ResNet-18 @224 train, batch 32": "train --arch resnet18 --img-size 224 --batch-size 32",
    "ResNet-50 @224 train, batch 32": "train --arch resnet50 --img-size 224 --batch-size 32",
    "default preset (width 0.5 @96) train, batch 64": "train --arch resnet18 --width 0.5 --img-size 96 --batch-size 64",
    "ResNet-18 @224 inference (PyTorch), batch 64": "infer --arch resnet18 --img-size 224 --batch-size 64 --engine torch",
}


def run(mode: str, work: str, steps: int) -> dict:
    args = ["benchmark", *work.split(), "--steps", str(steps), "--json"]
    out = subprocess.run([sys.executable, "-c", RUN, mode, *args], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}).stdout.strip().splitlines()
    return {**json.loads(out[-2]), **json.loads(out[-1])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    results: dict[tuple[str, str], list[dict]] = {}
    for rnd in range(a.rounds):
        for name, work in WORK.items():
            for mode in ("off", "kept"):
                results.setdefault((name, mode), []).append(run(mode, work, a.steps))
        print(f"round {rnd + 1}/{a.rounds} done", file=sys.stderr)
    print(f"CPU: {cpu_description()}\n")
    print("| work | img/s, glibc's default | img/s, heap kept | ratio | page faults, default / kept | peak MB, default / kept |")
    print("|---|---|---|---|---|---|")
    for name in WORK:
        med = {mode: {key: statistics.median(r[key] for r in results[(name, mode)])
                      for key in ("images_per_second", "faults", "peak_mb")} for mode in ("off", "kept")}
        off, kept = med["off"], med["kept"]
        print(f"| {name} | {off['images_per_second']:.1f} | {kept['images_per_second']:.1f} | "
              f"{kept['images_per_second'] / off['images_per_second']:.2f}x | "
              f"{off['faults']:,.0f} / {kept['faults']:,.0f} | {off['peak_mb']:,.0f} / {kept['peak_mb']:,.0f} |")


if __name__ == "__main__":
    main()
