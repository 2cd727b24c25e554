"""Export a checkpoint to ONNX (fp32, or static int8 with onnxruntime's quantizer) or safetensors,
and keep the exports that the ONNX engines (`engines`) run in a cache.

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
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .. import data as D
from ..checkpoint import card_strings, eval_transform, load_checkpoint
from ..constants import ONNX_CACHE_KEEP
from ..data.transforms import normalize
from ..options import CROP_PCT
from ..outputs import replace_atomically
from .engines import read_card

OPSET = 18  # torch.onnx's dynamo exporter's own opset; onnxruntime >= 1.14 runs it


# ---------------------------------------------------------------------------------------------
# Writing


def _set_metadata(model, card: dict[str, Any], precision: str, extra: dict[str, str] | None = None) -> None:
    """The model card, the file's own precision (fp32, int8) and `extra` strings in `metadata_props`."""
    from .. import __version__

    crop_pct = card.get("crop_pct", CROP_PCT)
    entries = {**card_strings(card), **(extra or {}), "precision": precision, "producer": f"resnet {__version__}",
               "input": "float32 NCHW, RGB, (pixel / 255 - mean) / std after resizing the shorter "
                        f"side to round(eval_size / {crop_pct}) and centre-cropping eval_size"}
    del model.metadata_props[:]
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


def export_onnx(checkpoint: str | Path, output: str | Path) -> Path:
    """fp32 ONNX of a checkpoint, batch axis dynamic, model card in `metadata_props`."""
    return write_onnx(*load_checkpoint(checkpoint), output)


def write_onnx(model: torch.nn.Module, meta: dict[str, Any], output: str | Path) -> Path:
    """fp32 ONNX of `model` (eval mode, on the CPU; its BatchNorms folded or not: the same function)
    with `meta`'s card in `metadata_props`."""
    import onnx

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
    # The precision it trained in goes with it: the engines that can run it so (OpenVINO in bf16) do.
    extra = {"trained_precision": json.dumps(meta["precision"])} if "precision" in meta else {}
    if CACHE_KEY in meta:
        extra[CACHE_KEY] = meta[CACHE_KEY]
    _set_metadata(proto, meta, "fp32", extra)
    return replace_atomically(Path(output), lambda tmp: onnx.save_model(proto, str(tmp)))


# ---------------------------------------------------------------------------------------------
# The cache of exports that the ONNX engines run (`--engine auto|onnxruntime|openvino`)


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


def onnx_cache_dir(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or D.default_cache_dir("onnx"))


def onnx_cache_path(key: str, cache_dir: str | Path | None = None) -> Path:
    return onnx_cache_dir(cache_dir) / f"{key}.onnx"


