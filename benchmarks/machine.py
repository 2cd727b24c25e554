"""What every benchmark script prints its figures with: the machine they were measured on."""

from __future__ import annotations

from pathlib import Path

import torch

from resnet.inference import policy


def cpu_description() -> str:
    """The CPU's model, the threads torch uses and the flags that decide the fast paths: what every
    benchmark figure is printed with, since the machines differ from one session to the next."""
    model = flags = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = " ".join(f for f in line.split(":", 1)[1].split()
                             if f.startswith(("avx", "amx", "fma", "f16c")) or f in ("avx512_bf16", "avx512_vnni"))
    return f"{model} ({torch.get_num_threads()} threads); flags: {flags}; oneDNN bf16: {policy.cpu_has_bf16()}; AMX: {torch.cpu._is_amx_tile_supported()}"
