"""Which precision and which engine a model runs in, and why: each decision is returned with its
reason, which travels to the run's first lines, config.json, checkpoints, `evaluate`'s JSON and
`serve`'s /info. The loaders (`run.set_up`, `Classifier.from_model`) only load what these
functions decide.

Precision: one per run, one per model. A training run chooses once (`choose_precision`, timed
where the CPU has bf16 kernels) and keeps its choice (`kept_precision`); a stored model runs in
the precision it recorded wherever the device runs it natively (`model_precision`, never timed).
Engine: PyTorch, or onnxruntime or OpenVINO on the model's ONNX export, where that computes the
model in its own precision, is faster and pays (`choose_engine`, or the timings of those it leaves
open); an ONNX file on the faster of its two engines (`choose_onnx_engine`). Decisions only: the
nets they decide between are built and timed by `predict`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..constants import ONNX_EXPORT_SECONDS, ONNX_MIN_IMAGES, ONNX_TIME_SAVED
from ..errors import ConfigError
from ..options import ENGINES, ONNX_ENGINES, PRECISIONS
from .runtime import precision_name


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype `--amp` names (None: fp32); `auto` is the device's fast path without
    measuring: bf16 (fp16 on older GPUs) on CUDA, bf16 on a CPU that `cpu_prefers_bf16`, else fp32."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_prefers_bf16() else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


# The dtypes behind the names a precision is recorded under (`options.PRECISIONS`).
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
assert tuple(DTYPES) == PRECISIONS

# Set to 1 or 0, this process takes the CPU to be one where bf16 runs natively and fast (as with
# AMX), or one without bf16 kernels, whatever it is, and `--amp auto` takes that answer without
# timing anything: how the test-suite runs the bf16 paths on any CPU (emulated on AVX2: slow, but
# the test models are tiny), and how a user pins one precision for every run on a machine.
CPU_BF16_ENV = "RESNET_CPU_BF16"


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
    int8: bool = False  # an int8 export: its quantized layers run in int8, the rest in `dtype`

    @property
    def name(self) -> str:
        return "int8" if self.int8 else precision_name(self.dtype)

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
        return choose_precision(amp, device)
    if record is None:
        chosen = choose_precision("auto", device)
        return Precision(chosen.dtype, f"the model records no precision; {chosen.reason}")
    return runnable(DTYPES[record["dtype"]], device, f"the model's own (trained in {record['dtype']})")


@dataclass(frozen=True)
class Engine:
    """What runs inference — PyTorch, or onnxruntime or OpenVINO on an ONNX export — and why."""

    name: str
    reason: str


# The engines with bf16 kernels: onnxruntime's CPU provider has none, and computes a bf16 model's
# fp32 export.
BF16_ENGINES = ("torch", "openvino")


def onnx_engines(precision: Precision) -> tuple[str, ...]:
    """The ONNX engines that compute a model in its own `precision` (OpenVINO told which): all of
    them for fp32, and for an int8 file, whose quantized layers are int8 on both; those of
    `BF16_ENGINES` for bf16."""
    if precision.int8 or precision.dtype is None:
        return ONNX_ENGINES
    return tuple(e for e in ONNX_ENGINES if e in BF16_ENGINES)


def precision_on(precision: Precision, engine: str) -> Precision:
    """What a model of `precision` computes in on `engine`: its own, or fp32 on an engine without
    bf16 kernels (asked for by name only: `auto` never takes a bf16 model there)."""
    if precision.dtype is None or engine in BF16_ENGINES:
        return precision
    return Precision(None, f"{engine} runs the fp32 export, not the model's {precision_name(precision.dtype)}",
                     precision.int8)


def check_engine(engine: str, device: torch.device, compile: bool, onnx_file: bool = False) -> None:
    """The one place that says where each engine runs: the ONNX engines on the CPU only and without
    --compile (a PyTorch option); an ONNX file on an ONNX engine only."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    onnx = onnx_file or engine in ONNX_ENGINES
    what = "an ONNX file" if onnx_file else f"--engine {engine}"
    if onnx and device.type != "cpu":
        raise ConfigError(f"{what} runs on the CPU: add --device cpu (or leave out --device)")
    if onnx and compile:
        raise ConfigError(f"{what} runs without --compile, which applies to PyTorch checkpoints: leave it out")
    if onnx_file and engine == "torch":
        raise ConfigError(f"--engine torch runs checkpoints: an ONNX file runs on {' or '.join(ONNX_ENGINES)}")


def choose_engine(engine: str, device: torch.device, compile: bool, images: float, exported: bool) -> Engine | None:
    """`--engine` as given, or for `auto` what can be decided without timing anything; None when
    engines are left to be timed on the actual work. The ONNX engines run on the CPU without
    --compile (`check_engine`), and `auto` considers them only where the model's export (made once
    and kept) is already there or the work may be long enough to pay for making it: `images` to
    score (`math.inf` for a long-lived classifier, as `serve` holds) against `ONNX_MIN_IMAGES`,
    then, for a job of known length, `export_too_dear` on timed PyTorch batches. The caller has
    checked `engine` (`check_engine`)."""
    if engine != "auto":
        return Engine(engine, f"--engine {engine}")
    if device.type != "cpu":
        return Engine("torch", "PyTorch on the GPU")
    if compile:
        return Engine("torch", "--compile")
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
    return Engine("torch", f"no ONNX export of this model yet: another engine would save ~{pytorch_s * ONNX_TIME_SAVED:.1f} s "
                           f"of {images:g} images' ~{pytorch_s:.0f} s in PyTorch, less than making one costs "
                           f"(~{ONNX_EXPORT_SECONDS:.0f} s)")


def faster_engine(seconds: dict[str, float], images: int, left_out: Sequence[str] = ()) -> Engine:
    """The engine that ran `images` images fastest, with the timings (and the engines left out,
    with why) as its reason."""
    name = min(seconds, key=seconds.__getitem__)
    timings = ", ".join(f"{n} {s * 1e3:.0f} ms" for n, s in seconds.items())
    return Engine(name, "; ".join([f"measured here: {timings} per {images} images", *left_out]))


def choose_onnx_engine(requested: str, precision: Precision) -> Engine | None:
    """An ONNX file's engine where no timing decides it: as asked, or the only one that computes it
    in `precision` (`onnx_engines`); None when the candidates are left to be timed."""
    if requested != "auto":
        return Engine(requested, f"--engine {requested}")
    names = onnx_engines(precision)
    return Engine(names[0], f"the only engine that runs it in {precision.name}") if len(names) == 1 else None
