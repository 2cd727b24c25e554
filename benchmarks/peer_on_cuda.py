"""airbench94's CPU port (`../shared/peers/airbench_cpu.py`) run on a CUDA GPU, for screening by
epochs: its accuracy at its fixed 9.9 epochs does not depend on the device, and a GPU runs in
seconds what takes this project's 2-core CPU 35 minutes. The port is run unchanged but for its
device: the data are decoded and split on the CPU as the port does (the same seeded 45,000 / 5,000
split), then moved to the GPU, where every later tensor is made (the original airbench ran there).

    python benchmarks/peer_on_cuda.py ../shared/peers/airbench_cpu.py --train DIR --minutes 100 --amp bf16
"""

from __future__ import annotations

import sys

# (what the port says, what it says on the GPU): each must be found once.
PATCHES = (
    ("AMP = dict(device_type='cpu'", "AMP = dict(device_type=DEVICE"),
    ("    res = main(args, data)",
     "    torch.set_default_device(DEVICE)\n"
     "    CIFAR_MEAN, CIFAR_STD = CIFAR_MEAN.to(DEVICE), CIFAR_STD.to(DEVICE)\n"
     "    data = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in data.items()}\n"
     "    res = main(args, data)"),
)


def main() -> None:
    path, *args = sys.argv[1:]
    device = "cuda"
    if args[:1] == ["--device"]:  # --device cpu: the same patched port on the CPU, to test the patches
        device, args = args[1], args[2:]
    source = open(path).read()
    for old, new in PATCHES:
        if source.count(old) != 1:
            sys.exit(f"{path}: expected '{old.strip()}' once; the port changed, update PATCHES")
        source = source.replace(old, new)
    sys.argv = [path, *args]
    exec(compile(source, path, "exec"), {"__name__": "__main__", "__file__": path, "DEVICE": device})


if __name__ == "__main__":
    main()
