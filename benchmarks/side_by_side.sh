#!/usr/bin/env bash
# Two training runs side by side, one core each (OMP_NUM_THREADS=1, taskset), on the same folder,
# budget and seed, each then scored on a held-out folder: how one choice compares with another at
# the same compute (docs/benchmarks.md, "Imbalanced folders", "The budget's own plan").
#
#   bash benchmarks/side_by_side.sh TRAIN HELD_OUT OUT MINUTES SEED "A_FLAGS" "B_FLAGS" [A_RESNET B_RESNET]
#
# HELD_OUT `val.csv`: each run's own held-out part (OUT/a/val.csv, the same images for both: the
# split is seeded), on which only last.pt is an honest score (best.pt was chosen on it).
# e.g. the 1:20 dogs vs. cats folder of benchmarks/imbalanced_folders.py against catsdogs/train:
#   bash benchmarks/side_by_side.sh /tmp/imb/dogs-cats-1to20 ../shared/datasets/catsdogs/train \
#       /tmp/cb 10 0 "--class-balance none" "--class-balance logit-adjust"
# A_RESNET / B_RESNET: the `resnet` command of each side (default: .venv/bin/resnet), so that
# another checkout's code (today's default) can run beside this one.
set -euo pipefail
train=$1 held=$2 out=$3 minutes=$4 seed=$5 a_flags=$6 b_flags=$7
a_bin=${8:-.venv/bin/resnet} b_bin=${9:-.venv/bin/resnet}
mkdir -p "$out"
run() {  # core, bin, name, flags
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 taskset -c "$1" "$2" train "$train" --out "$out/$3" --max-minutes "$minutes" --seed "$seed" \
    --workers 0 $4 > "$out/$3.log" 2>&1
}
run 0 "$a_bin" a "$a_flags" &
run 1 "$b_bin" b "$b_flags" &
wait
for side in a b; do
  bin=$a_bin; [ "$side" = b ] && bin=$b_bin
  data=$held; [ "$held" = val.csv ] && data=$out/$side/val.csv
  "$bin" evaluate "$out/$side/best.pt" "$data" --json "$out/$side.best.json" > /dev/null 2>&1 &
  "$bin" evaluate "$out/$side/last.pt" "$data" --json "$out/$side.last.json" > /dev/null 2>&1
  wait
done
python3 - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for side in "ab":
    for which in ("best", "last"):
        r = json.loads((out / f"{side}.{which}.json").read_text())
        recall = {c: round(m["recall"], 3) for c, m in r["per_class"].items()}
        bal = sum(recall.values()) / len(recall)
        print(f"{side} {which}.pt: balanced accuracy {bal:.4f}, accuracy {r['accuracy']:.4f}, recall {recall}")
    print(f"{side}: {(out / f'{side}.log').read_text().strip().splitlines()[-1]}")
EOF
