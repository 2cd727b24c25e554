"""`resnet benchmark`: images per second through the same code paths that train and predict use."""

from __future__ import annotations

import functools
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import data as D
from .checkpoint import save_checkpoint
from .constants import PROBE_BATCH
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, normalize
from .device import check_step_memory, pick_device
from .errors import ConfigError, DataError
from .inference import policy, runtime
from .inference.predict import Classifier
from .models import create_model
from .options import BENCHMARKS
from .training.budget import step_seconds
from .training.config import TrainConfig, check_range
from .training.step import apply_gradients, forward_loss
from .training.optim import make_optimizer


def benchmark(task: str, root: str | None = None, *, arch: str = "resnet18", img_size: int = 224,
              batch_size: int | None = None, steps: int = 10, workers: int = 0, cache: bool = False,
              cache_dir: str | None = None, normalized: bool = False, device: str = "auto", amp: str = "auto",
              channels_last: bool = True, width: float = 1.0, compile: bool = False, engine: str = "auto"
              ) -> dict[str, Any]:
    """`resnet benchmark TASK` (`options.BENCHMARKS`): `bench_data` over the images under `root`,
    or `bench_network`, each value checked as its flag. `batch_size` left out: 64 images for `data`
    (a loader's batch), 32 for `train` and `infer`."""
    if task not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {task!r}; choose from: {', '.join(BENCHMARKS)}")
    check_range("img_size", img_size)
    if task == "data":
        if not root:
            raise DataError("benchmark data needs an image folder")
        return bench_data(root, img_size, workers, batch_size or 64, cache, cache_dir, normalized)
    return bench_network(task, arch, img_size, batch_size or 32, steps, device, amp, channels_last, width, compile,
                       engine)


def bench_data(root: str, img_size: int = 224, workers: int = 0, batch_size: int = 64,
               cache: bool = False, cache_dir: str | None = None, normalized: bool = False) -> dict[str, Any]:
    """The eval pipeline (decode -> resize -> crop -> uint8 batch) over every image under `root`;
    with `cache`, from the decoded cache (built first when missing, not timed). The uint8 batch is
    what training and evaluation receive: they normalise it on their device (on a GPU, for free).
    `normalized` counts that step too, done here on the CPU, as torchvision's pipeline does it."""
    split = D.discover(root, val_split=0)
    tf = EvalTransform.for_size(img_size)
    store = (D.build_cache(split.train, cache_dir or D.default_cache_dir(), tf.resize_size, crop=tf)
             if cache else None)
    loader = D.make_loader(D.ImageDataset(split.train, tf, store), batch_size, False, workers)
    n, t = 0, time.perf_counter()
    for batch in loader:
        n += len(normalize(batch.images, channels_last=True) if normalized else batch.images)
    seconds = time.perf_counter() - t
    return {"task": "data", "images": n, "seconds": seconds, "images_per_second": n / seconds,
            "workers": workers, "img_size": img_size, "batch_size": batch_size, "cache": cache, "normalized": normalized}


def bench_network(task: str, arch: str = "resnet18", img_size: int = 224, batch_size: int = 32,
                steps: int = 10, device: str = "auto", amp: str = "auto", channels_last: bool = True,
                width: float = 1.0, compile: bool = False, engine: str = "auto") -> dict[str, Any]:
    """Training steps (forward, backward, SGD) or inference on random uint8 batches, after 3
    warm-up steps (which also pay for compilation with `compile`). Inference is a `Classifier`
    loaded from a checkpoint of the model, as a long-lived one (`serve`) loads it, through
    `runtime.logits`, the function every predict, evaluate and serve call goes through."""
    dev = pick_device(device)
    # Before any tensor: a batch that cannot fit is one line, not the kernel's OOM kill.
    check_step_memory(arch, width, img_size, 1000, dev, batch_size, batch_size, training=task == "train")
    model = create_model(arch, num_classes=1000, width=width)
    model = model.to(dev, memory_format=runtime.memory_format(channels_last))
    with tempfile.TemporaryDirectory() as work:
        if task == "train":  # as `train` sets it up: BatchNorm kept, precision chosen on training steps
            precision = _training_precision(amp, model, dev, img_size, channels_last, batch_size)
            net = runtime.TorchNet(torch.compile(model) if compile else model, dev, precision.dtype, channels_last)
            step = _train_step(net, model, batch_size, img_size)
            chosen = {"amp": precision.name, "precision_reason": precision.reason}
        else:
            # A model runs in the precision it recorded in training: that choice made as `train` makes
            # it, timed on a probe batch (inference's batch may be more than a training step can hold).
            trained = (_training_precision(amp, model, dev, img_size, channels_last, min(batch_size, PROBE_BATCH))
                       .record() if amp == "auto" else None)
            clf = _classifier(model, arch, width, img_size, Path(work), device, amp, channels_last, compile, engine,
                              trained)
            x = torch.randint(0, 256, (batch_size, 3, img_size, img_size), dtype=torch.uint8)
            step = functools.partial(runtime.logits, clf.net, x, clf.mean, clf.std)
            info = clf.describe()
            why = f"{info['precision_reason']}: what a model trained here records ({trained['reason']})" if trained \
                else info["precision_reason"]
            chosen = {"amp": info["precision"], "precision_reason": why,
                      "engine": clf.engine.name, "engine_reason": clf.engine.reason}
        seconds = _timed(step, steps, dev)
    return {"task": task, "arch": arch, "width": width, "img_size": img_size, "batch_size": batch_size,
            "channels_last": channels_last, "compile": compile, "device": dev.type, **chosen,
            "images_per_second": batch_size * steps / seconds, "seconds": seconds}


