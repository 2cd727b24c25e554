#!/bin/bash
# Recipe screening by epochs on a lent GPU machine (issue: more accuracy per epoch): accuracy at
# fixed epochs does not depend on the device, and one GPU runs these small networks several at a
# time, so a screen that takes this project's 2-core CPU a day takes minutes. In parallel:
#  - tests/test_cuda.py (the CUDA paths);
#  - CIFAR-10 on the seeded 45,000 / 5,000 split of benchmarks/cifar_vs_airbench.py: today's
#    default at 10 epochs, the widths at 10 epochs and at the epochs they get at equal compute,
#    candidates; airbench94's CPU port (benchmarks/peer_on_cuda.py) at its 9.9 epochs, 3 seeds;
#  - imagenette-3k (--val-split 0.2): the photo ladder's sizes at the epochs each gets in the
#    compute of today's 10-minute default on the development CPU, candidates, and 20 epochs.
# Round 2 follows round 1's leads: flat-cos on photos with its neighbours and a third seed, and
# the small-image widths at the compute of a 10-minute run and of width 0.75's 10 epochs.
# Every run is bf16 (the AMX CPUs' precision). Results and logs go to OUT.
#
#     bash benchmarks/gpu_screen.sh SHARED 1|2 [OUT]   # SHARED holds datasets/ and peers/ as ../shared does
set -u
shared=$1
round=$2
out=${3:-${OUT:-/tmp/screen-out}}
stop=${STOP_AFTER:-400}
py=${PYTHON:-python3}
export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
mkdir -p "$out" /tmp/screen
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
$py -c "import sys, cifar_vs_airbench as C; from pathlib import Path; C.SHARED = Path(sys.argv[1]); C.split(Path('/tmp/cifar'))" "$shared"

photos="--width 0.5 --img-size 128 --epochs 67"  # today's 10-minute default on the development CPU
screen() {  # NAME DATA EPOCHS EXTRA, then screen.py's flags: its table in OUT/NAME.txt
    local name=$1 data=$2 epochs=$3 extra=$4; shift 4
    $py benchmarks/screen.py "$data" --epochs "$epochs" --stop-after "$stop" --extra "$extra" \
        --out "/tmp/screen/$name" "$@" > "$out/$name.txt" 2>&1
}
cifar() { screen "$1" /tmp/cifar/tr 10 "--val /tmp/cifar/held --amp bf16" "${@:2}"; }
imagenette() { screen "$1" "$shared/datasets/imagenette-3k" 67 "--val-split 0.2 --amp bf16 --workers 3" "${@:2}"; }
if [ "$round" = 1 ]; then
timeout $((stop + 60)) $py -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$out/cuda_tests.txt" 2>&1 &

(for seed in 0 1 2; do
    timeout $((stop / 3)) $py benchmarks/peer_on_cuda.py "$shared/peers/airbench_cpu.py" --train /tmp/cifar/tr --test /tmp/cifar/held \
        --minutes 1000 --amp bf16 --seed $seed 2>&1 | tail -1
done) > "$out/peer.jsonl" 2>&1 &

cifar cifar --seeds 0,1 --parallel 4 \
    --candidate base= \
    --candidate w0.75="--width 0.75" \
    --candidate w1.0="--width 1.0" \
    --candidate flat-cos="--schedule flat-cos" \
    --candidate base-e44="--epochs 44" \
    --candidate w0.75-e18="--width 0.75 --epochs 18" \
    --candidate w1.0-e12="--width 1.0 --epochs 12" \
    &

imagenette imagenette --seeds 0,1 --parallel 5 \
    --candidate base128="$photos" \
    --candidate w0.75="--width 0.75 --img-size 128 --epochs 36" \
    --candidate w1.0="--width 1.0 --img-size 128 --epochs 20" \
    --candidate scale-min-0.35="$photos --scale-min 0.35" \
    --candidate flat-cos="$photos --schedule flat-cos" \
    --candidate smoothing-0.2="$photos --label-smoothing 0.2" \
    --candidate default-e20="--epochs 20" \
    --candidate w1.0-160="--width 1.0 --img-size 160 --epochs 14" \
    &

else
cifar cifar2 --seeds 0,1 --parallel 4 \
    --candidate base-e14="--epochs 14" \
    --candidate base-e24="--epochs 24" \
    --candidate w0.75-e6="--width 0.75 --epochs 6" \
    --candidate w1.0-e4="--width 1.0 --epochs 4" \
    &
imagenette imagenette2 --seeds 2 --parallel 2 --candidate base128="$photos" --candidate flat-cos="$photos --schedule flat-cos" &
imagenette imagenette2b --seeds 0,1 --parallel 3 \
    --candidate flat-cos-smin-0.15="$photos --schedule flat-cos --scale-min 0.15" \
    --candidate flat-cos-smin-0.08="$photos --schedule flat-cos --scale-min 0.08" \
    --candidate flat-cos-smoothing-0.2="$photos --schedule flat-cos --label-smoothing 0.2" \
    &
fi
wait
(cd /tmp/screen && find . -name '*.csv' -o -name '*.json' -o -name '*.log' | tar -czf "$out/runs.tar.gz" -T -)
tail -n 3 "$out/cuda_tests.txt" 2>/dev/null; cat "$out"/*.jsonl "$out"/*.txt 2>/dev/null
echo "elapsed: ${SECONDS}s"
