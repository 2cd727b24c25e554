"""Screen recipe candidates by epochs, not minutes: each candidate's `resnet train` flags against
the first candidate's (today's default), at the same fixed epochs and seeds, scored on the same
held-out images; the accuracy at fixed epochs does not depend on the CPU, only the time does.
Runs one at a time, or `--parallel N` at a time where the device has room (a GPU trains these
small networks far below its capacity); finished ones are read back and a run cut or stopped
part-way resumes from its last.pt, so an interrupted screen goes on. Then prints each candidate's
accuracy per seed, its mean and its gain over the first. A candidate's flags come last, so `--epochs` among them overrides the screen's (to compare sizes at
equal compute: fewer epochs of a larger network). `--stop-after S` ends runs still going after S
seconds; they are reported with the epochs they had done, marked as cut.

    python benchmarks/screen.py ../shared/datasets/imagenette-3k --epochs 16 --seeds 0,1 \\
        --candidate base= --candidate resnet18d="--arch resnet18d" --out runs/screen
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def train(data: str, out: Path, epochs: int, seed: int, flags: list[str], extra: list[str],
          deadline: float) -> dict:
    """One run (or the one already there): the held-out accuracy of its final weights (not of the
    best epoch's, which choosing on the same images flatters), its seconds and epochs, and whether
    `deadline` (a `time.monotonic()`) cut it. A run cut before goes on from its last.pt."""
    log_file = out.parent / f"{out.name}.log"  # not with_suffix: names hold dots ("w0.75-s0")
    done = (out / "evaluation.json").is_file()
    cut = not done and time.monotonic() >= deadline  # not (or no further) started
    if not done and not cut:
        cmd = [sys.executable, "-m", "resnet", "train", data, "--epochs", str(epochs), "--seed", str(seed),
               "--amp", "off", *extra, *flags, "--out", str(out), "--resume", "auto"]
        with open(log_file, "a") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                cut = True
        if proc.returncode and not cut:  # reported, so that one failed run does not lose the others
            return {"accuracy": float("nan"), "epochs": 0, "cut": False, "seconds": 0.0,
                    "failed": f"exit {proc.returncode}, see {log_file}"}
    rows = []
    if (out / "metrics.csv").is_file():
        with open(out / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    return {"accuracy": float(rows[-1]["val_acc"]) if rows else float("nan"), "epochs": len(rows), "cut": cut,
            "seconds": sum(float(r["seconds"]) for r in rows)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--candidate", action="append", required=True, metavar="NAME=FLAGS",
                   help="a name and its `resnet train` flags; the first is the reference")
    p.add_argument("--extra", default="--val-split 0.2", help="flags every run gets")
    p.add_argument("--out", default="runs/screen")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--stop-after", type=float, default=float("inf"), metavar="S",
                   help="end the runs still going after S seconds")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + a.stop_after
    with ThreadPoolExecutor(a.parallel) as pool:  # in order: the first candidates are the most wanted
        futures = {name: [pool.submit(train, a.data, out / f"{name}-s{seed}", a.epochs, seed, shlex.split(flags),
                                      shlex.split(a.extra), deadline) for seed in seeds]
                   for name, _, flags in (spec.partition("=") for spec in a.candidate)}
        results = {name: [f.result() for f in fs] for name, fs in futures.items()}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    reference = statistics.mean(r["accuracy"] for r in next(iter(results.values())))
    print(f"{a.data}, {a.epochs} epochs, seeds {a.seeds}: held-out accuracy")
    for name, runs in results.items():
        accs = [r["accuracy"] for r in runs]
        mean = statistics.mean(accs)
        notes = ", cut at " + "/".join(str(r["epochs"]) for r in runs) + " epochs" if any(r["cut"] for r in runs) else ""
        notes += "".join(f", failed: {r['failed']}" for r in runs if "failed" in r)
        print(f"  {name:24} " + "  ".join(f"{x:.4f}" for x in accs) + f"   mean {mean:.4f}  "
              f"({100 * (mean - reference):+.2f} points)  {statistics.mean(r['seconds'] for r in runs):.0f} s a run"
              + notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
