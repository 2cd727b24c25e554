"""A training run's configuration: every option with its default, its allowed values, the presets
applied, and what a resumed run may change. No torch here: a notebook or `resnet --help` builds
and checks one without it.

Presets are named recipes; any explicit option overrides them. `default` is tuned for training from
scratch on a 2-core CPU (measured in docs/benchmarks.md):
- resolution is the big lever: compute grows with pixels, so train small and evaluate a little
  larger (`eval_size`), which also undoes the apparent zoom of random crops (Touvron et al.,
  "Fixing the train-test resolution discrepancy"); and grow the crops during the run (progressive
  resizing, `crop_size_at`): 64 -> 96 px beat a fixed 80 px by ~2 points in the same time;
- the peak learning rate (0.4 per 256 images) was chosen in the same runs: 0.1 and 0.2 were worse;
- SGD with Nesterov momentum, weight decay only on conv/linear weights (decaying BN scales and
  biases only hurts), linear warm-up then one-cycle cosine decay, label smoothing 0.1. Not zero-init
  of each block's last BN: measured here, it stalls the first epochs of short runs (ResNet-20 on
  digits: loss still 2.30 after an epoch, against 0.79 without it);
- channels_last memory format (oneDNN's faster layout on CPU); the precision is `--amp auto`:
  bf16 autocast on CUDA; on a CPU with bf16 kernels (AVX-512-BF16, AMX) the faster of fp32 and bf16
  on a few timed steps of the actual model; fp32 on other CPUs, where bf16 is emulated and ~15x
  slower (`policy.choose_precision`).
Every other tuning constant is in `constants.py`, with its reason; the time budget is `budget.py`.

"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..options import (AMP_CHOICES, AUGMENTS, AUTO_AUGMENTS, CLASS_BALANCE, CROP_PCT, DEVICES, MAX_WIDTH, MIN_IMG_SIZE,
                       PADDING_MODES, PRESETS, SCHEDULES)
from ..outputs import check_output_dir


@dataclass
class TrainConfig:
    data: str = ""
    val: str | None = None
    val_split: float | None = None
    label_pattern: str | None = None
    out: str = "runs/train"
    arch: str = "resnet18"
    width: float = 0.5                    # channel multiplier: a quarter of ResNet-18's compute
    img_size: int = 96                    # the last epochs' crops (see `crop_size_at`)
    min_img_size: int | None = None       # the first epochs' crops; default: 2/3 of img_size
    eval_size: int | None = None          # default: `recipe.eval_size_for(img_size)`
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.4                       # for batch 256; scaled linearly with batch_size
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-5
    schedule: str = "onecycle"            # options.SCHEDULES (onecycle: warm-up + cosine); photos plan flat-cos
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    class_balance: str = "auto"           # options.CLASS_BALANCE; a run records what auto chose (recipe.class_balance_for)
    scale_min: float = 0.25               # RandomResizedCrop's lower area bound
    augment: str = "random-resized-crop"  # options.AUGMENTS; "pad-crop": the paper's CIFAR augmentation
    padding: int = 4                      # pad-crop: pixels added on each side (the paper's 4)
    padding_mode: str = "constant"        # options.PADDING_MODES: zeros (the paper's) or the mirrored edge
    cutout: int = 0                       # a square of this side of each training crop filled with the mean pixel
    auto_augment: str = "none"            # options.AUTO_AUGMENTS; photos plan ta_wide (transforms.trivial_augment)
    hflip: bool = True
    crop_pct: float = CROP_PCT            # evaluation: resize to eval_size / crop_pct, centre-crop
    tta: bool = False                     # validate, and have the saved model scored, with the mirror image too
    tta_shift: int = 0                    # with tta: and with the pair shifted this many px (`runtime.logits`)
    train_like_eval: bool = False         # the tutorial trains on its eval preprocessing
    zero_init_residual: bool = False      # measured: on short schedules it stalls learning
    whiten: bool = False                  # the stem starts as the patches' whitening, frozen (models.whiten_conv)
    # Fine-tuning (`optim.param_groups`): only the classifier trains for the first `freeze_epochs`
    # (fastai's fine_tune); each stage below it at `layer_decay` times the rate of the stage above
    # (timm's --layer-decay; fastai's discriminative rates); `freeze`: only ever the classifier (a
    # linear probe: the pretrained body and its BatchNorm statistics kept as they are).
    freeze_epochs: int = 0
    layer_decay: float = 1.0
    freeze: bool = False
    pretrained: str | None = None
    workers: int | None = None
    cache: bool | None = None             # None: on when the decoded copy is small (see below)
    in_memory: bool = False               # the small-image fast path: pixels in one tensor (data/memory.py)
    cache_dir: str | None = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: str = "auto"                     # options.AMP_CHOICES
    channels_last: bool = True
    compile: bool = False                 # torch.compile: measured faster on CUDA, slower on this CPU
    sync_bn: bool = False                 # under torchrun: BatchNorm statistics over the global batch
    max_minutes: float | None = None
    fit_size: bool = False                # --max-minutes also picks width and img_size (`size_for_budget`)
    patience: int | None = None
    save_every: int = 0                   # also write last.pt every N steps (long epochs)
    preset: str = "default"
    given: list[str] = field(default_factory=list)  # the options set by the user: the plan keeps them


# Each option's allowed values, checked before any work is done: (test, what is allowed).
_RANGES: dict[str, tuple[Any, str]] = {
    "epochs": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "img_size": (lambda v: v >= MIN_IMG_SIZE, f"at least {MIN_IMG_SIZE}"),
    "min_img_size": (lambda v: v is None or v >= MIN_IMG_SIZE, f"at least {MIN_IMG_SIZE}"),
    "eval_size": (lambda v: v is None or v >= MIN_IMG_SIZE, f"at least {MIN_IMG_SIZE}"),
    "width": (lambda v: 0 < v <= MAX_WIDTH, f"in (0, {MAX_WIDTH}]"),
    "lr": (lambda v: v > 0, "positive"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "0 or more"),
    "warmup_epochs": (lambda v: v >= 0, "0 or more"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "freeze_epochs": (lambda v: v >= 0, "0 or more"),
    "layer_decay": (lambda v: 0 < v <= 1, "in (0, 1]: each stage's rate a fraction of the one above it"),
    "scale_min": (lambda v: 0 < v <= 1, "in (0, 1]: the smallest fraction of the image a crop keeps"),
    "val_split": (lambda v: v is None or 0 <= v < 1, "in [0, 1)"),
    "workers": (lambda v: v is None or v >= 0, "0 or more"),
    "max_minutes": (lambda v: v is None or v > 0, "positive"),
    "patience": (lambda v: v is None or v >= 1, "at least 1"),
    "save_every": (lambda v: v >= 0, "0 (off) or more steps"),
    "schedule": (lambda v: v in SCHEDULES, ", ".join(SCHEDULES)),
    "augment": (lambda v: v in AUGMENTS, ", ".join(AUGMENTS)),
    "padding": (lambda v: v >= 0, "0 or more"),
    "tta_shift": (lambda v: 0 <= v <= MIN_IMG_SIZE // 4, f"0 to {MIN_IMG_SIZE // 4} pixels"),
    "padding_mode": (lambda v: v in PADDING_MODES, ", ".join(PADDING_MODES)),
    "cutout": (lambda v: v >= 0, "0 (off) or more pixels"),
    "auto_augment": (lambda v: v in AUTO_AUGMENTS, ", ".join(AUTO_AUGMENTS)),
    "crop_pct": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "amp": (lambda v: v in AMP_CHOICES, ", ".join(AMP_CHOICES)),
    "class_balance": (lambda v: v in CLASS_BALANCE, ", ".join(CLASS_BALANCE)),
    "device": (lambda v: v in DEVICES, ", ".join(DEVICES)),
}
PATH_OPTIONS = ("data", "val", "out", "cache_dir")
SIZE_OPTIONS = {"width", "img_size", "min_img_size", "eval_size"}
# How the run goes on, not what it trains; `amp`: a precision given anew overrides the one the run
# chose (left out, or `auto`, the run keeps its own).
RESUME_MAY_CHANGE = ("epochs", "workers", "device", "cache_dir", "amp")


def flag(name: str) -> str:
    """How the command line spells an option."""
    return "--" + name.replace("_", "-")


# What each annotation of `TrainConfig` admits: a path may be given as a `Path`; a float as a whole
# number; `bool` is no number here (Python's `True == 1` would pass `epochs=True`).
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "a whole number"), "float": ((int, float), "a number"), "bool": ((bool,), "True or False"),
    "str": ((str, os.PathLike), "a string or a Path"), "None": ((type(None),), "None"), "list[str]": ((list,), "a list"),
}


def check_options(values: dict[str, Any]) -> None:
    """Every option named is one of `TrainConfig`'s and of its type: the check the command line's
    parser makes of a flag, made of a keyword argument too (`resnet.train(epochs="ten")`), so
    that either is refused in one line naming the option and what it takes."""
    types = {f.name: f.type for f in fields(TrainConfig)}
    unknown = set(values) - set(types)
    if unknown:
        raise ConfigError(f"unknown training options: {', '.join(sorted(unknown))}")
    for name, value in values.items():
        kinds = [_TYPES[t.strip()] for t in types[name].split("|")]
        ok = any(isinstance(value, allowed) for allowed, _ in kinds)
        if isinstance(value, bool) and not any(bool in allowed for allowed, _ in kinds):
            ok = False
        if not ok:
            raise ConfigError(f"{flag(name)} must be {' or '.join(what for _, what in kinds)}, not {value!r}")


def check_range(name: str, value: Any) -> None:
    """`value` within what option `name` allows (`_RANGES`), or a `ConfigError` saying so: for
    every entrance that takes the option, the command line's training or another command's."""
    ok, allowed = _RANGES[name]
    if not ok(value):
        raise ConfigError(f"{flag(name)} must be {allowed}, not {value!r}")


def check_config(cfg: TrainConfig) -> None:
    """Every value of its type and in its range and --out a folder it can write, before anything
    is read or written: a `ConfigError` naming the option, its value and what is allowed; and
    nothing the network cannot take, whether typed or planned (`check_for_arch`)."""
    check_options({f.name: getattr(cfg, f.name) for f in fields(TrainConfig)})
    for name in _RANGES:
        check_range(name, getattr(cfg, name))
    from ..data import check_label_pattern
    from ..models import model_spec

    model_spec(cfg.arch)  # an unknown name fails now, not after scanning the data
    check_label_pattern(cfg.label_pattern)
    if cfg.in_memory and cfg.cache is False:
        raise ConfigError("--in-memory reads its pixels from the decoded cache: not with --no-cache")
    if cfg.in_memory and (cfg.augment != "pad-crop" or cfg.train_like_eval):
        raise ConfigError("--in-memory augments as --augment pad-crop does (it is the small-image fast path): "
                          f"not with {'the seed preset' if cfg.train_like_eval else '--augment ' + cfg.augment}")
    if cfg.augment == "pad-crop" and cfg.padding_mode == "reflect" and cfg.padding >= cfg.img_size:
        raise ConfigError(f"--padding-mode reflect mirrors the image inside its edges: --padding must be less than "
                          f"the image's {cfg.img_size} px, not {cfg.padding}")
    for name, on in (("--cutout", cfg.cutout), ("--auto-augment", cfg.auto_augment != "none")):
        if on and cfg.train_like_eval:
            raise ConfigError(f"{name} changes each augmented training crop: not with the seed preset, which "
                              "trains on the evaluation's centre crops")
    if cfg.in_memory and cfg.auto_augment != "none":
        raise ConfigError(f"--auto-augment {cfg.auto_augment} works on each image as Pillow does: not with --in-memory, "
                          "which augments whole batches as tensor operations")
    check_for_arch(cfg)
    for name, on in (("--freeze", cfg.freeze), ("--freeze-epochs", cfg.freeze_epochs)):
        if on and not cfg.pretrained:
            raise ConfigError(f"{name} keeps the network below the classifier as its weights start: give them "
                              "(--pretrained imagenet or FILE); from scratch they are random")
    if cfg.whiten and cfg.pretrained:
        raise ConfigError("--whiten starts the first layer from the training images: not with --pretrained, "
                          "whose first layer is already trained")
    check_output_dir("--out", cfg.out, [p for p in (cfg.data, cfg.val) if p])


def whitens(arch: str) -> bool:
    """Whether `arch` has a single first convolution that `--whiten` can set (a deep stem has three)."""
    from ..models import model_spec

    return model_spec(arch).options.get("stem") != "deep"


def check_for_arch(cfg: TrainConfig) -> None:
    """Options the network cannot take: refused whether the user typed them or the plan chose them."""
    from ..models import model_spec

    if cfg.whiten and not whitens(cfg.arch):
        raise ConfigError(f"--whiten sets a single first convolution from the training images: {cfg.arch}'s deep stem "
                          "has three")
    if cfg.zero_init_residual and model_spec(cfg.arch).options.get("residual", True) is False:
        raise ConfigError(f"--zero-init-residual starts each residual block as its shortcut: {cfg.arch} is a plain "
                          "network (no shortcuts), so every block would start at zero and nothing would train")


def make_config(preset: str = "default", **overrides: Any) -> TrainConfig:
    """A preset's values, then every override that is not None; checked, with paths absolute (a
    run can be resumed from anywhere). A preset that evaluates at its training size keeps doing so
    when --img-size changes it."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from: {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    check_options(given)
    values = dict(PRESETS[preset])
    if "img_size" in given:
        for key in ("min_img_size", "eval_size"):
            if key in values and values[key] == values.get("img_size"):
                values[key] = given["img_size"]
    values.update(given)
    # The default preset's size is a choice made for 2 CPU cores: a budget that buys more may take
    # a larger one, unless the size was given or comes with pretrained weights.
    values.setdefault("fit_size", preset == "default" and bool(values.get("max_minutes")) and not values.get(
        "pretrained") and not SIZE_OPTIONS & given.keys())
    for key in PATH_OPTIONS:
        if values.get(key):
            values[key] = os.path.abspath(values[key])  # a str, whether given as one or as a Path
    cfg = TrainConfig(preset=preset, given=sorted(given), **values)
    check_config(cfg)
    return cfg


