"""Where and how a model runs, and the one batched inference function.

Every caller that turns images into logits — training's validation, `evaluate`, `Classifier`
(and so `predict`, `serve`, export's verification) and `benchmark infer` — goes through `logits`
below, so the same uint8 batch gives the same numbers whichever door it came in by. Nothing here
imports the training loop: `import resnet` stays light.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol, Sequence

import torch
from torch import nn

from .errors import ConfigError
from .transforms import normalize

if TYPE_CHECKING:
    from .data import Batch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `--amp` (None: fp32). `auto` is bf16 (fp16 on older GPUs) on CUDA and
    fp32 on the CPU: bf16 autocast there is many times slower on CPUs without AVX-512 BF16 / AMX."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def precision_name(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "fp32"


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype`, or nothing at all for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def memory_format(channels_last: bool) -> torch.memory_format:
    """channels_last (NHWC) is oneDNN's and cuDNN's faster convolution layout, and the layout our
    uint8 batches are decoded in."""
    return torch.channels_last if channels_last else torch.contiguous_format


class Net(Protocol):
    """Normalised float32 NCHW batch (on `device`, in `channels_last` when set) -> logits."""

    device: torch.device
    channels_last: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TorchNet:
    """A PyTorch model as a `Net`: no autograd, autocast to `dtype`. The caller keeps the mode
    (training's validation switches its model to eval itself)."""

    model: nn.Module
    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = True

    @classmethod
    def prepare(cls, model: nn.Module, device: torch.device, dtype: torch.dtype | None,
                channels_last: bool) -> "TorchNet":
        """Move `model` to the device and layout and put it in eval mode."""
        model = model.to(device, memory_format=memory_format(channels_last)).eval()
        return cls(model, device, dtype, channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(self.device, self.dtype):
            return self.model(x)

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)


def logits(net: Net, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
           tta: bool = False) -> torch.Tensor:
    """The one inference function: a uint8 NCHW batch -> float32 logits on the CPU. With `tta`,
    the logits of each image and its mirror image are averaged."""
    x = normalize(images, tuple(mean), tuple(std), net.device, net.channels_last)
    out = net(x).float()
    if tta:
        out = (out + net(x.flip(-1)).float()) / 2
    return out.cpu()


def run_eval(net: Net, batches: Iterable[Batch], mean: Sequence[float], std: Sequence[float],
             tta: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """(logits, labels, dataset indices, failures) over a loader's batches, through `logits`."""
    outs, labels, indices, failures = [], [], [], []
    for batch in batches:
        failures += batch.failures
        if len(batch.labels) == 0:
            continue
        outs.append(logits(net, batch.images, mean, std, tta))
        labels.append(batch.labels)
        indices.append(batch.indices)
    if not outs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), failures
    return torch.cat(outs), torch.cat(labels), torch.cat(indices), failures


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
