"""Checkpoints are data, not code: a dict of tensors and plain values that
`torch.load(weights_only=True)` reads, written to a temporary file and renamed into place, so a
crash or kill mid-write leaves the previous file whole. Exported safetensors files (weights plus
the model card in their metadata) load the same way."""

from __future__ import annotations

import errno
import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform
from .errors import CheckpointError, ConfigError, MachineError, first_line
from .models import (ACTIVATIONS, ResNet, clean_state_dict, create_model, model_spec, options_of_file,
                     recorded_options)
from .options import CROP_PCT, MAX_WIDTH, MIN_IMG_SIZE, PRECISIONS

REQUIRED = ("model", "arch", "classes", "eval_size", "mean", "std")
# What a stored model must say about itself to be used: written into ONNX `metadata_props` and
# safetensors metadata as JSON strings, read back by `Classifier.load`. `tta`: the model is
# scored averaged with the mirror image unless told otherwise (absent: it is not); `tta_shift`:
# and with that pair shifted this many pixels (absent: 0; `runtime.logits`).
CARD_KEYS = ("arch", "model_options", "classes", "eval_size", "crop_pct", "mean", "std", "tta", "tta_shift")


def model_card(arch: str, model_options: dict[str, Any], classes: list[str], eval_size: int, crop_pct: float,
               tta: bool, tta_shift: int = 0) -> dict[str, Any]:
    """What a stored model says about itself (`CARD_KEYS`), with ImageNet's normalisation: built
    once per run, so that its validation preprocesses (`eval_transform(card)`) as every later use
    of the saved model will."""
    return {"arch": arch, "model_options": model_options, "classes": list(classes), "eval_size": eval_size,
            "crop_pct": crop_pct, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "tta": tta,
            "tta_shift": tta_shift}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically, its model options with every option whose default has
    changed (`models.recorded_options`). A write that fails (a full disk, a folder gone
    read-only) leaves the previous file as it was and raises `CheckpointError` saying why."""
    path = Path(path)
    if "arch" in state:
        state = {**state, "model_options": recorded_options(state["arch"], state.get("model_options", {}))}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new, never half
    except (OSError, RuntimeError) as e:  # torch.save reports a short write as a RuntimeError
        tmp.unlink(missing_ok=True)  # first: the space it took is free again when measured below
        needed, free = tensor_bytes(state), _free_bytes(path.parent)
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or (free is not None and free < needed):
            raise MachineError(f"cannot write checkpoint {path}: the disk is full (it needs ~{needed / 2**20:.0f} MiB, "
                               f"{(free or 0) / 2**20:.0f} MiB are free); the previous one, if any, is untouched") from e
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise CheckpointError(f"cannot write checkpoint {path}: {reason} (the previous one, if any, "
                              "is untouched)") from e
    finally:
        tmp.unlink(missing_ok=True)


# The training checkpoint's layout (last.pt, best.pt), one number per version; `migrate` reads
# each older one as the current:
#   0: the run's place at the top level: `epoch`, `scheduler`'s step, `best_acc`, `history`, and
#      `skipped` as (path, reason) pairs;
#   1: that place in `progress` (a `run.Progress`); a run from before `--class-balance` has none
#      in its `config` (it trained with none); `plan`, `size_reason`, `budget`, `scaler`,
#      `precision` maybe absent (a precision absent is chosen again);
#   2: `schema` itself, and every key below always written; a budget's step-time model under
#      `budget["model"]`;
#   3: that model under `budget["step_time"]` (`budget.Budget.state`), not to be taken for the weights.
CHECKPOINT_SCHEMA = 3


def training_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
              card: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """A training checkpoint's layout: the model card (`CARD_KEYS`, what every inference path
    reads), the weights, and the run's state (what `--resume` reads back with `restore_run`):
    optimiser, loss scaler, the random generator and `run`'s entries (configuration, progress,
    the scheduler's step, precision, plan, size reason, budget)."""
    return {"schema": CHECKPOINT_SCHEMA, "model": model.state_dict(), **card, "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "rng": {"torch": torch.get_rng_state()}, **run}


def migrate(state: dict[str, Any], source: str | Path = "") -> dict[str, Any]:
    """A training checkpoint of any `CHECKPOINT_SCHEMA` version, in the current layout: what
    `--resume` reads, so that nothing past here meets an older one."""
    version = state.get("schema", 1 if "progress" in state else 0)
    if not isinstance(version, int) or not 0 <= version <= CHECKPOINT_SCHEMA:
        raise CheckpointError(f"{source}: training checkpoint layout {version!r} is not one this version of resnet "
                              f"reads (0 to {CHECKPOINT_SCHEMA}): resume it with the version that wrote it")
    state = dict(state)
    if version == 0:
        state["progress"] = {"epochs": state["config"].get("epochs"), "epoch": state["epoch"],
                             "step": state["scheduler"]["step"], "best_acc": state.get("best_acc", -1.0),
                             "history": state.get("history", []), "skipped": dict(state.get("skipped") or [])}
    if version <= 1:
        state["config"] = {"class_balance": "none", **state["config"]}
        for key, empty in (("plan", []), ("size_reason", None), ("budget", None), ("scaler", {}), ("precision", None)):
            state[key] = state.get(key) or empty
    if version <= 2 and state["budget"] and "model" in state["budget"]:
        budget = dict(state["budget"])
        budget["step_time"] = budget.pop("model")
        state["budget"] = budget
    return {**state, "schema": CHECKPOINT_SCHEMA}


def restore_run(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler) -> None:
    """What `training_checkpoint` saved, put back: the weights, the optimiser's and the scaler's state and
    the random generator, so that the resumed run takes the steps the uninterrupted one would."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])


def tensor_bytes(value: Any) -> int:
    """The bytes of every tensor in a nested dict / list: about what a checkpoint takes on disk."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def check_checkpoint_file(path: str | Path) -> Path:
    """`path` is a file torch.save could have written (not a folder, an ONNX export, an image):
    checked before any work, with a message that says what it is instead."""
    path = Path(path)
    if path.is_dir():
        found = stored_models(path)
        raise CheckpointError(f"{path} is a folder: give a checkpoint file in it"
                              + (f" ({', '.join(str(f) for f in found)})" if found else ", and it holds none"))
    if not path.is_file():
        found = stored_models(path.parent) if path.parent.is_dir() else []
        raise CheckpointError(f"checkpoint not found: {path}" + (f" (there: {', '.join(str(f) for f in found)})"
                                                                  if found else ""))
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path} is an ONNX export, not a checkpoint: this command takes the .pt it came from")
    with open(path, "rb") as f:
        magic = f.read(8)
    if path.suffix != ".safetensors" and not magic.startswith((b"PK\x03\x04", b"\x80")):
        raise CheckpointError(f"{path} is not a resnet checkpoint (not a file torch.save wrote)")
    return path


