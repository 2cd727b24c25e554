"""`resnet <command>`: parse, call the modules, print. A user error is one line and exit code 2."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .data import DataError
from .models import WeightsError

USER_ERRORS = (DataError, WeightsError, CheckpointError, FileNotFoundError, ValueError)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the whole usage)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), not {value}")
    return value


def build_parser() -> Parser:
    p = Parser(prog="resnet", description="Train, evaluate and use ResNet image classifiers.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    t = sub.add_parser("train", help="train a classifier on a folder or CSV of labelled images")
    t.add_argument("data", help="class folders, train/+val/ folders, a flat Kaggle-style folder or a CSV")
    t.add_argument("--val", help="a separate labelled validation source")
    t.add_argument("--val-split", type=_fraction, help="fraction held out when there is no --val (0.2)")
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
    t.add_argument("--workers", type=int)
    t.add_argument("--out", default="runs/train")
    t.add_argument("--resume", metavar="CKPT", help="continue the run saved in CKPT (last.pt)")
    t.add_argument("--pretrained", metavar="SRC", help="imagenet, a .pth/.safetensors file or a URL")
    t.add_argument("--preset", choices=["default", "seed", "finetune"])
    t.add_argument("--seed", type=int)
    t.add_argument("--deterministic", action="store_true", default=None)
    t.add_argument("--device", choices=["auto", "cpu", "cuda"])
    t.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"])
    t.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                   help="decode once into a uint8 cache (default: when it takes at most 2 GiB)")
    t.add_argument("--cache-dir")
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (GPU)")
    t.add_argument("--max-minutes", type=float, help="fit the schedule to this time budget")
    t.add_argument("--patience", type=_positive_int, help="stop after N epochs without improvement")
    t.add_argument("--save-every", type=int, help="also write last.pt every N steps")

    e = sub.add_parser("evaluate", help="score a checkpoint on a labelled folder or CSV")
    e.add_argument("checkpoint")
    e.add_argument("data")
    e.add_argument("--json", metavar="FILE")
    e.add_argument("--report", metavar="DIR")
    e.add_argument("--tta", action="store_true", help="average with the mirrored image")
    e.add_argument("--batch-size", type=_positive_int, default=64)
    e.add_argument("--workers", type=int)
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.add_argument("--label-pattern")

    pr = sub.add_parser("predict", help="label image files, folders or globs")
    pr.add_argument("checkpoint")
    pr.add_argument("paths", nargs="+")
    pr.add_argument("--top-k", type=_positive_int, default=1)
    pr.add_argument("--output", metavar="FILE.csv|FILE.json")
    pr.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    m = sub.add_parser("models", help="list the architectures")
    m.add_argument("--json", action="store_true")

    b = sub.add_parser("benchmark", help="images per second through the real code paths")
    b.add_argument("task", choices=["train", "infer", "data"])
    b.add_argument("root", nargs="?", help="image folder (for `data`)")
    b.add_argument("--arch", default="resnet18")
    b.add_argument("--img-size", type=_positive_int, default=224)
    b.add_argument("--batch-size", type=_positive_int, default=32)
    b.add_argument("--steps", type=_positive_int, default=10)
    b.add_argument("--workers", type=int, default=0)
    b.add_argument("--cache", action="store_true")
    b.add_argument("--cache-dir")
    b.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    b.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto")
    b.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    b.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    b.add_argument("--compile", action="store_true")
    b.add_argument("--normalize", action="store_true", help="data: also normalise the batches on the CPU")
    b.add_argument("--json", action="store_true")

    d = sub.add_parser("demo", help="train and evaluate on scikit-learn's digits, offline")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--minutes", type=float, default=None, help=argparse.SUPPRESS)
    return p


def cmd_train(a: argparse.Namespace) -> int:
    from .evaluate import write_json, write_report, evaluate
    from .train import make_config, train

    opts = {k: getattr(a, k) for k in (
        "data", "val", "val_split", "label_pattern", "arch", "width", "img_size", "min_img_size", "eval_size",
        "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "warmup_epochs", "scale_min", "workers", "out",
        "pretrained", "seed", "deterministic", "device", "amp", "cache", "cache_dir", "max_minutes",
        "patience", "save_every", "compile")}
    preset = a.preset or ("finetune" if a.pretrained else "default")
    cfg = make_config(preset, **opts)
    summary = train(cfg, resume=a.resume, epochs=a.epochs)
    if not summary["main_process"]:
        return 0
    out = Path(summary["out"])
    if (out / "val.csv").is_file() and (out / "best.pt").is_file():
        result, samples, probs = evaluate(out / "best.pt", out / "val.csv", workers=cfg.workers,
                                          device=cfg.device)
        write_json(out / "evaluation.json", result)
        report = write_report(out / "report", result, samples, probs, out / "metrics.csv")
        print(f"report: {report}")
    if summary["skipped"]:
        print(f"skipped {summary['skipped']} unreadable files: {out / 'skipped.txt'}")
    print(f"best validation accuracy: {summary['best_acc']:.4f} ({summary['epochs']} epochs, "
          f"{summary['seconds'] / 60:.1f} min) -> {out / 'best.pt'}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import evaluate, write_json, write_report

    result, samples, probs = evaluate(a.checkpoint, a.data, a.tta, a.batch_size, a.workers, a.device,
                                      a.label_pattern)
    if a.json:
        write_json(a.json, result)
    if a.report:
        metrics = Path(a.checkpoint).parent / "metrics.csv"
        print(f"report: {write_report(a.report, result, samples, probs, metrics)}")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unreadable files")
    top5 = f"  top-5 {result['top5_accuracy']:.4f}" if "top5_accuracy" in result else ""
    print(f"accuracy: {result['accuracy']:.4f} on {result['num_images']} images{top5}")
    return 0


def expand_paths(paths: list[str]) -> list[str]:
    import glob

    from .data import is_image_name

    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out += sorted(str(f) for f in path.rglob("*") if f.is_file() and is_image_name(f.name))
        elif any(ch in p for ch in "*?["):
            out += sorted(glob.glob(p, recursive=True))
        else:
            out.append(p)  # a missing file becomes an `error` row
    return out


def cmd_predict(a: argparse.Namespace) -> int:
    from .predict import Classifier

    clf = Classifier.from_checkpoint(a.checkpoint, a.device)
    rows = clf.predict(expand_paths(a.paths), top_k=a.top_k)
    if a.output and a.output.endswith(".json"):
        Path(a.output).write_text(json.dumps(rows, indent=2))
    fields = ["path", "label", "probability"] + (["top_k"] if a.top_k > 1 else []) + ["error"]
    stream = open(a.output, "w", newline="") if a.output and not a.output.endswith(".json") else sys.stdout
    w = csv.DictWriter(stream, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        r = dict(r)
        if "top_k" in r:
            r["top_k"] = " ".join(f"{label}:{p:.4f}" for label, p in r["top_k"])
        if "probability" in r:
            r["probability"] = f"{r['probability']:.4f}"
        w.writerow(r)
    if stream is not sys.stdout:
        stream.close()
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

    if a.task == "data":
        if not a.root:
            raise DataError("benchmark data needs an image folder")
        r = bench_data(a.root, a.img_size, a.workers, max(a.batch_size, 64), a.cache, a.cache_dir, a.normalize)
    else:
        r = bench_model(a.task, a.arch, a.img_size, a.batch_size, a.steps, a.device, a.amp,
                        a.channels_last, a.width, a.compile)
    print(json.dumps(r) if a.json else f"{r['images_per_second']:.1f} images/s ({a.task})")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(a.out)
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "models": cmd_models, "benchmark": cmd_benchmark, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    from .train import TrainingError

    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as e:
        print(f"resnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"resnet {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
