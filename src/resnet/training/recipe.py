"""The default recipe, planned from the data: the kind of images decides the network, its input
size, the augmentation, the regularisation and the loader; the compute then picks a size within
that kind's ladder (`budget.size_for_budget`, from timed steps). Pure: `DataStats` in, values and
one reason per decision out, so every rule is tested without images or a clock. Only options the
user left out are planned, and only for the `default` preset (`apply_recipe`).

Two kinds, after the recipes that hold the records for each:
- small images (a median shorter side up to `SMALL_IMAGE_MAX`, CIFAR-like): the wide and shallow
  ResNet-9 (for fixed epochs with airbench94's middle-heavy widths) at native resolution (no
  up-sampling: a 32 px image holds 32 px of detail), the paper's pad-and-crop augmentation (2 px
  mirrored), batches of 128, label smoothing 0.2 and weight decay 5e-4 as in Page's and Jordan's
  CIFAR-10 recipes, and the in-memory loader where the pixels fit;
- photos: the ImageNet-stem ResNet-18 at half width with random-resized crops growing 64 -> 96 px
  (docs/training.md), never trained or evaluated above the resolution the photos hold, the
  learning rate held at its peak for three quarters of the run (fastai's flat-cos), each crop
  then changed by TrivialAugment Wide (torchvision's reference recipe).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from ..constants import (AUTO_AUGMENT_MAX_PER_CLASS, AUTO_AUGMENT_MIN_EPOCHS, CLASS_BALANCE_PLANNED, EPOCHS_TO_GROW,
                         EVAL_SCALE, FEW_PHOTOS_A_CLASS, FINETUNE_BATCH, FINETUNE_LR, FINETUNE_MAX_EPOCHS,
                         FINETUNE_SMALL_STEPS, FINETUNE_STEPS, FLAT_FRACTION, IMBALANCED_TTA, IN_MEMORY_BYTES,
                         SIZE_LADDER, SIZE_STEP, SMALL_EPOCHS_TO_GROW, SMALL_IMAGE_MAX, SMALL_FIXED_EPOCHS_ARCH,
                         SMALL_RECIPE, SMALL_WIDTHS, TTA_SHIFT, WHITEN_IMAGES)
from ..data.stats import DataStats
from ..metrics import imbalanced
from ..options import MIN_IMG_SIZE
from .config import TrainConfig, check_for_arch, flag, whitens


@dataclass(frozen=True)
class Recipe:
    kind: str                                   # "small images" or "photos"
    values: dict[str, Any]                      # TrainConfig fields
    ladder: tuple[tuple[float, int], ...]       # (width, final crop px) a budget may choose from
    enough_epochs: int                          # a larger rung only while it still gets this many
    # Why, a line per decision with the options it decided: a line whose options were all given
    # by the user is not shown (it did not decide anything).
    reasons: list[tuple[tuple[str, ...], str]] = field(default_factory=list)


def eval_size_for(img_size: int) -> int:
    """The evaluation size for a training size: `EVAL_SCALE` larger (random crops zoom in), a
    multiple of `SIZE_STEP`."""
    return max(SIZE_STEP, int(round(img_size * EVAL_SCALE / SIZE_STEP)) * SIZE_STEP)


def plan_recipe(stats: DataStats, budget: bool = False, epochs: int | None = None) -> Recipe:
    """The recipe for data like `stats` describes, for a run of fixed `epochs` or (`budget`) minutes.
    A budget's `epochs` are those its minutes buy, known once its size is timed (`None` before)."""
    if stats.short_side <= SMALL_IMAGE_MAX:
        return _small_images(stats, budget)
    return _photos(stats, epochs, budget)


