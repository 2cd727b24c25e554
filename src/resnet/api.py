"""The Python API that the command line is a thin layer over: what `resnet train`, `resnet
predict` and `resnet export` do, from a notebook, with the same options and the same outcome
(`resnet.train(...)`, `resnet.predict_files(...)`, `resnet.export(...)`)."""

from __future__ import annotations

import functools
import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from .checkpoint import check_checkpoint_file, load_checkpoint
from .constants import CALIBRATION_IMAGES, PROBE_BATCH
from .data import NOT_FETCHED, cache_entries, cache_limit, default_cache_dir, expand_paths, prune
from .errors import ConfigError
from .inference import exports as X
from .inference.evaluate import evaluate, write_json, write_report
from .inference.predict import Classifier, compare, verify_images, write_cams
from .inference.runtime import net_seconds
from .options import EXPORT_FORMATS, QUANTIZE
from .outputs import check_output_dir, check_output_file, sole_writer, write_rows
from .training import loop
from .training.config import TrainConfig, check_options, make_config, resume_config
from .training.threshold import move_threshold

if TYPE_CHECKING:
    import torch

SUFFIXES = {"safetensors": ".safetensors", "onnx": ".onnx", "int8": ".int8.onnx"}


def train(data: str | Path | None = None, *, preset: str | None = None, resume: str | Path | None = None,
          report: bool = True, **options: Any) -> dict[str, Any]:
    """Train a classifier on `data` (class folders, train/ + val/, a flat Kaggle-style folder or a
    CSV) into `out` (default runs/train), as `resnet train` does with the same options (the
    command line's flags, with underscores: `img_size=128`, `max_minutes=10`; None: the preset's).

    The preset is `default` (planned from the data), or `finetune` when `pretrained` weights are
    given. `resume`: a run's last.pt to continue as it was (its data, folder and settings;
    `epochs` extends it), or "auto": OUT/last.pt where it exists, else a new run. A new run never
    writes into a folder that holds one. Afterwards, with a validation set, best.pt is scored on
    it and the report written beside it (`report=False`: not); where its classes are imbalanced
    and were balanced, best.pt's threshold is first moved toward the rarer ones
    (`threshold.move_threshold`).

    Returns the run's summary: `best_acc` and `best_epoch` (best.pt's), `highest_acc` and
    `highest_epoch` (the highest score, where best.pt is a later epoch within a standard error of
    it), `final_acc`, `epochs`, `out`, `classes`, `class_balance`, `model` (the final weights),
    `logit_adjustment` where the threshold was moved, and `evaluation` / `report` where scored."""
    check_options({k: v for k, v in {"data": data, "preset": preset, **options}.items() if v is not None})
    if resume and resume != "auto":
        folder = check_checkpoint_file(resume).resolve().parent  # a resumed run goes on in its own folder
    else:
        folder = check_output_dir("--out", options.get("out") or TrainConfig.out, [p for p in (data, options.get("val")) if p])
    last = Path(folder) / "last.pt"
    with sole_writer(folder):  # before any file is read or written: one writer per run folder
        if resume == "auto":
            resume = last if last.is_file() else None
        if resume:
            cfg, state = resume_config(resume, {**options, "data": data, "preset": preset})
        elif data is None:
            raise ConfigError("train needs DATA (or --resume OUT/last.pt)")
        elif last.is_file():
            raise ConfigError(f"--out {last.parent} already holds a run: continue it with --resume {last}, or give "
                              "another --out (delete the folder to start over)")
        else:
            cfg, state = make_config(preset or ("finetune" if options.get("pretrained") else "default"),
                                     data=str(data), **options), None
        summary = loop.train(cfg, state)
        out = Path(summary["out"])
        scored = summary["main_process"] and summary["validated"] and (out / "best.pt").is_file()
        if scored and summary["selected_by"] == "val_balanced_acc" and summary["class_balance"] != "none":
            summary["logit_adjustment"] = move_threshold(out / "best.pt", out / "val.csv", out / "train.csv",
                                                         workers=cfg.workers, device=cfg.device)
        if report and scored:
            summary["evaluation"], summary["report"] = evaluate_model(
                out / "best.pt", out / "val.csv", json=out / "evaluation.json", report=out / "report",
                workers=cfg.workers, device=cfg.device)
        return summary