def save_benchmark_checkpoint(path: Path, model: torch.nn.Module, arch: str, img_size: int, width: float = 1.0,
                              precision: dict[str, str] | None = None) -> Path:
    """`model` (random weights) as a checkpoint of 1,000 numbered classes evaluated at `img_size`
    (trained in `precision`, a `Precision.record()`, where given): what the benchmarks load,
    export and time as they would a user's."""
    save_checkpoint(path, {"model": model.state_dict(), "arch": arch, "model_options": {"width": width},
                           "classes": [str(i) for i in range(1000)], "eval_size": img_size,
                           "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                           **({"precision": precision} if precision else {})})
    return path


def _training_precision(amp: str, model: torch.nn.Module, dev: torch.device, img_size: int, channels_last: bool,
                        batch_size: int) -> policy.Precision:
    """The precision `train --amp AMP` would choose for `model` here (timed training steps where the
    CPU has bf16 kernels). Inference is measured in it too: a model records it and runs in it, where
    a random-weights model recording none would run by capability (fp32 on a Zen 4 CPU, whose
    training measures bf16 1.9x faster and records it)."""
    timer = functools.partial(step_seconds, model, img_size, dev, channels_last, batch_size)
    return policy.choose_precision(amp, dev, timer)


def _classifier(model: torch.nn.Module, arch: str, width: float, img_size: int, work: Path, device: str, amp: str,
                channels_last: bool, compile: bool, engine: str, precision: dict[str, str] | None) -> Classifier:
    """`model` saved as a checkpoint in `work` (trained in `precision`) and loaded as `serve` loads
    one (ONNX exports kept in `work` too, so that the user's cache is left alone)."""
    path = save_benchmark_checkpoint(work / "model.pt", model, arch, img_size, width, precision)
    return Classifier.from_checkpoint(path, device, amp, channels_last, compile, engine, math.inf, work)


def _timed(step: Callable[[], Any], steps: int, dev: torch.device) -> float:
    """Seconds for `steps` calls of `step`, after 3 untimed ones."""
    for _ in range(3):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def _train_step(net: runtime.TorchNet, model: torch.nn.Module, batch_size: int, img_size: int) -> Callable[[], None]:
    """One training step as `train` takes it (the loop's own forward and update, the run's
    optimiser and loss scaler) on a random uint8 batch of 1,000 classes."""
    model.train()
    batch = D.Batch(torch.randint(0, 256, (batch_size, 3, img_size, img_size), dtype=torch.uint8),
                    torch.randint(0, 1000, (batch_size,)), torch.arange(batch_size), [])
    optimizer = make_optimizer(model, TrainConfig(lr=0.01))
    scaler = torch.amp.GradScaler(net.device.type, enabled=net.dtype == torch.float16)
    return functools.partial(_step, net, torch.nn.CrossEntropyLoss(), batch, optimizer, scaler)


def _step(net: runtime.TorchNet, criterion: torch.nn.Module, batch: D.Batch, optimizer: torch.optim.Optimizer,
          scaler: torch.amp.GradScaler) -> None:
    loss = forward_loss(net.model, criterion, batch, net.device, net.dtype, net.channels_last)[0]
    apply_gradients(optimizer, scaler, loss)