def _small_images(stats: DataStats, budget: bool) -> Recipe:
    size = max(MIN_IMG_SIZE, stats.short_side)
    fits = stats.images * size * size * 3 <= IN_MEMORY_BYTES
    shift = 0 if budget else TTA_SHIFT
    arch = SMALL_RECIPE["arch"] if budget else SMALL_FIXED_EPOCHS_ARCH
    values = {**SMALL_RECIPE, "arch": arch, "img_size": size, "min_img_size": size, "eval_size": size,
              "crop_pct": 1.0, "in_memory": fits, "tta_shift": shift}
    pixels = stats.images * size * size * 3
    reasons = [
        (("arch", "img_size"), f"small images (median shorter side {stats.short_side} px <= {SMALL_IMAGE_MAX}): "
                               f"the 9-layer ResNet-9 at {size} px, native resolution, no progressive resizing"),
        (("arch",), f"{arch}: " + ("widths doubling each stage (a time budget gets the most epochs from the "
                                   "cheapest network an epoch)" if budget else
                                   "its second stage as wide as its third, as airbench94 has it (fixed epochs: "
                                   "1.35x the step, +0.24 points at 10 epochs of CIFAR-10, 3 of 3 seeds)")),
        (("augment", "padding", "padding_mode"),
         f"pad-and-crop + flip augmentation (what a {size} px image allows: a random-resized crop would up-sample "
         f"it), {SMALL_RECIPE['padding']} px mirrored padding (airbench's: milder than the paper's 4 zeros, for a "
         "run of minutes)"),
        (("whiten",), f"the first layer starts as the whitening of {min(stats.images, WHITEN_IMAGES)} training "
                      "images' patches, frozen (airbench's start)"),
        (("tta", "tta_shift"), "scored with flip TTA, each image averaged with its mirror (+0.6 to +0.9 points on "
                               "CIFAR-10 for one more forward pass of a small image)"
                               + (f", and with that pair shifted {shift} px each way (airbench's translate TTA: +0.27 "
                                  "at 10 epochs; 3x validation's passes, which a time budget would pay in epochs)"
                                  if shift else "") + "; the saved model keeps it (--no-tta)"),
        (("label_smoothing", "weight_decay", "batch_size", "lr"),
         f"label smoothing {SMALL_RECIPE['label_smoothing']}, weight decay {SMALL_RECIPE['weight_decay']:g}, "
         f"batch {SMALL_RECIPE['batch_size']}, lr {SMALL_RECIPE['lr']} per 256 (the CIFAR-10 records' recipe, "
         "with 4x the steps)"),
        (("in_memory",), f"pixels in memory ({pixels / 2**20:.0f} MiB), batches cut and augmented as tensor "
                         "operations, no workers" if fits else
                         f"{pixels / 2**30:.1f} GiB of pixels is more than the in-memory loader takes "
                         f"({IN_MEMORY_BYTES / 2**30:.0f} GiB): the decoded cache and the DataLoader"),
    ]
    if size != stats.short_side:
        reasons.append((("img_size",), f"{stats.short_side} px images up-sampled to {size} px, the smallest "
                                       "the networks take"))
    return Recipe("small images", values, tuple((w, size) for w in SMALL_WIDTHS), SMALL_EPOCHS_TO_GROW, reasons)


