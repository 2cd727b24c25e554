"""Where and how a model runs, and the one batched inference function.

Every caller that turns images into logits — training's validation, `evaluate`, `Classifier`
(and so `predict`, `serve`, export's verification) and `benchmark infer` — goes through `logits`
below, so the same uint8 batch gives the same numbers whichever door it came in by. Nothing here
imports the training loop: `import resnet` stays light.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Protocol, Sequence

import torch
from torch import nn

from .errors import ConfigError
from .transforms import normalize
from .tuning import HEAP_KEEP_BYTES, ONNX_EXPORT_SECONDS, ONNX_MIN_IMAGES, ONNX_TIME_SAVED

if TYPE_CHECKING:
    from .data import Batch


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


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype `--amp` names (None: fp32); `auto` is the device's fast path without
    measuring: bf16 (fp16 on older GPUs) on CUDA, bf16 on a CPU that `cpu_prefers_bf16`, else fp32."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_prefers_bf16() else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


AMP_CHOICES = ("auto", "off", "bf16", "fp16")
# The names a precision is recorded under (config.json, checkpoints, `evaluate`'s JSON, /info).
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Set to 1 or 0, this process takes the CPU to be one where bf16 runs natively and fast (as with
# AMX), or one without bf16 kernels, whatever it is, and `--amp auto` takes that answer without
# timing anything: how the test-suite runs the bf16 paths on any CPU (emulated on AVX2: slow, but
# the test models are tiny), and how a user pins one precision for every run on a machine.
CPU_BF16_ENV = "RESNET_CPU_BF16"


def precision_name(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "fp32"


def forced_cpu_bf16() -> bool | None:
    """`RESNET_CPU_BF16` as set (None: not set, detect)."""
    value = os.environ.get(CPU_BF16_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ConfigError(f"{CPU_BF16_ENV}={value!r}: set it to 1 (a CPU with bf16 kernels), 0 (without) "
                          "or leave it unset (detect)")
    return None if value == "" else value == "1"


def cpu_has_bf16() -> bool:
    """oneDNN has native bf16 kernels here (AVX-512-BF16 or AMX), or `RESNET_CPU_BF16=1` says to
    act as if. Elsewhere bf16 autocast is emulated: measured ~15x slower than fp32 on an AVX2-only
    CPU."""
    forced = forced_cpu_bf16()
    if forced is not None:
        return forced
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cpu_prefers_bf16() -> bool:
    """bf16 is the faster precision here without timing anything: a CPU with AMX tiles as well as
    bf16 kernels (or `RESNET_CPU_BF16=1`). Measured: 2.65x faster training with bf16 on a 2-core
    AMX Xeon; 0.61-0.71x (training steps) and 0.58-0.66x (inference), i.e. slower, on a 2-core Xeon
    with AVX-512-BF16 but no AMX (ResNet-18 at 96-224 px, ResNet-20, ResNet-50;
    benchmarks/bf16_vs_fp32.py, docs/benchmarks.md). Kernels alone do not make bf16 pay."""
    forced = forced_cpu_bf16()
    if forced is not None:
        return forced
    return cpu_has_bf16() and torch.cpu._is_amx_tile_supported()


@dataclass(frozen=True)
class Precision:
    """The autocast dtype chosen (None: fp32) and why: shown in a run's first lines and saved."""

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        return precision_name(self.dtype)

    def record(self) -> dict[str, str]:
        return {"dtype": self.name, "reason": self.reason}


def choose_precision(amp: str, device: torch.device,
                     seconds_with: Callable[[torch.dtype | None], float] | None = None) -> Precision:
    """A training run's precision, chosen once at its start. `--amp` as given; for `auto` on a CPU
    with bf16 kernels, the faster of fp32 and bf16 autocast as `seconds_with(dtype)` measures the
    run's own training step, or without `seconds_with` (`--deterministic`: two runs of one command
    must not part ways on a close timing) by capability, `cpu_prefers_bf16`; on other CPUs fp32
    without measuring, and on CUDA bf16 (fp16 on older GPUs)."""
    if amp != "auto":
        return Precision(amp_dtype(amp, device), f"--amp {amp}")
    if device.type != "cpu":
        return Precision(amp_dtype(amp, device), "the GPU's fast path")
    forced = forced_cpu_bf16()
    if forced is not None:
        return Precision(torch.bfloat16 if forced else None, f"{CPU_BF16_ENV}={int(forced)}")
    if not cpu_has_bf16():
        return Precision(None, "this CPU has no bf16 kernels (no AVX-512-BF16 or AMX)")
    if seconds_with is None:
        return (Precision(torch.bfloat16, "this CPU has AMX, where bf16 is the faster (not timed)") if cpu_prefers_bf16()
                else Precision(None, "this CPU has bf16 kernels but no AMX, where fp32 is the faster (not timed)"))
    fp32_s, bf16_s = seconds_with(None), seconds_with(torch.bfloat16)
    dtype = torch.bfloat16 if bf16_s < fp32_s else None
    return Precision(dtype, f"measured here: {fp32_s * 1e3:.0f} ms in fp32, {bf16_s * 1e3:.0f} ms with bf16 autocast")


