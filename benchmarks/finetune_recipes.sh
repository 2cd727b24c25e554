#!/usr/bin/env bash
# Fine-tuning recipes side by side on a few photos a class, from one pretrained checkpoint: today's
# `finetune` preset (everything at one rate), fastai's fine_tune (the classifier alone for an epoch,
# then everything at rates falling by stage: --freeze-epochs 1 --layer-decay 0.4) and a linear
# probe (--freeze), each run alone, its final weights scored on a held-out folder
# (docs/benchmarks.md, "A few photos a class").
#
#   bash benchmarks/finetune_recipes.sh SOURCE.pt HELD_OUT OUT FOLDER... [-- EXTRA_FLAGS...]
#
# e.g. a ResNet-18 trained by `resnet train ../shared/datasets/imagenette-3k --max-minutes 10 --out
# /tmp/src` (width 0.5), fine-tuned on the dogs-cats-30 and -100 folders of
# benchmarks/imbalanced_folders.py, scored on catsdogs/train:
#   bash benchmarks/finetune_recipes.sh /tmp/src/last.pt ../shared/datasets/catsdogs/train /tmp/ft \
#       /tmp/imb/dogs-cats-30 /tmp/imb/dogs-cats-100 -- --width 0.5
set -euo pipefail
source=$1 held=$2 out=$3; shift 3
folders=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do folders+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
resnet=${RESNET:-.venv/bin/resnet}
declare -A recipes=([today]="" [fastai]="--freeze-epochs 1 --layer-decay 0.4" [probe]="--freeze")
mkdir -p "$out"
for folder in "${folders[@]}"; do
  for name in today fastai probe; do
    run=$out/$(basename "$folder")-$name
    # shellcheck disable=SC2086
    "$resnet" train "$folder" --out "$run" --pretrained "$source" ${recipes[$name]} "$@" > "$run.log" 2>&1
    "$resnet" evaluate "$run/last.pt" "$held" --json "$run.json" > /dev/null 2>&1
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'{sys.argv[2]:40} held out {r[\"accuracy\"]:.4f}')" \
      "$run.json" "$(basename "$folder") $name"
  done
done
