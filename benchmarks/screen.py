"""Screen recipe candidates by epochs, not minutes: each candidate's `resnet train` flags against
the first candidate's (today's default), at the same fixed epochs and seeds, scored on the same
held-out images; the accuracy at fixed epochs does not depend on the CPU, only the time does.
Runs one at a time (finished ones are read back, so an interrupted screen goes on), then prints
each candidate's accuracy per seed, its mean and its gain over the first.

    python benchmarks/screen.py ../shared/datasets/imagenette-3k --epochs 16 --seeds 0,1 \\
        --candidate base= --candidate resnet18d="--arch resnet18d" --out runs/screen
"""

from __future__ import annotations

import argparse
import csv
import shlex
import statistics
import subprocess
import sys
from pathlib import Path


def train(data: str, out: Path, epochs: int, seed: int, flags: list[str], extra: list[str]) -> dict:
    """One run (or the one already there): the held-out accuracy of its final weights (not of the
    best epoch's, which choosing on the same images flatters) and its seconds."""
    if not (out / "evaluation.json").is_file():
        cmd = [sys.executable, "-m", "resnet", "train", data, "--epochs", str(epochs), "--seed", str(seed),
               "--amp", "off", *extra, *flags, "--out", str(out)]
        with open(out.with_suffix(".log"), "w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {"accuracy": float(rows[-1]["val_acc"]), "seconds": sum(float(r["seconds"]) for r in rows)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--candidate", action="append", required=True, metavar="NAME=FLAGS",
                   help="a name and its `resnet train` flags; the first is the reference")
    p.add_argument("--extra", default="--val-split 0.2", help="flags every run gets")
    p.add_argument("--out", default="runs/screen")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    results: dict[str, list[dict]] = {}
    for spec in a.candidate:
        name, _, flags = spec.partition("=")
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        results[name] = [train(a.data, out / f"{name}-s{seed}", a.epochs, seed, shlex.split(flags),
                               shlex.split(a.extra)) for seed in seeds]
    reference = statistics.mean(r["accuracy"] for r in next(iter(results.values())))
    print(f"{a.data}, {a.epochs} epochs, seeds {a.seeds}: held-out accuracy")
    for name, runs in results.items():
        accs = [r["accuracy"] for r in runs]
        mean = statistics.mean(accs)
        print(f"  {name:24} " + "  ".join(f"{x:.4f}" for x in accs) + f"   mean {mean:.4f}  "
              f"({100 * (mean - reference):+.2f} points)  {statistics.mean(r['seconds'] for r in runs):.0f} s a run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
