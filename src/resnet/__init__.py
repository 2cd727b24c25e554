"""resnet: ResNet image classifiers from a folder of photos to a trusted model.

The names below load on first use, so that `resnet --help` and `import resnet.errors` do not pay
for importing torch."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Classifier", "TrainConfig", "benchmark", "create_model", "evaluate_model", "export", "list_models",
           "load_checkpoint", "predict_files", "train"]
__version__ = "0.1.0"

_WHERE = {"Classifier": "inference.predict", "TrainConfig": "training.config", "benchmark": "throughput",
          "create_model": "models", "evaluate_model": "api", "export": "api", "list_models": "models",
          "load_checkpoint": "checkpoint", "predict_files": "api", "train": "api"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'resnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    """What a notebook's `resnet.<Tab>` and `dir(resnet)` list: the API, not this module's imports."""
    return sorted([*__all__, "__version__"])