def onnx_cache_entries(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The cached exports, least recently used first, as `data.cache_entries` lists the decoded
    caches (an engine reads its export whole when it loads it: none is ever in use)."""
    entries = []
    for f in onnx_cache_dir(cache_dir).glob("*.onnx"):
        try:
            st = f.stat()
        except FileNotFoundError:  # dropped by another process meanwhile
            continue
        entries.append({"path": str(f), "bytes": st.st_size, "last_used": st.st_mtime, "in_use": False})
    return sorted(entries, key=lambda e: e["last_used"])


def clear_onnx_cache(cache_dir: str | Path | None = None, keep: int = 0) -> list[str]:
    """Remove the cached exports but the `keep` most recently used; returns the files removed."""
    entries = onnx_cache_entries(cache_dir)
    gone = entries[:max(0, len(entries) - keep)]
    for e in gone:
        Path(e["path"]).unlink(missing_ok=True)
    return [e["path"] for e in gone]


def cached_onnx(model: torch.nn.Module, meta: dict[str, Any], key: str, cache_dir: str | Path | None = None
                ) -> Path:
    """The fp32 ONNX export of the loaded `model` (its card in `meta`) kept under `key`, made now
    when it is not there or is damaged (`cache_damage`: said in one line, then made again) — from
    the model in memory, not its file read again; the least recently used beyond
    `ONNX_CACHE_KEEP` are dropped. Written under a temporary name and renamed, so two processes
    filling the cache at once leave one whole file."""
    path = onnx_cache_path(key, cache_dir)
    if path.is_file():
        damage = cache_damage(path, key)
        if damage is None:
            path.touch()  # used now: the last to be dropped
            return path
        tqdm.write(f"cached export {path}: {damage}: exporting it again")
    write_onnx(model, {**meta, CACHE_KEY: key}, path)
    clear_onnx_cache(path.parent, keep=ONNX_CACHE_KEEP)
    return path


# The metadata entry that names a cached export's key: a file that parses, carries its model card
# and names its own key was written whole by `cached_onnx` (the card and the key come last in the
# file, after the graph and its weights, so a cut file has neither).
CACHE_KEY = "cache_key"


def cache_damage(path: Path, key: str) -> str | None:
    """Why the cached export at `path` cannot be used (None: it can): it must parse as ONNX and
    carry the card and the key it was written under."""
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf raises its own, unrelated types
        return "not a readable ONNX file"
    metadata = {p.key: p.value for p in model.metadata_props}
    if metadata.get(CACHE_KEY) != key or "classes" not in metadata or not len(model.graph.node):
        return "incomplete"
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No log records below ERROR meanwhile: the exporter and the quantizer log every graph rewrite."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def calibration_batches(card: dict[str, Any], paths: Sequence[str], batch_size: int = 16) -> list[np.ndarray]:
    """Normalised input batches of the readable images among `paths`, preprocessed exactly as at
    inference for the model `card` describes."""
    images = [img for img in D.read_images(list(paths)) if not isinstance(img, str)]
    if not images:
        raise D.DataError(f"none of the {len(paths)} images to calibrate on could be read"
                          + (f" (e.g. {paths[0]})" if paths else ""))
    transform = eval_transform(card)
    mean, std = tuple(card["mean"]), tuple(card["std"])
    batches = []
    for start in range(0, len(images), batch_size):
        uint8 = torch.stack([transform(img) for img in images[start:start + batch_size]])
        batches.append(normalize(uint8, mean, std).numpy())
    return batches


def spread(paths: Sequence[str], limit: int) -> list[str]:
    """Up to `limit` of `paths`, taken at even steps through the list: sorted by class (as folders
    and a run's train.csv are), every class is represented."""
    return list(paths[:: max(1, len(paths) // limit)][:limit])


def sample_images(folder: str | Path, limit: int, purpose: str) -> list[str]:
    """Up to `limit` images of `folder` (class folders or not), spread over its sorted list."""
    folder = Path(folder)
    if not folder.is_dir():
        raise D.DataError(f"not a folder: {folder}")
    paths = [str(p) for p in D.find_images(folder)]
    if not paths:
        raise D.DataError(f"no images to {purpose} on in {folder}")
    return spread(paths, limit)


def run_images(checkpoint: str | Path, meta: dict[str, Any], part: str) -> tuple[Path, list[str]] | None:
    """(the CSV, its readable images) of the run's own `part` ("train" or "val") that training
    wrote beside the checkpoint (or in the run's recorded --out), if it is there and its images
    still are: what int8 calibrates and is checked on by default. None: the run's data is gone."""
    out = (meta.get("config") or {}).get("out")
    for listing in [Path(checkpoint).parent / f"{part}.csv", *([Path(out) / f"{part}.csv"] if out else [])]:
        if listing.is_file():
            files, _ = D.labelled_files(listing)
            if files:
                return listing, [p for p, _ in files]
    return None


def quantize_onnx(fp32: str | Path, output: str | Path, calib: Sequence[str],
                  extra: dict[str, str] | None = None) -> Path:
    """Static int8 (QDQ: int8 weights per output channel, in 7 bits, uint8 activations with ranges
    measured on the `calib` images), with onnxruntime's quantizer; the card and the training
    precision are carried over, `extra` strings added to the metadata. Both engines run it:
    OpenVINO reads QDQ and runs the quantized layers in int8."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    card, metadata = read_card(fp32)
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
        carried = {k: metadata[k] for k in ("trained_precision",) if k in metadata}
        _set_metadata(model, card, "int8", {**carried, **(extra or {})})
        onnx.save_model(model, str(tmp))

    return replace_atomically(Path(output), write)


def add_metadata(path: str | Path, extra: dict[str, str]) -> Path:
    """`extra` strings added to an ONNX file's metadata, the file replaced atomically."""
    import onnx

    model = onnx.load(str(path))
    for key, value in extra.items():
        prop = next((p for p in model.metadata_props if p.key == key), None) or model.metadata_props.add()
        prop.key, prop.value = key, value
    return replace_atomically(Path(path), lambda tmp: onnx.save_model(model, str(tmp)))


def export_safetensors(checkpoint: str | Path, output: str | Path) -> Path:
    """The weights alone, with the card in the metadata: loads with `Classifier.load` and, keys
    being torchvision's, into torchvision's model of the same architecture."""
    return write_safetensors(*load_checkpoint(checkpoint), output)


def write_safetensors(model: torch.nn.Module, meta: dict[str, Any], output: str | Path) -> Path:
    """`export_safetensors` of a checkpoint already read."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    # The precision it was trained in goes with it: it runs in that precision wherever it is loaded.
    metadata = {**card_strings(meta), **({"precision": json.dumps(meta["precision"])} if "precision" in meta else {})}
    return replace_atomically(Path(output), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