def resume_config(path: str | Path, given: dict[str, Any] | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """(configuration, saved state) to continue the run saved in `path` (a last.pt). Resuming
    continues that run as it was: in its own folder, on its own data, for its own plan of epochs
    (a time budget keeps the time already spent). Its folder is the one `path` is in: a run copied
    or moved elsewhere goes on there, and never writes into the folder it was copied from. Options
    given again must agree with it (paths compared as absolute paths); only `RESUME_MAY_CHANGE` may
    differ, and `epochs` extends the run."""
    from ..checkpoint import migrate, read_checkpoint

    state = read_checkpoint(path)
    if "optimizer" not in state or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} holds no training state to resume from (resume from last.pt)")
    state = migrate(state, path)
    known = {f.name for f in fields(TrainConfig)}
    saved = {k: v for k, v in state["config"].items() if k in known}
    cfg = TrainConfig(**{**saved, "out": str(Path(path).resolve().parent)})
    conflicts = []
    for key, value in (given or {}).items():
        if value is None or key in RESUME_MAY_CHANGE:
            continue
        stored = getattr(cfg, key)
        same = (stored is not None and Path(value).resolve() == Path(stored).resolve()
                if key in PATH_OPTIONS else value == stored)
        if not same:
            conflicts.append(f"{flag(key) if key != 'data' else 'DATA'} {value} (the run's: {stored})")
    if conflicts:
        raise ConfigError(f"--resume {path} continues that run as it was, but " + "; ".join(conflicts)
                          + ": leave these out, or start a new run with another --out")
    planned = state["progress"].get("epochs") or cfg.epochs
    changes = {k: (given or {})[k] for k in RESUME_MAY_CHANGE if (given or {}).get(k) is not None}
    cfg = replace(cfg, **{"epochs": planned, **changes})
    check_config(cfg)
    return cfg, state
