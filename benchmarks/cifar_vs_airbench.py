"""CIFAR-10 in a time budget: `resnet train` with no flag but `--max-minutes` against airbench94
ported to the CPU (../shared/peers/airbench_cpu.py), one after the other on the same seeded
45,000 / 5,000 split, the same budget and the same CPU, nothing else running. Prints one JSON line
per run and a markdown table with the CPU's model and flags.

    python benchmarks/cifar_vs_airbench.py --minutes 10 [--work /tmp/cifar] [--skip-peer]

The split: 500 images a class drawn with random.Random(0) from the JPEG training set of
../shared/datasets/cifar10-train.tar.gz (extracted once into WORK/train), linked into WORK/tr and
WORK/held. Ours is scored by `resnet evaluate` on its final weights (last.pt: its best.pt was chosen
on these very images, and the peer reports its final weights too) both ways, with flip TTA (mirror
images averaged, as the model is scored when trained on small images and as the peer's figure is)
and without (`--no-tta`); the peer reports both. The peer's budget covers training only (its JPEG decoding is
cached and not counted); ours counts everything after the command starts: scanning, decoding,
planning and every epoch's validation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from machine import cpu_description

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"


def split(work: Path) -> tuple[Path, Path]:
    if not (work / "train").is_dir():
        with tarfile.open(SHARED / "datasets" / "cifar10-train.tar.gz") as tar:
            tar.extractall(work, filter="data")
    tr, held = work / "tr", work / "held"
    if not held.is_dir():
        rng = random.Random(0)
        for c in sorted(os.listdir(work / "train")):
            files = sorted(os.listdir(work / "train" / c))
            chosen = set(rng.sample(files, 500))
            for part in (tr, held):
                (part / c).mkdir(parents=True, exist_ok=True)
            for f in files:
                os.symlink(work / "train" / c / f, (held if f in chosen else tr) / c / f)
    return tr, held


def run(cmd: list[str]) -> tuple[str, float]:
    t = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return out, time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--work", default="/tmp/cifar")
    ap.add_argument("--skip-peer", action="store_true")
    a = ap.parse_args()
    tr, held = split(Path(a.work))
    rows = []
    if not a.skip_peer:
        out, _ = run([sys.executable, str(SHARED / "peers" / "airbench_cpu.py"), "--train", str(tr),
                         "--test", str(held), "--minutes", str(a.minutes)])
        r = json.loads(out.strip().splitlines()[-1])
        rows.append({"run": "airbench94 (CPU port)", "accuracy": r["test_acc_no_tta"], "tta": r["test_acc"],
                     "epochs": r["epochs"], "minutes": r["train_seconds"] / 60, "bf16": r["bf16"]})
        print(json.dumps(rows[-1]), flush=True)
    out_dir = Path(a.work) / f"ours-{a.minutes:g}min-{int(time.time())}"
    resnet = str(Path(sys.executable).with_name("resnet"))
    _, wall = run([resnet, "train", str(tr), "--val", str(held), "--max-minutes", str(a.minutes), "--out", str(out_dir)])
    config = json.loads((out_dir / "config.json").read_text())
    # Both ways, whichever the model is scored by (evaluation.json has its own): flip TTA and none.
    scores = {}
    for tta in ("--tta", "--no-tta"):
        run([resnet, "evaluate", str(out_dir / "last.pt"), str(held), tta, "--json", str(out_dir / f"{tta[2:]}.json")])
        scores[tta] = json.loads((out_dir / f"{tta[2:]}.json").read_text())["accuracy"]
    epochs = len((out_dir / "metrics.csv").read_text().splitlines()) - 1
    rows.append({"run": f"resnet train --max-minutes {a.minutes:g}", "accuracy": scores["--no-tta"],
                 "tta": scores["--tta"], "epochs": epochs, "minutes": wall / 60,
                 "bf16": config["precision"]["dtype"] == "bfloat16", "out": str(out_dir)})
    print(json.dumps(rows[-1]), flush=True)
    print(f"\n{cpu_description()}\n")
    print("| run | held-out accuracy | with flip TTA | epochs | minutes | bf16 |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['accuracy']:.2%} | {r['tta']:.2%} | {r['epochs']:g} | {r['minutes']:.1f} | "
              f"{'yes' if r['bf16'] else 'no'} |")


if __name__ == "__main__":
    main()