def runnable(dtype: torch.dtype | None, device: torch.device, why: str) -> Precision:
    """`dtype` where `device` runs it natively, else fp32 saying why: bf16 on a CPU without bf16
    kernels would be emulated (~15x slower), fp16 autocast is a GPU's."""
    if dtype is None:
        return Precision(None, why)
    if device.type == "cuda":
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return Precision(None, f"{why}, but this GPU has no bf16: fp32")
        return Precision(dtype, why)
    if dtype == torch.bfloat16 and cpu_has_bf16():
        return Precision(dtype, why)
    lacking = "bf16 kernels" if dtype == torch.bfloat16 else "fp16 autocast worth using"
    return Precision(None, f"{why}, but this CPU has no {lacking}: fp32")


def kept_precision(record: dict[str, str], device: torch.device) -> Precision:
    """A resumed run's precision: the one its start chose (`record`), where the device runs it."""
    return runnable(DTYPES[record["dtype"]], device, f"kept from the run's start: {record['reason']}")


def model_precision(amp: str, device: torch.device, record: dict[str, str] | None) -> Precision:
    """The one precision a stored model runs in on this machine, whichever door its images come in
    by (training's validation, `evaluate`, `predict`, `serve`, `Classifier`): the precision it was
    trained in, recorded with it, where this device runs that natively (else fp32, saying so). A
    model that records none (weights from elsewhere) runs in the device's fast path, by capability
    (`choose_precision` untimed). Nothing is timed: two loads of one model on one machine compute the same
    numbers. `--amp` other than auto overrides."""
    if amp != "auto":
        return Precision(amp_dtype(amp, device), f"--amp {amp}")
    if record is None:
        chosen = choose_precision("auto", device)
        return Precision(chosen.dtype, f"the model records no precision; {chosen.reason}")
    return runnable(DTYPES[record["dtype"]], device, f"the model's own (trained in {record['dtype']})")


ENGINES = ("auto", "torch", "onnxruntime")


@dataclass(frozen=True)
class Engine:
    """What runs inference — PyTorch, or onnxruntime on an ONNX export — and why."""

    name: str
    reason: str