def evaluate_model(model: str | Path, data: str | Path, *, json: str | Path | None = None,
                   report: str | Path | None = None, **options: Any) -> tuple[dict[str, Any], Path | None]:
    """(the result, the report's report.md) of `resnet evaluate`: `model` scored on `data` by
    `evaluate.evaluate` (`options` are its own), the result written to `json` and the report (with
    the training curves of the metrics.csv beside the model, where there is one) into `report`.
    The outputs are checked before the model is loaded: never onto the model or the data."""
    if json:
        check_output_file("--json", json, [model, data])
    if report:
        check_output_dir("--report", report, [data])
    result, samples, probs = evaluate(model, data, **options)
    if json:
        write_json(json, result)
    written = write_report(report, result, samples, probs, Path(model).parent / "metrics.csv") if report else None
    return result, written


def predict_files(model: str | Path, paths: str | Path | list[str | Path], *, output: str | Path | None = None,
                  cam: str | Path | None = None, top_k: int = 1, tta: bool | None = None, batch_size: int = 32,
                  device: str = "auto", amp: str = "auto", compile: bool = False, engine: str = "auto",
                  progress: bool = False) -> list[dict[str, Any]]:
    """Label the files, folders and globs in `paths` with `model` (a checkpoint or an export), as
    `resnet predict` does: a row per file (`Classifier.predict`'s; an `error` row for one that
    does not read), written to `output` (.csv or .json) when given, and with `cam` each photo with
    its Grad-CAM heatmap in that folder. No files matching: no rows. Refused before any model is
    loaded: an output of another kind, paths that are all URLs (nothing is fetched), outputs onto
    an input; a CAM from an ONNX file (no gradients there)."""
    paths = [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    out = None if output is None else str(output)
    to_file = out not in (None, "-")  # else the caller prints the rows (a table, or CSV on stdout)
    if to_file and Path(out).suffix.lower() not in (".csv", ".json"):
        raise ConfigError(f"--output {out}: name a .csv or .json file, or - for CSV on stdout")
    urls = [p for p in paths if "://" in p]
    if urls and len(urls) == len(paths):
        raise ConfigError(f"{urls[0]} is a URL: {NOT_FETCHED}")
    files = expand_paths(paths)
    if to_file:
        check_output_file("--output", out, [model, *files])
    if cam:
        check_output_dir("--cam", cam, [model])
    if not files:
        return []
    clf = Classifier.load(model, device, amp, compile, engine, images=len(files))
    if cam and clf.model is None:
        raise ConfigError("--cam needs the PyTorch model: give a checkpoint, not an ONNX file")
    batches = math.ceil(len(files) / batch_size)
    bar = functools.partial(tqdm, total=batches, unit="batch", desc="predict", leave=False,
                            disable=None if progress and batches > 1 else True)  # None: only on a terminal
    rows = clf.predict(files, top_k=top_k, tta=tta, batch_size=batch_size, progress=bar)
    if cam:
        write_cams(clf, rows, Path(cam))
    if to_file:
        write_rows(rows, out, top_k)
    return rows


def caches(clear: bool = False) -> dict[str, Any]:
    """What `resnet cache` lists: the decoded caches (kept under `RESNET_CACHE_LIMIT_GB`, the least
    recently used dropped first) and the ONNX exports (the most recently used kept), an entry each
    (`kind`, `path`, `bytes`, `last_used`, `in_use`), where they live and the decoded caches' limit;
    with `clear`, every one not in use removed first (`removed`: how many)."""
    decoded = default_cache_dir("decoded")
    removed = len(prune(decoded, 0) + X.clear_onnx_cache()) if clear else 0
    entries = ([{"kind": "decoded", **e} for e in cache_entries(decoded)]
               + [{"kind": "onnx", **e} for e in X.onnx_cache_entries()])
    return {"entries": entries, "removed": removed, "decoded_dir": str(decoded), "onnx_dir": str(X.onnx_cache_dir()),
            "decoded_limit_bytes": cache_limit()}


def export(checkpoint: str | Path, format: str = "onnx", output: str | Path | None = None,
           quantize: str | None = None, calib: str | Path | None = None, verify: str | Path | bool | None = None,
           opset: int | None = None) -> dict[str, Any]:
    """Write `checkpoint` as ONNX (fp32, or static int8 with `quantize="int8"`) or safetensors, at
    `output` (default: beside the checkpoint, `.onnx`, `.int8.onnx` or `.safetensors`).

    int8 calibrates its activation ranges on the run's own training images (the train.csv that
    training wrote beside the checkpoint) unless `calib` names a folder, and is then scored on the
    run's validation images (val.csv) against the checkpoint as it runs here: the accuracy change
    and both speeds are returned and written into the file's model card (`int8_check`).
    `verify`: compare the export's logits with fp32 PyTorch's, on images of that folder (True: on
    random images). Returns `output`, `bytes`, and `verify` / `int8_check` where done."""
    check_checkpoint_file(checkpoint)
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {format!r}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZE)}, not {quantize!r}")
    if opset not in (None, X.OPSET):  # torch's exporter writes its own; onnx's converter fails on ResNets
        raise ConfigError(f"--opset {opset}: exports are opset {X.OPSET} (onnxruntime 1.14 and later run it); "
                          "no other is written")
    if format == "safetensors" and quantize:
        raise ConfigError("--quantize goes with --format onnx")
    images = verify_images(verify if isinstance(verify, (str, Path)) and str(verify) else None)
    ckpt = Path(checkpoint)
    suffix = SUFFIXES["int8" if quantize else format]
    output = Path(output or ckpt.with_suffix(suffix))
    if not output.name.lower().endswith(suffix if format == "safetensors" else ".onnx"):
        raise ConfigError(f"--output {output}: a {format} file is named *{suffix}")
    check_output_file("--output", output, [ckpt, *([calib] if calib else [])])
    result: dict[str, Any] = {"output": str(output)}
    model, meta = load_checkpoint(ckpt)  # read once: the export, the int8 check and --verify use it
    if format == "safetensors":
        X.write_safetensors(model, meta, output)
    elif quantize:
        result["int8_check"] = export_int8(model, meta, ckpt, output, calib)
    else:
        X.write_onnx(model, meta, output)
    result["bytes"] = output.stat().st_size
    if verify is not None and verify is not False:
        # Both in fp32, the export's own arithmetic: the check is of the file, not of bf16's rounding.
        result["verify"] = compare(Classifier.from_model(model, meta, str(ckpt), device="cpu", amp="off"),
                                   Classifier.load(output, amp="off"), images)
    return result