def stored_models(folder: Path, shown: int = 3) -> list[Path]:
    """The checkpoints in `folder` a command could take instead, best.pt and last.pt first."""
    order = {"best.pt": 0, "last.pt": 1}
    files = [f for f in folder.iterdir() if f.is_file() and f.suffix in (".pt", ".pth", ".safetensors")
             and not f.name.startswith(".")]
    return sorted(files, key=lambda f: (order.get(f.name, 2), f.name))[:shown]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = check_checkpoint_file(path)
    try:
        if path.suffix == ".safetensors":
            state = _read_safetensors(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, foreign or unsafe files are all refused
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line(e)}") from e
    if isinstance(state, dict) and "eval_size" not in state and "img_size" in state:
        state["eval_size"] = state.pop("img_size")  # the name older checkpoints used
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a resnet checkpoint (missing: {', '.join(missing)})")
    if isinstance(state["arch"], str) and isinstance(state.get("model_options", {}), dict):
        state["model_options"] = options_of_file(state["arch"], state.get("model_options", {}))
    return state


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: json.loads(v) for k, v in meta.items()}
        state["model"] = {k: f.get_tensor(k) for k in f.keys()}
    return state


# What a checkpoint may set, where its architecture takes it.
MODEL_OPTIONS = {"width": (int, float), "zero_init_residual": bool, "pool_first": bool, "act": str}
MAX_CLASSES = 100_000
MAX_EVAL_SIZE = 4096


