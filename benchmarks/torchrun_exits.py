"""A finished 2-rank torchrun job must exit 0, every time: schedulers read that code. Runs the
same small job N times in a row and counts the exit codes (a rank that aborted at teardown once
failed 1 job in 14).

    python benchmarks/torchrun_exits.py --runs 50
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_images(root: Path) -> Path:
    """Two classes of 16 small images each: enough for 2 ranks and a held-out quarter."""
    rng = np.random.default_rng(0)
    for c, base in (("a", 60), ("b", 190)):
        (root / c).mkdir(parents=True)
        for i in range(16):
            pixels = np.clip(base + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args()
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    codes: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_images(Path(tmp) / "data")
        for i in range(a.runs):
            t = time.monotonic()
            r = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "resnet", "train", str(data),
                                "--arch", "resnet20", "--img-size", "24", "--batch-size", "8", "--workers", "0",
                                "--epochs", str(a.epochs), "--out", f"{tmp}/run{i}"], capture_output=True, text=True)
            codes[r.returncode] += 1
            print(f"run {i + 1}/{a.runs}: exit {r.returncode} ({time.monotonic() - t:.1f} s)", flush=True)
            if r.returncode:
                print(r.stderr[-2000:], flush=True)
    print(f"exit codes over {a.runs} runs: {dict(codes)}")
    return 0 if set(codes) == {0} else 1


if __name__ == "__main__":
    sys.exit(main())