def choose_engine(engine: str, device: torch.device, compile: bool, images: float, exported: bool,
                  precision: Precision) -> Engine | None:
    """`--engine` as given, or for `auto` what can be decided without timing anything; None when
    both engines are candidates, to be timed on the actual work. onnxruntime runs fp32 exports on
    the CPU only, so `auto` considers it only for a model whose `precision` is fp32 (a bf16 model
    on onnxruntime would compute other numbers than on every other path), and only where the
    model's export (made once and kept) is already there or the work may be long enough to pay
    for making it: `images` to score (`math.inf` for a long-lived classifier, as `serve` holds)
    against `ONNX_MIN_IMAGES`, then, for a job of known length, `export_too_dear` on timed PyTorch
    batches."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "onnxruntime" and (device.type != "cpu" or compile):
        raise ConfigError("--engine onnxruntime runs on the CPU without --compile: "
                          + ("add --device cpu" if device.type != "cpu" else "leave out --compile"))
    if engine != "auto":
        return Engine(engine, f"--engine {engine}")
    if device.type != "cpu":
        return Engine("torch", "PyTorch on the GPU")
    if compile:
        return Engine("torch", "--compile")
    if precision.dtype is not None:
        return Engine("torch", f"the model runs in {precision.name}; onnxruntime runs fp32 exports only")
    if not exported and images < ONNX_MIN_IMAGES:
        return Engine("torch", f"no ONNX export of this model yet, and making one pays from {ONNX_MIN_IMAGES} "
                               f"images, not {images:g}")
    return None


def export_too_dear(images: float, seconds_per_image: float) -> Engine | None:
    """PyTorch, with the estimate as its reason, when an ONNX export would cost more than it saves
    on `images` that PyTorch scores in `seconds_per_image`; None when it pays."""
    pytorch_s = images * seconds_per_image
    if pytorch_s * ONNX_TIME_SAVED >= ONNX_EXPORT_SECONDS:
        return None
    return Engine("torch", f"no ONNX export of this model yet: onnxruntime would save ~{pytorch_s * ONNX_TIME_SAVED:.1f} s "
                           f"of {images:g} images' ~{pytorch_s:.0f} s in PyTorch, less than making one costs "
                           f"(~{ONNX_EXPORT_SECONDS:.0f} s)")


def faster_engine(seconds: dict[str, float], images: int) -> Engine:
    """The engine that ran `images` images fastest, with the timings as its reason."""
    name = min(seconds, key=seconds.__getitem__)
    timings = ", ".join(f"{n} {s * 1e3:.0f} ms" for n, s in seconds.items())
    return Engine(name, f"measured here: {timings} per {images} images")


def net_seconds(net: "Net", size: int, batch_size: int) -> float:
    """The fastest of three timed inference batches of `net` (after one untimed) at `size`: how
    the precision and the engine are chosen, on the work they will do."""
    x = torch.randn(batch_size, 3, size, size, device=net.device)
    x = x.contiguous(memory_format=memory_format(net.channels_last))
    best = float("inf")
    for rnd in range(4):
        t = time.perf_counter()
        net(x)
        if net.device.type == "cuda":
            torch.cuda.synchronize()
        if rnd:
            best = min(best, time.perf_counter() - t)
    return best


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype`, or nothing at all for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def memory_format(channels_last: bool) -> torch.memory_format:
    """channels_last (NHWC) is oneDNN's and cuDNN's faster convolution layout, and the layout our
    uint8 batches are decoded in."""
    return torch.channels_last if channels_last else torch.contiguous_format


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that follows a convolution into that convolution's weights and bias
    (in place; the model must be in eval mode). In inference BatchNorm is a fixed per-channel
    affine map, so the folded convolution computes the same function in one pass over memory
    instead of two. Sibling order is forward order in our models, as in torchvision's; a
    BatchNorm is folded only into a convolution of matching width just before it. Synchronised
    BatchNorms (`--sync-bn`) are plain BatchNorms in eval mode, and fold alike."""
    for parent in model.modules():
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if (type(conv) is nn.Conv2d and isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm))
                    and conv.out_channels == bn.num_features and not bn.training):
                fused = nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                conv.weight, conv.bias = fused.weight, fused.bias
                setattr(parent, bn_name, nn.Identity())
    return model


def compile_for_inference(model: nn.Module) -> nn.Module:
    """torch.compile with Inductor's freezing: the weights become constants, so convolutions run on
    prepacked oneDNN weights with the ReLU and residual add fused in. Measured on the 2-core AVX2
    CPU, ResNet-18 @224 batch 64: 1.29x eager channels_last, 1.14x the folded eager model, after
    ~15 s of compiling per batch shape: worth it for long runs only (docs/benchmarks.md)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # applies to inference graphs only; training is compiled apart
    return torch.compile(model, dynamic=False)


class Net(Protocol):
    """Normalised float32 NCHW batch (on `device`, in `channels_last` when set) -> logits."""

    device: torch.device
    channels_last: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TorchNet:
    """A PyTorch model as a `Net`: no autograd, autocast to `dtype`. The caller keeps the mode
    (training's validation switches its model to eval itself)."""

    model: nn.Module
    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = True

    @classmethod
    def prepare(cls, model: nn.Module, device: torch.device, dtype: torch.dtype | None,
                channels_last: bool) -> "TorchNet":
        """Move `model` to the device and layout, put it in eval mode and fold its BatchNorms
        (measured in docs/benchmarks.md)."""
        model = fold_batchnorm(model.eval()).to(device, memory_format=memory_format(channels_last))
        return cls(model, device, dtype, channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(self.device, self.dtype):
            return self.model(x)

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)


def logits(net: Net, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
           tta: bool = False) -> torch.Tensor:
    """The one inference function: a uint8 NCHW batch -> float32 logits on the CPU. With `tta`,
    the logits of each image and its mirror image are averaged."""
    x = normalize(images, tuple(mean), tuple(std), net.device, net.channels_last)
    out = net(x).float()
    if tta:
        out = (out + net(x.flip(-1)).float()) / 2
    return out.cpu()


def run_eval(net: Net, batches: Iterable[Batch], mean: Sequence[float], std: Sequence[float],
             tta: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """(logits, labels, dataset indices, failures) over a loader's batches, through `logits`."""
    outs, labels, indices, failures = [], [], [], []
    for batch in batches:
        failures += batch.failures
        if len(batch.labels) == 0:
            continue
        outs.append(logits(net, batch.images, mean, std, tta))
        labels.append(batch.labels)
        indices.append(batch.indices)
    if not outs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), failures
    return torch.cat(outs), torch.cat(labels), torch.cat(indices), failures


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
