"""Eval-pipeline throughput, ours against torchvision's ImageFolder + the tutorial's PREPROCESS,
side by side in one run (alternating, best of N each), at the same worker count.

    python benchmarks/data_vs_torchvision.py DIR [--workers 0 2] [--repeats 2]

Needs the torchvision peer venv (../shared/peers/setup-torchvision-peer.sh, default /tmp/tv-peer).
Ours runs through `resnet benchmark data`, the same code path as training and evaluation. Cold:
every JPEG is decoded. Warm cache: `--cache` after one pass has filled the decoded cache. Ours hands
over uint8 batches (training and evaluation normalise on their device); the last two columns
count normalising on the CPU as well, as torchvision's pipeline does in its workers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

PEER = """
import sys, time, tvpeer, torch
import torchvision.datasets as dt
from torchvision import transforms
root, workers = sys.argv[1], int(sys.argv[2])
P = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
dl = torch.utils.data.DataLoader(dt.ImageFolder(root, transform=P), batch_size=64, num_workers=workers)
t = time.perf_counter(); n = 0
for x, y in dl:
    n += len(x)
print(n / (time.perf_counter() - t))
"""


def peer(python: str, root: str, workers: int) -> float:
    out = subprocess.run([python, "-c", PEER, root, str(workers)], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def ours(root: str, workers: int, cache_dir: str | None, normalize: bool = False) -> float:
    cmd = [sys.executable, "-m", "resnet", "benchmark", "data", root, "--workers", str(workers),
           "--img-size", "224", "--json"] + (["--normalize"] if normalize else [])
    if cache_dir:
        cmd += ["--cache", "--cache-dir", cache_dir]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["images_per_second"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--peer-python", default="/tmp/tv-peer/bin/python")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache_dir:
        ours(a.root, 0, cache_dir)  # fill the decoded cache once
        print("| workers | torchvision | ours cold | ours warm | cold ratio | warm ratio |"
              " cold, CPU normalising | warm, CPU normalising |")
        print("|---|---|---|---|---|---|---|---|")
        for w in a.workers:
            runs: dict[str, list[float]] = {k: [] for k in ("tv", "cold", "warm", "cold_n", "warm_n")}
            for _ in range(a.repeats):  # alternate, so drift in machine speed hits all alike
                runs["tv"].append(peer(a.peer_python, a.root, w))
                runs["cold"].append(ours(a.root, w, None))
                runs["warm"].append(ours(a.root, w, cache_dir))
                runs["cold_n"].append(ours(a.root, w, None, normalize=True))
                runs["warm_n"].append(ours(a.root, w, cache_dir, normalize=True))
            b = {k: max(v) for k, v in runs.items()}
            t = b["tv"]
            print(f"| {w} | {t:.0f} | {b['cold']:.0f} | {b['warm']:.0f} | {b['cold'] / t:.2f}x | {b['warm'] / t:.1f}x"
                  f" | {b['cold_n']:.0f} ({b['cold_n'] / t:.2f}x) | {b['warm_n']:.0f} ({b['warm_n'] / t:.1f}x) |",
                  flush=True)


if __name__ == "__main__":
    main()
