"""Export a checkpoint to ONNX (fp32, or static int8 with onnxruntime) or safetensors, check the
export against PyTorch, and run ONNX files as a `runtime.Net` (`OnnxNet`).

An exported file carries its model card — classes, input size, mean, std, architecture — in its
metadata (`metadata_props` for ONNX), so `resnet predict model.onnx ...` and `Classifier.load`
need nothing else. The ONNX graph takes the normalised float32 NCHW batch (`input`, batch axis
dynamic) and returns `logits`; preprocessing is the card's, as timm and torchvision export.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from . import data as D
from .checkpoint import card_from_strings, card_strings, eval_transform, load_checkpoint
from .errors import CheckpointError
from .transforms import CROP_PCT, normalize
from .tuning import CALIBRATION_IMAGES, ONNX_CACHE_KEEP

OPSET = 18  # torch.onnx's dynamo exporter's own opset; onnxruntime >= 1.14 runs it


class OnnxNet:
    """An ONNX file run by onnxruntime on the CPU, as a `runtime.Net`."""

    device = torch.device("cpu")
    channels_last = False  # onnxruntime takes NCHW and picks its own internal layout

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        if not Path(path).is_file():
            raise CheckpointError(f"model not found: {path}")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are about graph rewrites
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own, unrelated types
            raise CheckpointError(f"cannot read ONNX model {path}: {e}") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = card_from_strings(meta)
        self.precision = meta.get("precision", "fp32")
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to("cpu", memory_format=torch.contiguous_format)
        return torch.from_numpy(self.session.run(None, {self.input_name: x.numpy()})[0])


# ---------------------------------------------------------------------------------------------
# Writing


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """`write` to a temporary file beside `path`, then rename: never a half-written export."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask)  # as any file written here would be (mkstemp makes it private)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _set_metadata(model, card: dict[str, Any], precision: str) -> None:
    from . import __version__

    crop_pct = card.get("crop_pct", CROP_PCT)
    entries = {**card_strings(card), "precision": precision, "producer": f"resnet {__version__}",
               "input": "float32 NCHW, RGB, (pixel / 255 - mean) / std after resizing the shorter "
                        f"side to round(eval_size / {crop_pct}) and centre-cropping eval_size"}
    del model.metadata_props[:]
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


def export_onnx(checkpoint: str | Path, output: str | Path) -> Path:
    """fp32 ONNX of a checkpoint, batch axis dynamic, model card in `metadata_props`."""
    import onnx

    model, meta = load_checkpoint(checkpoint)
    size = int(meta["eval_size"])
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter reports progress on stdout and warns about torchvision ops we do not use.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), input_names=["input"], output_names=["logits"],
                                    opset_version=OPSET, dynamo=True, dynamic_shapes=({0: batch},),
                                    verbose=False)
    proto = program.model_proto
    _set_metadata(proto, meta, "fp32")
    return _replace_atomically(Path(output), lambda tmp: onnx.save_model(proto, str(tmp)))


# ---------------------------------------------------------------------------------------------
# The cache of exports that `--engine auto|onnxruntime` runs


def onnx_key(model: torch.nn.Module, card: dict[str, Any]) -> str:
    """What an export depends on — the weights, the model card, torch's exporter and the opset —
    so that a checkpoint copied, renamed or saved again as safetensors finds its export."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(card_strings(card), sort_keys=True).encode())
    digest.update(f"torch {torch.__version__}, opset {OPSET}".encode())
    return digest.hexdigest()[:32]


def onnx_cache_path(key: str, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or D.default_cache_dir("onnx")) / f"{key}.onnx"


def cached_onnx(checkpoint: str | Path, key: str, cache_dir: str | Path | None = None) -> Path:
    """The fp32 ONNX export of `checkpoint` kept under `key`, made now when it is not there; the
    least recently used beyond `ONNX_CACHE_KEEP` are dropped."""
    path = onnx_cache_path(key, cache_dir)
    if path.is_file():
        path.touch()  # used now: the last to be dropped
        return path
    export_onnx(checkpoint, path)
    kept = sorted(path.parent.glob("*.onnx"), key=lambda f: f.stat().st_mtime, reverse=True)
    for old in kept[ONNX_CACHE_KEEP:]:
        old.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No log records below ERROR meanwhile: the exporter and the quantizer log every graph rewrite."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def calibration_batches(card: dict[str, Any], folder: str | Path, limit: int = CALIBRATION_IMAGES,
                        batch_size: int = 16) -> list[np.ndarray]:
    """Normalised input batches of up to `limit` images of `folder` (class folders or not), spread
    over its classes, preprocessed exactly as at inference for the model `card` describes."""
    images = [img for img in D.read_images(sample_images(folder, limit, "calibrate"))
              if not isinstance(img, str)]
    if not images:
        raise D.DataError(f"no readable image to calibrate on in {folder}")
    transform = eval_transform(card)
    mean, std = tuple(card["mean"]), tuple(card["std"])
    batches = []
    for start in range(0, len(images), batch_size):
        uint8 = torch.stack([transform(img) for img in images[start:start + batch_size]])
        batches.append(normalize(uint8, mean, std).numpy())
    return batches


def sample_images(folder: str | Path, limit: int, purpose: str) -> list[str]:
    """Up to `limit` images of `folder` (class folders or not), taken at even steps through its
    sorted list, so that every class is represented."""
    folder = Path(folder)
    if not folder.is_dir():
        raise D.DataError(f"not a folder: {folder}")
    paths = [str(p) for p in D.find_images(folder)]
    if not paths:
        raise D.DataError(f"no images to {purpose} on in {folder}")
    return paths[:: max(1, len(paths) // limit)][:limit]


def quantize_onnx(fp32: str | Path, output: str | Path, calib: str | Path) -> Path:
    """Static int8 (QDQ: int8 weights per output channel, in 7 bits, uint8 activations with ranges
    measured on `calib` images), with onnxruntime's quantizer; the card is carried over."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    card = OnnxNet(fp32).metadata
    batches = calibration_batches(card, calib)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.left, None)
            return None if batch is None else {"input": batch}

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as work, _quiet():
            prepared = Path(work) / "prepared.onnx"
            quant_pre_process(str(fp32), str(prepared))  # shape inference + graph clean-up, as advised
            # reduce_range: 7-bit weights. On CPUs without VNNI (AVX2, plain AVX-512) onnxruntime's
            # uint8 x int8 kernels add pairs of products in int16, which saturates with 8-bit
            # weights: measured on the dogs-vs-cats model (AVX2), 89.85 % with 8 bits, 90.60 %
            # with 7, against 90.95 % in fp32, at the same speed. uint8 weights avoid it too, but
            # ran slower than fp32 there.
            quantize_static(str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        model = onnx.load(str(tmp))
        _set_metadata(model, card, "int8")
        onnx.save_model(model, str(tmp))

    return _replace_atomically(Path(output), write)


def export_safetensors(checkpoint: str | Path, output: str | Path) -> Path:
    """The weights alone, with the card in the metadata: loads with `Classifier.load` and, keys
    being torchvision's, into torchvision's model of the same architecture."""
    from safetensors.torch import save_file

    model, meta = load_checkpoint(checkpoint)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    # The precision it was trained in goes with it: it runs in that precision wherever it is loaded.
    metadata = {**card_strings(meta), **({"precision": json.dumps(meta["precision"])} if "precision" in meta else {})}
    return _replace_atomically(Path(output), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
