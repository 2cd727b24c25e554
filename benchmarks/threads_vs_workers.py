"""Training throughput by intra-op threads and loader workers, when images are decoded every
epoch (no decoded cache: a data set too large for it). Each configuration trains one epoch of the
default preset on DIR; rounds alternate between configurations and the medians are printed, with
the CPU's model and flags.

    python benchmarks/threads_vs_workers.py DIR [--configs 2x1 1x1 2x0 1x2] [--rounds 2]

A configuration `TxW` is T intra-op threads (OMP_NUM_THREADS) and W loader workers.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_description


def one_epoch(data: str, threads: int, workers: int, out: Path) -> float:
    subprocess.run([sys.executable, "-m", "resnet", "train", data, "--epochs", "1", "--no-cache", "--val-split", "0",
                    "--workers", str(workers), "--out", str(out)],
                   check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    with open(out / "metrics.csv") as f:
        return float(next(csv.DictReader(f))["images_per_second"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--configs", nargs="+", default=["2x1", "1x1", "2x0", "1x2"])
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    results: dict[str, list[float]] = {c: [] for c in a.configs}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(a.rounds):
            for config in a.configs:
                threads, workers = (int(v) for v in config.split("x"))
                results[config].append(one_epoch(a.data, threads, workers, Path(tmp) / f"{config}-{rnd}"))
            print(f"round {rnd + 1}/{a.rounds} done", file=sys.stderr)
    print(f"CPU: {cpu_description()} ({os.cpu_count()} cores)\n")
    print("| intra-op threads x loader workers | training img/s (median) |\n|---|---|")
    for config, values in results.items():
        print(f"| {config} | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
