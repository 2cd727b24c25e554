"""The command line's grammar: every command, its flags, their help and their allowed values
(read from `options`). No torch: `resnet --help` stays fast."""

from __future__ import annotations

import argparse

from .options import (AMP_CHOICES, AUGMENTS, AUTO_AUGMENTS, BENCHMARKS, CLASS_BALANCE, DEVICES, ENGINES, EXPORT_FORMATS,
                      PADDING_MODES, PRESETS, QUANTIZE, SCHEDULES)


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
    add_train_recipe(t)
    add_train_run(t)


def add_train_recipe(t: Parser) -> None:
    """How `train` trains: schedule, optimiser, augmentation (left out: planned or the preset's)."""
    t.add_argument("--epochs", type=_positive_int)
    t.add_argument("--batch-size", type=_positive_int)
    t.add_argument("--lr", type=float, help="peak learning rate for batch 256 (scaled linearly)")
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--label-smoothing", type=float)
    t.add_argument("--schedule", choices=SCHEDULES,
                   help="onecycle (warm-up then cosine), cosine, flat-cos (the peak for 3/4 of the run, then cosine: "
                        "planned for photos), step (/10 at 1/2 and 3/4), constant (default: onecycle, or as planned)")
    t.add_argument("--zero-init-residual", action=argparse.BooleanOptionalAction, default=None,
                   help="start each block's last BatchNorm at zero, so each block starts as the identity "
                        "(default: off, measured to stall short runs)")
    t.add_argument("--freeze-epochs", type=int, metavar="N",
                   help="fine-tuning: only the classifier trains for the first N epochs, then everything (fastai's "
                        "fine_tune; needs --pretrained)")
    t.add_argument("--layer-decay", type=float, metavar="F",
                   help="fine-tuning: each stage below the classifier trains at F times the rate of the stage above "
                        "(timm's --layer-decay; default 1: one rate)")
    t.add_argument("--freeze", action=argparse.BooleanOptionalAction, default=None,
                   help="a linear probe: only the classifier trains, on the pretrained network's features (needs "
                        "--pretrained)")
    t.add_argument("--class-balance", choices=CLASS_BALANCE,
                   help="how imbalanced classes are trained: sampler (each class drawn equally often), reweight "
                        "(each image's loss weighed by 1 / its class's share), logit-adjust (the log class "
                        "priors added to the logits in the loss), none (default auto: sampler where the largest "
                        "class has over 1.5x the smallest's images, else none)")
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
    t.add_argument("--auto-augment", choices=AUTO_AUGMENTS,
                   help="after the crop and flip: ta_wide, TrivialAugment Wide (one of 14 operations at a random "
                        "strength per image, torchvision's TrivialAugmentWide), or none (default: planned, ta_wide for "
                        "photos)")
    t.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="validate with each image averaged with its mirror, and save the model to be scored so "
                        "(default: planned, on for small images)")
    t.add_argument("--tta-shift", type=int, metavar="PX",
                   help="with --tta: also the image and its mirror shifted PX pixels down-right and up-left, "
                        "edges mirrored (airbench's translate TTA; default: planned, 1 for small images trained "
                        "for fixed epochs, otherwise 0)")
    t.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=None,
                   help="start the first convolution as the training patches' whitening, frozen "
                        "(default: planned, on for small images)")
    t.add_argument("--in-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="small-image fast path: all pixels in one tensor, augmented as tensor ops, no workers "
                        "(default: planned, on for small images that fit in 2 GiB)")


def add_train_run(t: Parser) -> None:
    """Where and how a run goes: its folder, resuming, weights, seed, device, loader, budget."""
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
    b.add_argument("--batch-size", type=_positive_int, help="default: 32 (train, infer), 64 (data)")
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