def _photos(stats: DataStats, epochs: int | None, budget: bool) -> Recipe:
    per_class = stats.images / max(1, stats.classes)
    augment, augment_why = _auto_augment(per_class, epochs, budget)
    # Never above the resolution the photos hold: the rungs whose evaluation size fits the median
    # shorter side (and always one: the largest multiple of SIZE_STEP that does).
    ladder = tuple(r for r in SIZE_LADDER if eval_size_for(r[1]) <= stats.short_side)
    reasons = [(("arch", "img_size"), f"photos (median shorter side {stats.short_side} px): ResNet-18 at half "
                                      "width with random-resized crops growing to the final size (the dogs-vs-cats "
                                      "recipe)"),
               (("schedule",), f"the peak learning rate for {FLAT_FRACTION:.0%} of the run, then a cosine to zero "
                               "(fastai's flat-cos: +1.4 points on imagenette-3k at 67 epochs, 4 seeds)"),
               (("auto_augment",), augment_why)]
    if per_class <= FEW_PHOTOS_A_CLASS:  # advice, shown unless --pretrained was given (it then plans nothing)
        reasons.insert(0, (("pretrained",), f"few photos a class ({per_class:.0f} on average, at most "
                                            f"{FEW_PHOTOS_A_CLASS}): pretrained weights do better with so few "
                                            "(measured from scratch: dogs vs. cats at 300 a class 53-61 %, chance 50 %; "
                                            "imagenette at 100 a class 37-61 %, chance 10 %; fine-tuned: dogs vs. cats "
                                            "at 30 and 100 a class 66-71 %): --pretrained imagenet (torchvision's) or "
                                            "--pretrained FILE"))
    values: dict[str, Any] = {"in_memory": False, "schedule": "flat-cos", "auto_augment": augment}
    if not ladder:
        size = max(MIN_IMG_SIZE, int(stats.short_side / EVAL_SCALE) // SIZE_STEP * SIZE_STEP)
        ladder = ((SIZE_LADDER[0][0], size),)
        values.update(img_size=size, eval_size=min(stats.short_side, eval_size_for(size)))
        reasons.append((("img_size",), f"trained at {size} px, not {SIZE_LADDER[0][1]}: the photos hold "
                                       f"{stats.short_side} px"))
    elif len(ladder) < len(SIZE_LADDER):
        reasons.append((("img_size",), f"sizes up to {ladder[-1][1]} px: larger ones would be up-sampled from "
                                       f"{stats.short_side} px"))
    return Recipe("photos", values, ladder, EPOCHS_TO_GROW, reasons)


def _auto_augment(per_class: float, epochs: int | None, budget: bool) -> tuple[str, str]:
    """(policy, why): TrivialAugment where the network would over-fit, `per_class` images a class
    (on average) trained for long enough (a budget's epochs unknown yet: by the images alone,
    until it is sized)."""
    if per_class > AUTO_AUGMENT_MAX_PER_CLASS:
        return "none", (f"no TrivialAugment: {per_class:.0f} images a class (more than {AUTO_AUGMENT_MAX_PER_CLASS}) "
                        "leave little over-fitting for it to regularise")
    run = f"the {epochs} epochs the time budget buys" if budget else f"{epochs} epochs"
    if epochs is not None and epochs < AUTO_AUGMENT_MIN_EPOCHS:
        return "none", (f"no TrivialAugment: {run}, fewer than {AUTO_AUGMENT_MIN_EPOCHS}, leave little over-fitting "
                        "for it to regularise (-2.9 points on imagenette-3k at 20 epochs)")
    return "ta_wide", (f"TrivialAugment Wide after each crop: {per_class:.0f} images a class (at most "
                       f"{AUTO_AUGMENT_MAX_PER_CLASS}) over-fit without it" + (f" in {run}" if epochs is not None else "")
                       + " (+2.9 points on imagenette-3k, 239 a class, at 67 epochs, 4 seeds)")


def recipe_applies(cfg: TrainConfig) -> bool:
    """Only the default preset plans, and not from pretrained weights, whose network and sizes are
    their own."""
    return cfg.preset == "default" and not cfg.pretrained


def apply_recipe(cfg: TrainConfig, stats: DataStats, budget_epochs: int | None = None
                 ) -> tuple[TrainConfig, Recipe, list[str]]:
    """(the configuration with the recipe planned from the training data's `stats` in every option
    the user left out, the recipe, what was seen and chosen, a line each). A budget's run is
    planned twice: before its size is timed, then with the `budget_epochs` that size buys; planning
    a planned configuration again changes only what depends on the epochs."""
    recipe = plan_recipe(stats, budget=bool(cfg.max_minutes), epochs=budget_epochs if cfg.max_minutes else cfg.epochs)
    planned = {k: v for k, v in recipe.values.items() if k not in cfg.given}
    if "img_size" in cfg.given:  # the other sizes follow the one given, as the recipe has them follow its own
        for key in ("min_img_size", "eval_size"):
            if key in planned:
                planned[key] = cfg.img_size if recipe.values[key] == recipe.values["img_size"] else None
    unplanned = set(cfg.given)
    # The in-memory loader reads the decoded cache and augments whole batches as tensors (no Pillow).
    if (cfg.cache is False or planned.get("auto_augment", cfg.auto_augment) != "none") and planned.get("in_memory"):
        planned["in_memory"] = False
        unplanned.add("in_memory")
    if planned.get("whiten") and not whitens(planned.get("arch", cfg.arch)):  # a deep stem: three first convolutions
        planned["whiten"] = False
        unplanned.add("whiten")
    if not cfg.hflip and planned.get("tta"):  # trained without mirror images (digits): not scored on them
        planned["tta"] = False
        if "tta_shift" in planned:
            planned["tta_shift"] = 0
        unplanned.update(("tta", "tta_shift"))
    kept = sorted(k for k in recipe.values if k in cfg.given and recipe.values[k] != getattr(cfg, k))
    lines = [f"data: {stats.line()}", *(why for keys, why in recipe.reasons if set(keys) - unplanned)]
    if kept:
        lines.append("as given: " + ", ".join(f"{flag(k)} {getattr(cfg, k)}" for k in kept))
    cfg = replace(cfg, **planned)
    check_for_arch(cfg)  # the plan is held to what a typed flag is
    return cfg, recipe, lines


def plan_finetune(cfg: TrainConfig, train_images: int, trained_at: int | None) -> tuple[TrainConfig, list[str]]:
    """(the `finetune` preset's configuration planned from the pretrained file and the folder in
    the options left out, a line per choice). The size the weights were evaluated at, where their
    file says (`trained_at`): a network that learnt objects at 120 px, fine-tuned at 224, meets them
    twice as large. A folder of a few hundred photos gets small batches at a higher rate for
    enough steps, where the preset's 5 epochs of 64 would give it a handful."""
    planned: dict[str, Any] = {}
    lines = []
    if trained_at and not {"img_size", "min_img_size", "eval_size"} & set(cfg.given):
        planned.update(img_size=trained_at, min_img_size=trained_at, eval_size=trained_at)
        lines.append(f"fine-tuned at {trained_at} px, the size the pretrained model was evaluated at")
    if train_images < FINETUNE_SMALL_STEPS * cfg.batch_size:
        small = {"batch_size": FINETUNE_BATCH, "lr": FINETUNE_LR}
        planned.update({k: v for k, v in small.items() if k not in cfg.given})
        steps = max(1, train_images // planned.get("batch_size", cfg.batch_size))
        if "epochs" not in cfg.given:
            planned["epochs"] = max(cfg.epochs, min(FINETUNE_MAX_EPOCHS, -(-FINETUNE_STEPS // steps)))
        shown = {**{k: getattr(cfg, k) for k in ("batch_size", "lr", "epochs")}, **planned}
        lines.append(f"a small folder to fine-tune on ({train_images} training images, fewer than "
                     f"{FINETUNE_SMALL_STEPS} batches of {cfg.batch_size}): {shown['epochs']} epochs of {steps} "
                     f"steps of {shown['batch_size']} at lr {shown['lr']:g} per 256 (30 dogs and 30 cats: 67 % "
                     "on other photos, where 5 epochs of 64 gave 5 steps and 51 %)")
    return replace(cfg, **planned), lines


def class_balance_for(counts: Sequence[int], asked: str) -> tuple[str, str | None]:
    """(how the run counters imbalanced classes, the plan's line for it, if any) for training
    classes of these image `counts`: `asked` where given; with `auto`, `CLASS_BALANCE_PLANNED`
    where the classes are imbalanced (`metrics.imbalanced`), none where not. Any preset plans it,
    fine-tuning included: a pretrained model learns the training set's priors as well."""
    if asked != "auto":
        return asked, None
    if not imbalanced(counts):
        return "none", None
    small, large = min(c for c in counts if c > 0), max(counts)
    return CLASS_BALANCE_PLANNED, (f"imbalanced classes ({large} to {small} images a class, {large / small:.1f}:1): "
                                   f"{BALANCING[CLASS_BALANCE_PLANNED]}, and best.pt chosen by balanced accuracy: the "
                                   "latest epoch within a standard error of the highest (its rarest classes are few)")


def imbalanced_tta(cfg: TrainConfig, counts: Sequence[int]) -> str | None:
    """The plan's line where classes of these training image `counts` are imbalanced and so
    scored with flip TTA (`IMBALANCED_TTA`), None where not: a run that gives `--tta` / `--no-tta`,
    trains without mirror images, or has TTA already keeps what it has."""
    if not (IMBALANCED_TTA and imbalanced(counts)) or "tta" in cfg.given or not cfg.hflip or cfg.tta:
        return None
    return ("imbalanced classes scored with flip TTA, each image averaged with its mirror (dogs vs. cats at 1:20: "
            "+0.9 to +3.2 points of balanced accuracy, 5 runs); the saved model keeps it (--no-tta)")


# What each --class-balance does, for the plan's line.
BALANCING = {"sampler": "each class drawn equally often (class-balanced sampling)",
             "reweight": "each image's loss weighed by 1 / its class's share (class_weight='balanced')",
             "logit-adjust": "the log class priors added to the logits in the loss (logit adjustment, Menon et al. "
                             "2021)"}
