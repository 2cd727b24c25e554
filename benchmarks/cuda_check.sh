#!/bin/bash
# The CUDA paths on a GPU machine: the CUDA tests, then training / inference throughput for
# autocast off / bf16 / fp16, channels_last on / off and torch.compile, side by side in one run.
#
#     bash benchmarks/cuda_check.sh [OUT_DIR]
#
# Runs from a checkout with the package importable (installed, or PYTHONPATH=src).
set -u
out=${1:-${OUT:-/tmp}}
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
$py -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -15

bench() {  # label, then `resnet benchmark` arguments
    local label=$1; shift
    local r
    r=$($py -m resnet benchmark "$@" --device cuda --steps 15 --json 2>/dev/null) || { echo "| $label | failed |"; return; }
    echo "$r" >> "$out/cuda_bench.jsonl"
    $py -c "import json,sys; r=json.loads(sys.argv[1]); print(f\"| $label | {r['images_per_second']:.0f} |\")" "$r"
}
echo "| configuration (batch 256, 224 px) | images/s |"
echo "|---|---|"
for arch in resnet18 resnet50; do
    for amp in off bf16 fp16; do
        bench "$arch train, amp $amp, channels_last" train --arch $arch --batch-size 256 --amp $amp
    done
    bench "$arch train, amp bf16, contiguous" train --arch $arch --batch-size 256 --amp bf16 --no-channels-last
    bench "$arch train, amp bf16, channels_last, compile" train --arch $arch --batch-size 256 --amp bf16 --compile
    bench "$arch inference, amp bf16, channels_last" infer --arch $arch --batch-size 256 --amp bf16
done
