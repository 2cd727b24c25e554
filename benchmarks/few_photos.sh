#!/usr/bin/env bash
# What training from scratch reaches with a few photos a class: `resnet train FOLDER` with nothing
# else but EXTRA_FLAGS (the default plan: 10 epochs), one run after another alone on the machine,
# each run's final weights then scored on a held-out folder no training folder holds
# (docs/benchmarks.md, "A few photos a class").
#
#   python benchmarks/imbalanced_folders.py /tmp/imb        # makes the folders (symbolic links)
#   bash benchmarks/few_photos.sh /tmp/imb OUT [EXTRA_FLAGS...]
#   FOLDERS="dogs-cats-30 imagenette-30" bash benchmarks/few_photos.sh /tmp/imb OUT --max-minutes 2
#
# dogs-cats-N (N = 10, 30, 100, 300 a class) are scored on catsdogs/train (1,000 of each),
# imagenette-N (10, 30, 100, all ~240) on imagenette-val50 (50 of each of its 10 classes).
set -euo pipefail
folders=$1 out=$2; shift 2
datasets=${DATASETS:-$(cd "$(dirname "$0")/../.." && pwd)/shared/datasets}
resnet=${RESNET:-.venv/bin/resnet}
mkdir -p "$out"
names=${FOLDERS:-dogs-cats-10 dogs-cats-30 dogs-cats-100 dogs-cats-300 imagenette-10 imagenette-30 imagenette-100 \
imagenette-all}
for name in $names; do
  held=$folders/imagenette-val50; [[ $name == dogs-cats-* ]] && held=$datasets/catsdogs/train
  start=$(date +%s)
  "$resnet" train "$folders/$name" --out "$out/$name" "$@" > "$out/$name.log" 2>&1
  seconds=$(( $(date +%s) - start ))
  "$resnet" evaluate "$out/$name/last.pt" "$held" --json "$out/$name.json" > /dev/null 2>&1
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'{sys.argv[2]:16} held out {r[\"accuracy\"]:.4f} ({r[\"num_images\"]} images), trained in {sys.argv[3]} s')" \
    "$out/$name.json" "$name" "$seconds"
done
