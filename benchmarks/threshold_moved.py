"""What moving best.pt's threshold toward the rarer classes (`resnet.training.threshold`) does to
runs already made, on photos none of them saw: each run's final weights (last.pt, what best.pt
holds in an imbalanced run that took its last epoch) scored on HELD_OUT, then moved as a run
moves them (tau chosen on the run's own val.csv) and scored again. The runs' folders are read
only: each is copied first.

    python benchmarks/threshold_moved.py HELD_OUT RUN [RUN ...]

e.g. the 1:20 runs of docs/benchmarks.md ("Imbalanced folders") against catsdogs/train:
    python benchmarks/threshold_moved.py ../shared/datasets/catsdogs/train /tmp/x50/A20_s0 /tmp/x50/A20_s1
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from resnet.inference.evaluate import evaluate
from resnet.training.threshold import move_threshold


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("held_out")
    p.add_argument("runs", nargs="+", type=Path)
    a = p.parse_args()
    for run in a.runs:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp)
            for name in ("train.csv", "val.csv"):
                shutil.copy(run / name, copy / name)
            shutil.copy(run / "last.pt", copy / "best.pt")
            before, _, _ = evaluate(copy / "best.pt", a.held_out, workers=0)
            moved = move_threshold(copy / "best.pt", copy / "val.csv", copy / "train.csv", workers=0)
            after, _, _ = evaluate(copy / "best.pt", a.held_out, workers=0)
        print(f"{run}: tau {moved['tau']:.2f} (validation balanced accuracy {moved['val_balanced_acc']:.4f} -> "
              f"{moved['val_balanced_acc_adjusted']:.4f}); held out {before['balanced_accuracy']:.4f} -> "
              f"{after['balanced_accuracy']:.4f} ({100 * (after['balanced_accuracy'] - before['balanced_accuracy']):+.2f} "
              f"points; TTA {before['tta']})", flush=True)


if __name__ == "__main__":
    main()
