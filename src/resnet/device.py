"""The device a run uses, the process's allocator set up for it (training, `benchmark` and every
`Classifier` load pick their device here), and the memory a training step would take on it."""

from __future__ import annotations

import ctypes
import functools
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .constants import HEAP_KEEP_BYTES
from .errors import ConfigError, MachineError, first_line
from .models import create_model


def pick_device(name: str = "auto") -> torch.device:
    """The device, with the process's allocator set up for it (`keep_freed_memory` on the CPU):
    training, `benchmark`, and every `Classifier` load come through here."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cpu":
        keep_freed_memory()
    return device


# glibc's mallopt parameters (<malloc.h>).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc serve large tensors from its heap and keep freed memory for the next step.

    By default glibc gives every allocation above its mmap threshold (32 MiB at most) a fresh
    mapping and unmaps it when freed, so every training step or inference batch with activations
    that large (ResNet-18 at 224 px, batch 32: 100 MB for the stem's output alone) has the kernel
    fault in and zero those pages again: 139,000 page faults (540 MB) per training step, against
    none once the heap serves them. Without mappings, and with the heap's free top kept up to
    `HEAP_KEEP_BYTES`, ResNet-18 trains 5 % faster at 224 px, ResNet-50 6-11 %, and inference
    runs 26-28 % faster (benchmarks/heap_kept.py). The cost: the heap fragments, and the process's
    memory stays at a higher peak instead of falling between steps (ResNet-18's training at 224 px
    1.9 GB against 1.7, ResNet-50's 5.3 GB against 4.1). A no-op (False) off glibc: macOS,
    Windows, musl."""
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, HEAP_KEEP_BYTES))


def available_bytes(device: torch.device) -> int | None:
    """The memory a new allocation can take now: the GPU's free memory; on the CPU the least of
    the kernel's MemAvailable and what is left under the limits this process really has — its
    address space (`ulimit -v`, RLIMIT_AS) and its container's memory (cgroup v2 `memory.max`,
    v1 `memory.limit_in_bytes`), which a machine's free memory says nothing of (None where
    nothing tells)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    known = [v for v in (_proc_kib("/proc/meminfo", "MemAvailable"), _address_space_left(), _cgroup_left())
             if v is not None]
    return min(known) if known else None


def _proc_kib(path: str, field: str) -> int | None:
    """A `field: N kB` line of a /proc file, in bytes."""
    try:
        with open(path) as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields[field].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _address_space_left() -> int | None:
    """RLIMIT_AS less the address space this process already maps (VmSize)."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    used = _proc_kib("/proc/self/status", "VmSize")
    if limit == resource.RLIM_INFINITY or used is None:
        return None
    return max(0, limit - used)


# (limit, usage) files of this process's memory cgroup, as a container sees its own at the root.
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))
UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a page-rounded 2**63 - 1


def _cgroup_left() -> int | None:
    for limit_file, usage_file in CGROUP_FILES:
        try:
            limit, usage = (Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip())
        except OSError:
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= UNLIMITED or not usage.isdigit():
            return None
        return max(0, int(limit) - int(usage))
    return None


def step_bytes(model: nn.Module, size: int, training: bool = True) -> tuple[int, int]:
    """(bytes per image, bytes whatever the batch) one fp32 step of `model` on images of `size` px
    holds at its peak. Training: every module's output kept for the backward pass and its gradient
    (2x the activations), plus weights, their gradients and the optimiser's momentum (3x the
    parameters). Inference: the largest output and the one it is computed from, plus the weights.
    From shapes alone: the model is moved to the meta device (build it there), so nothing is
    computed or allocated. Two images go through it, not one: a training-mode BatchNorm refuses a
    single value per channel (ResNet-18's last map at 32 px is 1x1); every output is linear in the
    batch, so half of each is one image's."""
    outputs = []
    hooks = [m.register_forward_hook(lambda mod, args, out: outputs.append(out.numel() * out.element_size() // 2))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.device("meta"):
            model.to("meta")(torch.empty(2, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    if not training:
        return 2 * max(outputs), params
    return 2 * sum(outputs), 3 * params


def check_step_memory(arch: str, width: float, size: int, num_classes: int, device: torch.device, batch: int,
                      batch_size: int, training: bool = True) -> None:
    """A step of `batch` images (`batch_size` as the command names it, over every process) that
    cannot fit in the memory free here, refused in one line before it is taken (`step_bytes`),
    naming the largest batch that fits."""
    free = available_bytes(device)
    if free is None:
        return
    with torch.device("meta"):
        model = create_model(arch, num_classes=num_classes, width=width)
    per_image, fixed = step_bytes(model, size, training)
    need = batch * per_image + fixed
    if need <= free:
        return
    fits = max(0, (free - fixed) // max(1, per_image))
    raise ConfigError(f"--batch-size {batch_size}: {'a training' if training else 'an inference'} step of {arch} "
                      f"at {size} px needs ~{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free on "
                      f"{device.type}" + (f": at most ~{fits} images per process fit" if fits else ""))


def is_out_of_memory(e: BaseException) -> bool:
    """An allocation the device refused: CUDA's `OutOfMemoryError`, or the CPU allocator's."""
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)


def out_of_memory(e: BaseException, cfg: Any, device: torch.device, world: int) -> MachineError:
    """An allocation that failed in spite of `check_step_memory` (another process took memory, or
    the estimate fell short) as one line, with the batch (`cfg.batch_size` over `world`
    processes) that fits in the memory free now by `step_bytes`' estimate."""
    free = available_bytes(device)
    with torch.device("meta"):
        model = create_model(cfg.arch, num_classes=2, width=cfg.width)
    per_image, fixed = step_bytes(model, cfg.img_size)
    batch = max(1, cfg.batch_size // world)
    fits = (free - fixed) // max(1, per_image) if free is not None else batch // 2
    return MachineError(f"out of memory with --batch-size {cfg.batch_size} ({cfg.arch} at {cfg.img_size} px on "
                        f"{device.type}: {first_line(e)[:100]}): try --batch-size {max(1, min(batch - 1, fits)) * world} "
                        "or less; last.pt, if any, holds the run as last saved")
