"""The engines that run an exported ONNX file (fp32, or QDQ int8) as a `runtime.Net`: onnxruntime,
and OpenVINO, the inference engine built for Intel's CPUs (on an AMX Xeon it ran the same
ResNet-18 export 2x faster than PyTorch's bf16 path, and its int8 3.6x; docs/benchmarks.md).

Both read the same file and its model card (`read_card`). Which one runs a model, and in which
precision, is `policy`'s decision; this module only does what it is told — in particular OpenVINO
is always given its precision explicitly (`INFERENCE_PRECISION_HINT`), since left to itself it
runs an fp32 model in bf16 wherever the CPU has bf16 kernels, and the model would then answer
otherwise than on every other path.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import card_from_strings, check_card
from ..errors import CheckpointError
from ..options import PRECISIONS


def read_card(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(the model card, the raw metadata strings) of an ONNX export, read without building a
    session, its card checked as a checkpoint's is. The strings hold what the card does not: the file's `precision` (fp32 or int8), the
    precision the model trained in (`trained_precision`), and int8's measured accuracy."""
    import onnx

    if not Path(path).is_file():
        raise CheckpointError(f"model not found: {path}")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises its own, unrelated types
        raise CheckpointError(f"cannot read ONNX model {path}: {e}") from e
    metadata = {p.key: p.value for p in model.metadata_props}
    card = card_from_strings(metadata, path)
    missing = [k for k in ("classes", "eval_size", "mean", "std") if k not in card]
    if missing:
        raise CheckpointError(f"{path}: ONNX file without resnet metadata (missing: {', '.join(missing)})")
    check_card(path, card)  # as a checkpoint's card is checked: one line naming the field
    return card, metadata


def trained_precision(path: str | Path, metadata: dict[str, str]) -> dict[str, str]:
    """The precision record of the model an export was made from; a file that records none (an
    older export) is what it holds, fp32."""
    raw = metadata.get("trained_precision", "null")
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        record = raw
    if record is None:
        return {"dtype": "fp32", "reason": "not recorded"}
    if not (isinstance(record, dict) and record.get("dtype") in PRECISIONS):
        raise CheckpointError(f"{path} is not a usable resnet export: trained_precision must record a dtype of "
                              f"{', '.join(PRECISIONS)}, not {str(raw)[:60]!r}")
    return record


class OnnxRuntimeNet:
    """An ONNX file run by onnxruntime on the CPU, in fp32 (or the file's int8), as a `runtime.Net`."""

    device = torch.device("cpu")
    channels_last = False  # onnxruntime takes NCHW and picks its own internal layout
    name = "onnxruntime"

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        if not Path(path).is_file():
            raise CheckpointError(f"model not found: {path}")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are about graph rewrites
        # As many threads as PyTorch uses: left to itself onnxruntime takes every core of the machine,
        # pinning its threads there past the process's CPU affinity (taskset, a container's cpuset).
        options.intra_op_num_threads = torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own, unrelated types
            raise CheckpointError(f"cannot read ONNX model {path}: {e}") from e
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to("cpu", memory_format=torch.contiguous_format)
        return torch.from_numpy(self.session.run(None, {self.input_name: x.numpy()})[0])


class OpenVinoNet:
    """An ONNX file compiled by OpenVINO for this CPU, as a `runtime.Net`, in bf16 or f32 as told
    (`bf16`); int8 layers of a QDQ file run in int8 either way, the rest in that precision.
    The LATENCY hint runs each batch on all the cores at once (one stream), as PyTorch does:
    batches come one at a time from every caller here (`runtime.logits`). The batch axis stays
    dynamic: compiled for one static shape, ResNet-18 ran no faster (165 against 167 img/s in
    bf16 on an AMX Xeon, 59.7 against 61.7 in f32 on an AMD EPYC; docs/benchmarks.md)."""

    device = torch.device("cpu")
    channels_last = False  # the graph takes NCHW; OpenVINO picks its own layout inside
    name = "openvino"

    def __init__(self, path: str | Path, bf16: bool = False):
        if not Path(path).is_file():
            raise CheckpointError(f"model not found: {path}")
        config = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        try:
            self.compiled = openvino_core().compile_model(str(path), "CPU", config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError for everything
            raise CheckpointError(f"OpenVINO cannot compile {path}: {' '.join(str(e).split())[:300]}") from e
        self.request = self.compiled.create_infer_request()

    @property
    def inference_precision(self) -> str:
        """The precision the compiled model's floating-point layers run in, read from its runtime
        model (what the CPU plugin chose for each layer, not the hint it was given): "bf16" where
        any runs in bf16, else "f32" (OpenVINO's names; a QDQ file's int8 layers aside)."""
        ran = {str(op.get_rt_info()["runtimePrecision"].astype(str))
               for op in self.compiled.get_runtime_model().get_ordered_ops()
               if str(op.get_rt_info()["layerType"].astype(str)) in ("Convolution", "FullyConnected", "MatMul")}
        return "bf16" if "bf16" in ran else "f32"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to("cpu", memory_format=torch.contiguous_format)
        out = self.request.infer({0: x.numpy()})
        return torch.from_numpy(out[0].copy())  # the request's buffer is reused by the next batch


@functools.cache
def openvino_core() -> Any:
    """One OpenVINO `Core` for the process, never freed before its compiled models: with a `Core`
    per model, the garbage collector freeing them in the wrong order crashed the process
    (a segmentation fault in a later, unrelated test)."""
    import openvino as ov

    return ov.Core()


def open_onnx(path: str | Path, engine: str, bf16: bool = False) -> OnnxRuntimeNet | OpenVinoNet:
    """The ONNX file at `path` on `engine`: OpenVINO in bf16 where told, else f32; onnxruntime as
    the file is (fp32 or int8: `policy.BF16_ENGINES`)."""
    return OpenVinoNet(path, bf16) if engine == "openvino" else OnnxRuntimeNet(path)
