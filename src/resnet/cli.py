"""`resnet <command>`: parse, call the modules, print. A user error is one line and exit code 2."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
from pathlib import Path

from .errors import ConfigError, DataError, MachineError, TrainingError, UsageError
from .options import (AMP_CHOICES, AUGMENTS, BENCHMARKS, DEVICES, ENGINES, EXPORT_FORMATS, MIN_IMG_SIZE,
                      PADDING_MODES, PRESETS, QUANTIZE)
from .outputs import check_not_empty, check_output_dir, check_output_file, write_rows


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the whole usage)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


AMP_HELP = ("autocast precision (auto: the model's own, the one it was trained in, or fp32 where this machine "
            "has no bf16 kernels)")
TRAIN_AMP_HELP = ("autocast precision, chosen once per run and kept on resume (auto: bf16 where a timed step says "
                  "it is faster, untimed with --deterministic; else fp32)")
COMPILE_HELP = "torch.compile with freezing: ~1.03x faster inference on a 2-core AVX2 CPU after ~15 s of compiling"
ENGINE_HELP = ("what runs the model (auto: the fastest here, timed, of PyTorch, OpenVINO and onnxruntime that "
               "compute it in its own precision, where the work pays for an ONNX export; few images: PyTorch)")
MODEL_HELP = "a checkpoint (.pt), exported .safetensors or .onnx file"
TTA_HELP = "average with the mirrored image (default: as the model was scored when it trained)"


def add_inference_flags(p: Parser, compile: bool = True) -> None:
    """What every command that runs a stored model takes: where, in which precision, on which engine."""
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--amp", choices=AMP_CHOICES, default="auto", help=AMP_HELP)
    if compile:
        p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.add_argument("--engine", choices=ENGINES, default="auto", help=ENGINE_HELP)


def add_train(sub) -> None:
    t = sub.add_parser("train", help="train a classifier on a folder or CSV of labelled images")
    t.add_argument("data", nargs="?",
                   help="class folders, train/+val/ folders, a flat Kaggle-style folder or a CSV "
                        "(not needed with --resume)")
    t.add_argument("--val", help="a separate labelled validation source")
    t.add_argument("--val-split", type=float, help="fraction held out when there is no --val (0.2)")
    t.add_argument("--label-pattern", help="regex whose first group is the label in a flat folder's file names")
    t.add_argument("--arch", help="model name (resnet models)")
    t.add_argument("--width", type=float, help="channel multiplier of the model (default preset: 0.5)")
    t.add_argument("--img-size", type=_positive_int, help="training resolution")
    t.add_argument("--min-img-size", type=_positive_int,
                   help="progressive resizing: start training at this resolution, end at --img-size")
    t.add_argument("--eval-size", type=_positive_int,
                   help="evaluation resolution (default: about 1.15x the training resolution)")
    t.add_argument("--epochs", type=_positive_int)
    t.add_argument("--batch-size", type=_positive_int)
    t.add_argument("--lr", type=float, help="peak learning rate for batch 256 (scaled linearly)")
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--label-smoothing", type=float)
    t.add_argument("--warmup-epochs", type=float)
    t.add_argument("--scale-min", type=float, help="RandomResizedCrop's smallest area fraction")
    t.add_argument("--augment", choices=AUGMENTS,
                   help="random-resized-crop (photos) or pad-crop (the paper's for small images); default: planned")
    t.add_argument("--padding", type=int, help="pad-crop: pixels added on each side before the random crop "
                                                "(default: planned, 2 for small images; the paper's 4)")
    t.add_argument("--padding-mode", choices=PADDING_MODES,
                   help="pad-crop: constant (zeros, the paper's) or reflect (default: planned, reflect for small images)")
    t.add_argument("--cutout", type=int, help="fill a square of this side, anywhere in each training crop, with the mean "
                                               "pixel (cutout, DeVries & Taylor; default 0: off)")
    t.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="validate with each image averaged with its mirror, and save the model to be scored so "
                        "(default: planned, on for small images)")
    t.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=None,
                   help="start the first convolution as the training patches' whitening, frozen "
                        "(default: planned, on for small images)")
    t.add_argument("--in-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="small-image fast path: all pixels in one tensor, augmented as tensor ops, no workers "
                        "(default: planned, on for small images that fit in 2 GiB)")
    t.add_argument("--workers", type=int)
    t.add_argument("--out", help="the run's folder (default: runs/train)")
    t.add_argument("--resume", metavar="CKPT|auto",
                   help="continue the run saved in CKPT (its last.pt) as it was: its data, folder and "
                        "settings; --epochs extends it. auto: OUT/last.pt if it exists, else a new run "
                        "(one command line for torchrun --max-restarts and requeued jobs)")
    t.add_argument("--pretrained", metavar="SRC", help="imagenet, a .pth/.safetensors file or a URL")
    t.add_argument("--preset", choices=list(PRESETS))
    t.add_argument("--seed", type=int)
    t.add_argument("--deterministic", action="store_true", default=None)
    t.add_argument("--device", choices=DEVICES)
    t.add_argument("--amp", choices=AMP_CHOICES, help=TRAIN_AMP_HELP)
    t.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                   help="decode once into a uint8 cache (default: when it takes at most 2 GiB)")
    t.add_argument("--cache-dir")
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (GPU)")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on, oneDNN's and cuDNN's faster layout)")
    t.add_argument("--sync-bn", action="store_true", default=None,
                   help="under torchrun: BatchNorm statistics over the global batch, not each process's part")
    t.add_argument("--max-minutes", type=float,
                   help="fit the schedule to this time budget; with the default preset and no --width or "
                        "--img-size, also the network's size (the largest that still gets enough epochs)")
    t.add_argument("--patience", type=_positive_int, help="stop after N epochs without improvement")
    t.add_argument("--save-every", type=int, help="also write last.pt every N steps")


def add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="score a checkpoint on a labelled folder or CSV")
    e.add_argument("checkpoint", help=MODEL_HELP)
    e.add_argument("data")
    e.add_argument("--json", metavar="FILE")
    e.add_argument("--report", metavar="DIR")
    e.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help=TTA_HELP)
    e.add_argument("--batch-size", type=_positive_int, default=64)
    e.add_argument("--workers", type=int)
    add_inference_flags(e)
    e.add_argument("--label-pattern")


def add_predict(sub) -> None:
    pr = sub.add_parser("predict", help="label image files, folders or globs")
    pr.add_argument("model", help=MODEL_HELP)
    pr.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or globs")
    pr.add_argument("--top-k", type=_positive_int, default=1)
    pr.add_argument("--output", metavar="FILE.csv|FILE.json",
                    help="write the rows to this file (- for CSV on stdout) instead of a table")
    pr.add_argument("--cam", metavar="DIR", help="also write each photo with its Grad-CAM heatmap here")
    pr.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help=TTA_HELP)
    pr.add_argument("--batch-size", type=_positive_int, default=32)
    add_inference_flags(pr)


def add_export(sub) -> None:
    x = sub.add_parser("export", help="export a checkpoint to ONNX or safetensors")
    x.add_argument("checkpoint")
    x.add_argument("--format", choices=EXPORT_FORMATS, default="onnx")
    x.add_argument("--output", metavar="FILE", help="default: beside the checkpoint")
    x.add_argument("--verify", nargs="?", const="", metavar="DIR",
                   help="compare the export's logits with PyTorch's, on images of DIR (or random ones)")
    x.add_argument("--quantize", choices=QUANTIZE,
                   help="ONNX only: static int8, checked on the run's validation images (runs on OpenVINO or onnxruntime)")
    x.add_argument("--calib", metavar="DIR",
                   help="images to calibrate int8 activation ranges on (default: the run's own training images)")
    x.add_argument("--opset", type=_positive_int, default=None, help="ONNX opset: 18, the only one written")


def add_serve(sub) -> None:
    sv = sub.add_parser("serve", help="a web page and JSON API around a model")
    sv.add_argument("model", help=MODEL_HELP)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted request body")
    add_inference_flags(sv, compile=False)


def add_models(sub) -> None:
    m = sub.add_parser("models", help="list the architectures")
    m.add_argument("--json", action="store_true")


def add_benchmark(sub) -> None:
    b = sub.add_parser("benchmark", help="images per second through the real code paths")
    b.add_argument("task", choices=BENCHMARKS)
    b.add_argument("root", nargs="?", help="image folder (for `data`)")
    b.add_argument("--arch", default="resnet18")
    b.add_argument("--img-size", type=_positive_int, default=224)
    b.add_argument("--batch-size", type=_positive_int, default=32)
    b.add_argument("--steps", type=_positive_int, default=10)
    b.add_argument("--workers", type=int, default=0)
    b.add_argument("--cache", action="store_true")
    b.add_argument("--cache-dir")
    b.add_argument("--device", choices=DEVICES, default="auto")
    b.add_argument("--amp", choices=AMP_CHOICES, default="auto", help="train: " + TRAIN_AMP_HELP + "; infer: " + AMP_HELP)
    b.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    b.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    b.add_argument("--compile", action="store_true")
    b.add_argument("--engine", choices=ENGINES, default="auto", help="infer: " + ENGINE_HELP)
    b.add_argument("--normalize", action="store_true", help="data: also normalise the batches on the CPU")
    b.add_argument("--json", action="store_true")


def add_experiment(sub) -> None:
    ex = sub.add_parser("experiment", help="the ResNet paper's experiments")
    exs = ex.add_subparsers(dest="experiment", required=True, parser_class=Parser)
    dg = exs.add_parser("degradation", help="plain vs residual networks of two depths (the paper's Figure 6)")
    dg.add_argument("data", help="labelled images, e.g. CIFAR-10's train/<class>/ folders")
    dg.add_argument("--val", help="test images (default: 10 %% of DATA held out, as the paper's 45k/5k)")
    dg.add_argument("--depths", default="20,56", help="comma-separated CIFAR depths (20, 32, 44, 56, 110)")
    budget = dg.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epochs", type=_positive_int, help="epochs for every network")
    budget.add_argument("--max-minutes", type=float,
                        help="the whole experiment's time: it chooses the training images, epochs and recipe")
    dg.add_argument("--train-images", type=_positive_int,
                    help="a stratified subset of the training images (default: as many as the budget trains well)")
    dg.add_argument("--test-images", type=_positive_int, help="a stratified subset of the test images (default: 1,000)")
    dg.add_argument("--batch-size", type=_positive_int,
                    help="default 64: on a CPU a short run gets more steps from it than from the paper's 128 "
                         "(the learning rate follows it linearly)")
    dg.add_argument("--lr", type=float, help="learning rate for batch 256, scaled linearly (default: a short run's)")
    dg.add_argument("--warmup-epochs", type=float, help="linear warm-up (default: a short run's)")
    dg.add_argument("--seed", type=int, default=0)
    dg.add_argument("--workers", type=int, default=0)
    dg.add_argument("--out", default="runs/degradation")


def add_cache(sub) -> None:
    c = sub.add_parser("cache", help="list the caches (decoded images, ONNX exports) with sizes and last use")
    c.add_argument("--clear", action="store_true", help="remove every cache that no running process uses")


def add_demo(sub) -> None:
    d = sub.add_parser("demo", help="train and evaluate on scikit-learn's digits, offline")
    d.add_argument("--out", default="runs/demo")


def build_parser() -> Parser:
    p = Parser(prog="resnet", description="Train, evaluate and use ResNet image classifiers.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (add_train, add_evaluate, add_predict, add_export, add_serve, add_models, add_benchmark,
                add_experiment, add_cache, add_demo):
        add(sub)
    return p


def cmd_train(a: argparse.Namespace) -> int:
    from dataclasses import fields

    from .evaluate import evaluate, write_json, write_report
    from .train import TrainConfig, make_config, resume_config, train

    # Every training option the parser has: the rest keep the preset's (or TrainConfig's) value.
    opts = {f.name: getattr(a, f.name) for f in fields(TrainConfig) if f.name != "preset" and hasattr(a, f.name)}
    last = Path(a.out or TrainConfig.out) / "last.pt"
    resume = (last if last.is_file() else None) if a.resume == "auto" else a.resume
    if resume:
        cfg, state = resume_config(resume, {**opts, "preset": a.preset})
    elif a.data is None:
        raise ConfigError("train needs DATA (or --resume OUT/last.pt)")
    elif last.is_file():
        raise ConfigError(f"--out {last.parent} already holds a run: continue it with --resume {last}, or give "
                          "another --out (delete the folder to start over)")
    else:
        cfg, state = make_config(a.preset or ("finetune" if a.pretrained else "default"), **opts), None
    summary = train(cfg, state)
    if not summary["main_process"]:
        return 0
    out = Path(summary["out"])
    if summary["validated"] and (out / "best.pt").is_file():
        result, samples, probs = evaluate(out / "best.pt", out / "val.csv", workers=cfg.workers,
                                          device=cfg.device)
        write_json(out / "evaluation.json", result)
        report = write_report(out / "report", result, samples, probs, out / "metrics.csv")
        print(f"report: {report}")
    if summary["skipped"]:
        print(f"skipped {summary['skipped']} unreadable files: {out / 'skipped.txt'}")
    what = ("best validation accuracy" if summary["validated"]
            else "no validation set (--val-split 0): best training accuracy")
    final = f"; final weights: {summary['final_acc']:.4f} -> {out / 'last.pt'}" if summary["final_acc"] is not None else ""
    print(f"{what}: {summary['best_acc']:.4f} at epoch {summary['best_epoch']} of {summary['epochs']} "
          f"({summary['seconds'] / 60:.1f} min) -> {out / 'best.pt'}{final}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import evaluate, write_json, write_report

    if a.json:
        check_output_file("--json", a.json, [a.checkpoint, a.data])
    if a.report:
        check_output_dir("--report", a.report, [a.data])
    result, samples, probs = evaluate(a.checkpoint, a.data, a.tta, a.batch_size, a.workers, a.device,
                                      a.label_pattern, a.amp, a.compile, a.engine)
    if a.json:
        write_json(a.json, result)
    if a.report:
        metrics = Path(a.checkpoint).parent / "metrics.csv"
        print(f"report: {write_report(a.report, result, samples, probs, metrics)}")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unreadable files")
    print(f"inference: {result['precision']} ({result['precision_reason']}) on {result['engine']} "
          f"({result['engine_reason']})")
    top5 = f"  top-5 {result['top5_accuracy']:.4f}" if "top5_accuracy" in result else ""
    print(f"accuracy: {result['accuracy']:.4f} on {result['num_images']} images{top5}")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .data import NOT_FETCHED, expand_paths
    from .predict import Classifier, write_cams

    if a.output not in (None, "-") and Path(a.output).suffix.lower() not in (".csv", ".json"):
        raise ConfigError(f"--output {a.output}: name a .csv or .json file, or - for CSV on stdout")
    urls = [p for p in a.paths if "://" in p]
    if urls and len(urls) == len(a.paths):  # nothing to label: a mistake, said before any work
        raise ConfigError(f"{urls[0]} is a URL: {NOT_FETCHED}")
    files = expand_paths(a.paths)
    if a.output not in (None, "-"):
        check_output_file("--output", a.output, [a.model, *files])
    if a.cam:
        check_output_dir("--cam", a.cam, [a.model])
    if not files:
        print(f"resnet predict: no files match {' '.join(a.paths)}", file=sys.stderr)
        return 1
    clf = Classifier.load(a.model, a.device, a.amp, a.compile, a.engine, images=len(files))
    if a.cam and clf.model is None:
        raise ConfigError("--cam needs the PyTorch model: give a checkpoint, not an ONNX file")
    batches = math.ceil(len(files) / a.batch_size)
    bar = functools.partial(tqdm, total=batches, unit="batch", desc="predict", leave=False,
                            disable=None if batches > 1 else True)  # None: only on a terminal
    rows = clf.predict(files, top_k=a.top_k, tta=a.tta, batch_size=a.batch_size, progress=bar)
    if a.cam:
        write_cams(clf, rows, Path(a.cam))
    write_rows(rows, a.output, a.top_k)
    if not any("label" in r for r in rows):
        reasons = sorted({r["error"] for r in rows})
        print(f"resnet predict: none of the {len(rows)} files could be labelled"
              + (f": {reasons[0]}" if len(reasons) == 1 else ""), file=sys.stderr)
        return 1
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .api import export

    r = export(a.checkpoint, a.format, a.output, a.quantize, a.calib, a.verify, a.opset)
    print(f"wrote {r['output']} ({r['bytes'] / 2**20:.1f} MiB)")
    check = r.get("int8_check")
    if check:
        print(f"int8: calibrated on {check['calibration_images']} images ({check['calibration']})")
    if check and "accuracy" in check:
        print(f"int8: accuracy {check['accuracy']:.4f} against {check['reference_accuracy']:.4f} "
              f"({check['reference']}) on {check['images']} validation images; "
              f"{check['images_per_second']:.0f} img/s on {check['engine']} against "
              f"{check['reference_images_per_second']:.0f}")
        if check["images_per_second"] < check["reference_images_per_second"]:
            print("int8: slower than the checkpoint on this CPU: keep using the checkpoint here")
    elif check:
        print("int8: not checked: no val.csv of the run beside the checkpoint")
    if "verify" in r:
        v = r["verify"]
        print(f"max abs difference: {v['max_abs_difference']:.3g} (logits against PyTorch fp32, "
              f"{v['images']} {'images' if a.verify else 'random images'}; top-1 labels agree on "
              f"{v['labels_agree']} of {v['images']})")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from .predict import Classifier
    from .serve import check_listening, serve

    check_listening(a.host, a.port, a.max_upload_mb)
    clf = Classifier.load(a.model, a.device, a.amp, engine=a.engine, images=math.inf)  # long-lived
    serve(clf, a.host, a.port, a.max_upload_mb)
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from .models import count_flops, list_models, model_spec

    rows = []
    for name in list_models():
        params, gflops = count_flops(name)
        rows.append({"name": name, "params": params, "input_size": model_spec(name).input_size,
                     "gflops": round(gflops, 3)})
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':24} {'params':>12} {'input':>6} {'GFLOPs':>8}")
    for r in rows:
        print(f"{r['name']:24} {r['params']:>12,} {r['input_size']:>6} {r['gflops']:>8.2f}")
    print("GFLOPs: one image at the native input size, a multiply-add counted as 2 FLOPs.")
    return 0


def cmd_benchmark(a: argparse.Namespace) -> int:
    from .bench import bench_data, bench_model

    if a.img_size < MIN_IMG_SIZE:
        raise ConfigError(f"--img-size must be at least {MIN_IMG_SIZE}, not {a.img_size}")
    if a.task == "data":
        if not a.root:
            raise DataError("benchmark data needs an image folder")
        r = bench_data(a.root, a.img_size, a.workers, max(a.batch_size, 64), a.cache, a.cache_dir, a.normalize)
    else:
        r = bench_model(a.task, a.arch, a.img_size, a.batch_size, a.steps, a.device, a.amp,
                        a.channels_last, a.width, a.compile, a.engine)
    print(json.dumps(r) if a.json else f"{r['images_per_second']:.1f} images/s ({a.task})")
    return 0


def cmd_experiment(a: argparse.Namespace) -> int:
    from .experiment import degradation

    try:
        depths = [int(d) for d in a.depths.split(",") if d.strip()]
    except ValueError:
        raise ConfigError(f"--depths {a.depths!r}: give whole numbers separated by commas, e.g. 20,56") from None
    if a.max_minutes is not None and a.max_minutes <= 0:
        raise ConfigError(f"--max-minutes must be positive, not {a.max_minutes}")
    check_output_dir("--out", a.out, [a.data, *([a.val] if a.val else [])])
    summary = degradation(a.data, a.out, a.val, depths, a.epochs, a.max_minutes, a.train_images, a.test_images,
                          a.seed, a.workers, a.batch_size, a.lr, a.warmup_epochs)
    print(f"history, summary and figure: {Path(a.out) / 'history.csv'}, {Path(a.out) / 'summary.json'}, "
          f"{Path(a.out) / 'figure6.png'}")
    names = list(summary)
    print("final training error: " + ", ".join(f"{n} {summary[n]['final_train_error']:.2%}" for n in names))
    return 0


def cmd_cache(a: argparse.Namespace) -> int:
    """The decoded caches (kept under `RESNET_CACHE_LIMIT_GB`, least recently used dropped first)
    and the ONNX exports (the 8 most recently used kept), with what they take."""
    import time

    from .data import cache_entries, cache_limit, default_cache_dir, prune

    decoded, onnx = default_cache_dir("decoded"), Path(default_cache_dir("onnx"))
    if a.clear:
        removed = prune(decoded, 0)
        for export in onnx.glob("*.onnx"):  # onnxruntime reads an export whole: none is in use
            export.unlink(missing_ok=True)
            removed.append(str(export))
        print(f"removed {len(removed)} caches")
    rows = [("decoded", e) for e in cache_entries(decoded)]
    rows += [("onnx", {"path": str(f), "bytes": f.stat().st_size, "last_used": f.stat().st_mtime, "in_use": False})
             for f in sorted(onnx.glob("*.onnx"), key=lambda f: f.stat().st_mtime)]
    for kind, e in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["last_used"]))
        print(f"{kind:8} {e['bytes'] / 2**20:10.1f} MiB  last used {when}{'  in use' if e['in_use'] else ''}  {e['path']}")
    total = sum(e["bytes"] for kind, e in rows if kind == "decoded")
    print(f"in all: decoded caches {total / 2**30:.2f} of {cache_limit() / 2**30:.0f} GiB ({decoded}); "
          f"ONNX exports: {sum(1 for kind, _ in rows if kind == 'onnx')} ({onnx})")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(a.out)
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export,
            "serve": cmd_serve, "models": cmd_models, "benchmark": cmd_benchmark, "experiment": cmd_experiment, "cache": cmd_cache,
            "demo": cmd_demo}


# The flags that name something a command writes: none may be given empty.
OUTPUT_FLAGS = ("out", "output", "json", "report", "cam", "cache_dir")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        for name in OUTPUT_FLAGS:
            check_not_empty(f"--{name.replace('_', '-')}", getattr(args, name, None))
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"resnet {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line
        return 2
    except (TrainingError, MachineError) as e:
        print(f"resnet {args.command}: {' '.join(str(e).split())}", file=sys.stderr)  # one line
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
