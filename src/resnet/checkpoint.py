"""Checkpoints are data, not code: a dict of tensors and plain values that
`torch.load(weights_only=True)` reads, written to a temporary file and renamed into place, so a
crash or kill mid-write leaves the previous file whole. Exported safetensors files (weights plus
the model card in their metadata) load the same way."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .models import ResNet, clean_state_dict, create_model

REQUIRED = ("model", "arch", "classes", "eval_size", "mean", "std")


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint of ours."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new, never half
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = _read_safetensors(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, foreign or unsafe files are all refused
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if isinstance(state, dict) and "eval_size" not in state and "img_size" in state:
        state["eval_size"] = state.pop("img_size")  # the name older checkpoints used
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a resnet checkpoint (missing: {', '.join(missing)})")
    return state


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: json.loads(v) for k, v in meta.items()}
        state["model"] = {k: f.get_tensor(k) for k in f.keys()}
    return state


def load_checkpoint(path: str | Path) -> tuple[ResNet, dict[str, Any]]:
    """(model in eval mode, everything else in the checkpoint)."""
    state = read_checkpoint(path)
    model = create_model(state["arch"], num_classes=len(state["classes"]),
                         **state.get("model_options", {}))
    model.load_state_dict(clean_state_dict(state["model"]))
    model.eval()
    return model, {k: v for k, v in state.items() if k != "model"}
