"""`resnet <command>`: parse, call the modules, print. A user error is one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
from pathlib import Path

from .arguments import build_parser
from .errors import Interrupted, MachineError, TrainingError, UsageError
from .outputs import check_not_empty, write_rows


def cmd_train(a: argparse.Namespace) -> int:
    from dataclasses import fields

    from .api import train
    from .training.config import TrainConfig
    from .inference.evaluate import headline_lines

    # Every training option the parser has: the rest keep the preset's (or TrainConfig's) value.
    opts = {f.name: getattr(a, f.name) for f in fields(TrainConfig)
            if f.name not in ("data", "preset") and hasattr(a, f.name)}
    summary = train(a.data, preset=a.preset, resume=a.resume, **opts)
    if not summary["main_process"]:
        return 0
    out = Path(summary["out"])
    if "report" in summary:
        print(f"report: {summary['report']}")
        print("best.pt on the validation images: " + "; ".join(headline_lines(summary["evaluation"])))
    if summary["skipped"]:
        print(f"skipped {summary['skipped']} unreadable files: {out / 'skipped.txt'}")
    if summary.get("logit_adjustment"):
        moved = summary["logit_adjustment"]
        print(f"best.pt's threshold moved toward the rarer classes: logits - {moved['tau']:.2f} x log(class share) "
              f"(post-hoc logit adjustment, chosen on the validation images, which it flatters: balanced accuracy "
              f"{moved['val_balanced_acc']:.4f} -> {moved['val_balanced_acc_adjusted']:.4f})")
    what = ("no validation set (--val-split 0): best training accuracy" if not summary["validated"]
            else "best.pt's validation balanced accuracy (the mean per-class recall: the classes are imbalanced)"
            if summary["selected_by"] == "val_balanced_acc" else "best validation accuracy")
    final = f"; final weights: {summary['final_acc']:.4f} -> {out / 'last.pt'}" if summary["final_acc"] is not None else ""
    if summary["highest_epoch"] != summary["best_epoch"]:  # the latest within a standard error of the highest
        final += (f" (the highest, {summary['highest_acc']:.4f} at epoch {summary['highest_epoch']}, is within a "
                  "standard error of it: the later epoch is kept)")
    print(f"{what}: {summary['best_acc']:.4f} at epoch {summary['best_epoch']} of {summary['epochs']} "
          f"({summary['seconds'] / 60:.1f} min) -> {out / 'best.pt'}{final}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .api import evaluate_model
    from .inference.evaluate import headline_lines

    result, report = evaluate_model(a.checkpoint, a.data, json=a.json, report=a.report, tta=a.tta,
                                    batch_size=a.batch_size, workers=a.workers, device=a.device,
                                    label_pattern=a.label_pattern, amp=a.amp, compile=a.compile, engine=a.engine)
    if report:
        print(f"report: {report}")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unreadable files")
    print(f"inference: {result['precision']} ({result['precision_reason']}) on {result['engine']} "
          f"({result['engine_reason']})")
    lead, *rest = headline_lines(result)
    for line in rest:
        print(line)
    print(f"{lead} on {result['num_images']} images")  # last: what scripts read
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from .api import predict_files

    rows = predict_files(a.model, a.paths, output=a.output, cam=a.cam, top_k=a.top_k, tta=a.tta,
                         batch_size=a.batch_size, device=a.device, amp=a.amp, compile=a.compile, engine=a.engine,
                         progress=True)
    if not rows:
        print(f"resnet predict: no files match {' '.join(a.paths)}", file=sys.stderr)
        return 1
    if a.output in (None, "-"):  # a table, or CSV on stdout
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
    from .inference.predict import Classifier
    from .inference.serve import check_listening, serve

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
    from .throughput import benchmark

    r = benchmark(a.task, a.root, arch=a.arch, img_size=a.img_size, batch_size=a.batch_size, steps=a.steps,
                  workers=a.workers, cache=a.cache, cache_dir=a.cache_dir, normalized=a.normalize, device=a.device,
                  amp=a.amp, channels_last=a.channels_last, width=a.width, compile=a.compile, engine=a.engine)
    print(json.dumps(r) if a.json else f"{r['images_per_second']:.1f} images/s ({a.task})")
    return 0


def cmd_experiment(a: argparse.Namespace) -> int:
    from .experiment import degradation

    summary = degradation(a.data, a.out, a.val, a.depths, a.epochs, a.max_minutes, a.train_images, a.test_images,
                          a.seed, a.workers, a.batch_size, a.lr, a.warmup_epochs)
    print(f"history, summary and figure: {Path(a.out) / 'history.csv'}, {Path(a.out) / 'summary.json'}, "
          f"{Path(a.out) / 'figure6.png'}")
    names = list(summary)
    print("final training error: " + ", ".join(f"{n} {summary[n]['final_train_error']:.2%}" for n in names))
    return 0


def cmd_cache(a: argparse.Namespace) -> int:
    import time

    from .api import caches

    found = caches(a.clear)
    if a.clear:
        print(f"removed {found['removed']} caches")
    for e in found["entries"]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["last_used"]))
        print(f"{e['kind']:8} {e['bytes'] / 2**20:10.1f} MiB  last used {when}{'  in use' if e['in_use'] else ''}  "
              f"{e['path']}")
    decoded = sum(e["bytes"] for e in found["entries"] if e["kind"] == "decoded")
    print(f"in all: decoded caches {decoded / 2**30:.2f} of {found['decoded_limit_bytes'] / 2**30:.0f} GiB "
          f"({found['decoded_dir']}); ONNX exports: {sum(e['kind'] == 'onnx' for e in found['entries'])} "
          f"({found['onnx_dir']})")
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
    except Interrupted as e:  # a run stopped between two steps, its last.pt written
        # Leaving now: torchrun's SIGTERM to a rank whose peer left first must not turn 143 into -15.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"resnet {args.command}: {' '.join(str(e).split())}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