def check_card(path: str | Path, state: dict[str, Any]) -> None:
    """A checkpoint's (or an ONNX export's) description of its model, checked before anything is
    built from it: a file that reads safely can still ask for absurd things (a 1000x wide model
    takes ~24 GB)."""
    def bad(what: str) -> CheckpointError:
        kind = "export" if str(path).lower().endswith(".onnx") else "checkpoint"
        return CheckpointError(f"{path} is not a usable resnet {kind}: {what}")

    classes, size, options = state["classes"], state["eval_size"], state.get("model_options", {})
    if (not isinstance(classes, (list, tuple)) or not 1 <= len(classes) <= MAX_CLASSES
            or not all(isinstance(c, str) for c in classes)):
        raise bad(f"classes must be a list of 1 to {MAX_CLASSES} names, not {type(classes).__name__}")
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_IMG_SIZE <= size <= MAX_EVAL_SIZE:
        raise bad(f"eval_size must be a whole number of pixels from {MIN_IMG_SIZE} to {MAX_EVAL_SIZE}, not {size!r}")
    crop_pct = state.get("crop_pct", CROP_PCT)
    if not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
        raise bad(f"crop_pct must be in (0, 1], not {crop_pct!r}")
    if not isinstance(state.get("tta", False), bool):
        raise bad(f"tta must be true or false, not {state['tta']!r}")
    shift = state.get("tta_shift", 0)
    if not isinstance(shift, int) or isinstance(shift, bool) or not 0 <= shift <= size // 4:
        raise bad(f"tta_shift must be a whole number of pixels from 0 to {size // 4}, not {shift!r}")
    for key in ("mean", "std"):
        v = state[key]
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise bad(f"{key} must be 3 numbers, not {v!r}")
    if not isinstance(options, dict) or set(options) - set(MODEL_OPTIONS):
        raise bad(f"unknown model options {sorted(set(options) - set(MODEL_OPTIONS)) if isinstance(options, dict) else options!r}"
                  f" (allowed: {', '.join(MODEL_OPTIONS)})")
    for key, value in options.items():
        if not isinstance(value, MODEL_OPTIONS[key]):
            raise bad(f"model option {key}={value!r} has the wrong type")
    if options.get("act", "relu") not in ACTIVATIONS:
        raise bad(f"model option act={options['act']!r} is not one of {', '.join(ACTIVATIONS)}")
    if not 0 < options.get("width", 1.0) <= MAX_WIDTH:
        raise bad(f"model option width={options['width']} is outside (0, {MAX_WIDTH}]")
    precision = state.get("precision")
    if precision is not None and not (isinstance(precision, dict) and precision.get("dtype") in PRECISIONS):
        raise bad(f"precision must record a dtype of {', '.join(PRECISIONS)}, not {precision!r}")
    if "arch" not in state:  # an ONNX file of ours says which network it is; the graph runs without it
        return
    try:
        spec = model_spec(state["arch"])
    except ConfigError as e:
        raise bad(str(e)) from None
    foreign = set(options) - {"width"} - set(inspect.signature(spec.build).parameters)
    if foreign:
        raise bad(f"{state['arch']} has no option {', '.join(sorted(foreign))}")


def load_checkpoint(path: str | Path) -> tuple[ResNet, dict[str, Any]]:
    """(model in eval mode, everything else in the checkpoint)."""
    state = read_checkpoint(path)
    check_card(path, state)
    model = create_model(state["arch"], num_classes=len(state["classes"]), **state.get("model_options", {}))
    try:
        model.load_state_dict(clean_state_dict(state["model"]))
    except (RuntimeError, AttributeError, TypeError) as e:
        detail = " ".join(str(e).split())[:300] or type(e).__name__
        raise CheckpointError(f"{path}: its weights do not fit {state['arch']} with {len(state['classes'])} "
                              f"classes: {detail}") from None
    model.eval()
    return model, {k: v for k, v in state.items() if k != "model"}


def card_strings(card: dict[str, Any]) -> dict[str, str]:
    """A model card as the string -> string map ONNX and safetensors metadata hold."""
    return {k: json.dumps(card[k]) for k in CARD_KEYS if k in card}


def eval_transform(card: dict[str, Any]) -> EvalTransform:
    """The preprocessing a model card describes: resize to eval_size / crop_pct, centre-crop."""
    return EvalTransform.for_size(int(card["eval_size"]), float(card.get("crop_pct", CROP_PCT)))


def card_from_strings(meta: dict[str, str], source: str | Path = "") -> dict[str, Any]:
    """The model card from an export's metadata strings: each field JSON, or a `CheckpointError`
    naming the field (a damaged or hand-edited file)."""
    card = {}
    for key in (k for k in CARD_KEYS if k in meta):
        try:
            card[key] = json.loads(meta[key])
        except (json.JSONDecodeError, TypeError):
            raise CheckpointError(f"{source} is not a usable resnet export: its {key} is not JSON "
                                  f"({str(meta[key])[:60]!r})") from None
    return card
