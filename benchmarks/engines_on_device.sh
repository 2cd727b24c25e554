#!/bin/bash
# The engines on a lent GPU machine's host CPU, pinned to 2 of its cores as on a 2-core machine:
# benchmarks/engines.py (every engine x precision x batch size), `resnet benchmark infer` (what auto
# takes) beside torchvision's best manual configuration (bf16 autocast + channels_last where the CPU
# has bf16 kernels), then the CUDA tests. OpenVINO comes as wheels carried in .whl (see
# /work/.library/device/README.md); everything else is the machine's own.
#
#     bash benchmarks/engines_on_device.sh [OUT_DIR]
set -u
out=${1:-${OUT:-/tmp}}
py=${PYTHON:-python3}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:src || exit 1
lscpu | grep -E "Model name|^CPU\(s\)"
export OMP_NUM_THREADS=2
pin="taskset -c 0,1"
$py -c "import sys; sys.path.insert(0, 'benchmarks'); from machine import cpu_description; import torch; torch.set_num_threads(2); print(cpu_description())"
tv() {  # torchvision's ResNet-18 at 224, batch 64: median of 4 timed batches after one, as its users set it up
$pin $py - <<'PY'
import statistics, time, torch, torchvision
torch.set_num_threads(2)
bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
m = torchvision.models.resnet18().eval().to(memory_format=torch.channels_last)
x = torch.randn(64, 3, 224, 224).contiguous(memory_format=torch.channels_last)
cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.no_grad()
ts = []
with torch.inference_mode(), cast:
    for i in range(5):
        t = time.perf_counter(); m(x); ts.append(time.perf_counter() - t)
print(f"torchvision resnet18 64x224 {'bf16+channels_last' if bf16 else 'channels_last'}: {64 / statistics.median(ts[1:]):.1f} img/s")
PY
}
ours() { $pin $py -m resnet benchmark infer --arch resnet18 --img-size 224 --batch-size 64 --steps 4 --device cpu --json; }
for round in 1 2; do tv; ours; done 2>&1 | grep -v Warning | tee "$out/vs_torchvision.txt"
# OpenVINO compiled for a dynamic batch axis against one static shape, ResNet-18 batch 64 (bf16 where the CPU has it)
$pin $py - <<'PY' 2>&1 | grep -v Warning | tee "$out/ov_static.txt"
import statistics, tempfile, time, numpy as np, torch, openvino as ov
from pathlib import Path
from resnet import create_model
from resnet.inference import policy
from resnet.throughput import save_benchmark_checkpoint
from resnet.inference.exports import export_onnx
torch.set_num_threads(2)
tmp = Path(tempfile.mkdtemp())
f = export_onnx(save_benchmark_checkpoint(tmp / "m.pt", create_model("resnet18", num_classes=1000), "resnet18", 224), tmp / "m.onnx")
core = ov.Core()
for hint in (["bf16", "f32"] if policy.cpu_has_bf16() else ["f32"]):
    cfg = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2}
    static = core.read_model(str(f)); static.reshape([64, 3, 224, 224])
    x = np.random.randn(64, 3, 224, 224).astype(np.float32)
    for name, m in (("dynamic", str(f)), ("static", static)):
        r = core.compile_model(m, "CPU", cfg).create_infer_request(); r.infer({0: x})
        ts = []
        for _ in range(4):
            t = time.perf_counter(); r.infer({0: x}); ts.append(time.perf_counter() - t)
        print(f"openvino {hint} {name} batch 64: {64 / statistics.median(ts):.1f} img/s")
PY
$pin $py benchmarks/engines.py --batch-sizes 1,16,64 --rounds 2 --steps 3 2>&1 | grep -v Warning | tee "$out/engines.md"
[ "${SKIP_CUDA:-0}" = 1 ] || $py -m pytest -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -3