def calibration_images(ckpt: Path, meta: dict[str, Any], calib: str | Path | None) -> tuple[list[str], str]:
    """(the images int8 calibrates on, where they came from): `calib`'s, or the run's own training
    images; a checkpoint whose training images are gone asks for `calib`."""
    if calib is not None:
        return X.sample_images(calib, CALIBRATION_IMAGES, "calibrate"), str(calib)
    train = X.run_images(ckpt, meta, "train")
    if train is None:
        raise ConfigError(f"--quantize int8 calibrates on the run's training images, but no train.csv with "
                          f"readable images is beside {ckpt}: give --calib DIR (images like those it will label)")
    listing, paths = train
    return X.spread(paths, CALIBRATION_IMAGES), str(listing)


def export_int8(model: torch.nn.Module, meta: dict[str, Any], ckpt: Path, output: Path,
                calib: str | Path | None) -> dict[str, Any]:
    """The int8 export of checkpoint `ckpt` (read: `model`, `meta`) at `output`, calibrated
    (`calibration_images`) and, where the run's validation images are there, checked against the
    checkpoint: accuracy of both on them and images per second of both as they run here. The
    check goes into the model card."""
    paths, source = calibration_images(ckpt, meta, calib)
    check: dict[str, Any] = {"calibration": source, "calibration_images": len(paths)}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = X.write_onnx(model, meta, Path(tmp) / "fp32.onnx")
        X.quantize_onnx(fp32, output, paths, {"int8_check": json.dumps(check)})
    val = X.run_images(ckpt, meta, "val")
    if val is None:
        return check
    listing, paths = val
    # Each loaded once: its engine is timed once, and the speed is measured on what was scored.
    own, quantized = Classifier.from_model(model, meta, str(ckpt), images=len(paths)), Classifier.load(output)
    reference, _, _ = evaluate(own, listing, workers=0)
    int8, _, _ = evaluate(quantized, listing, workers=0)
    size = int(meta["eval_size"])
    check |= {"validation": str(listing), "images": int8["num_images"],
              "accuracy": int8["accuracy"], "reference_accuracy": reference["accuracy"],
              "reference": f"the checkpoint in {reference['precision']} on {reference['engine']}",
              "engine": int8["engine"],
              "images_per_second": PROBE_BATCH / net_seconds(quantized.net, size, PROBE_BATCH),
              "reference_images_per_second": PROBE_BATCH / net_seconds(own.net, size, PROBE_BATCH)}
    X.add_metadata(output, {"int8_check": json.dumps(check)})
    return check
