"""How a model runs — layout, folded BatchNorms, autocast, compile — and the one batched
inference function.

Every caller that turns images into logits — training's validation, `evaluate`, `Classifier`
(and so `predict`, `serve`, export's verification) and `benchmark infer` — goes through `logits`
below, so the same uint8 batch gives the same numbers whichever door it came in by. Nothing here
imports the training loop: `import resnet` stays light.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import normalize

if TYPE_CHECKING:
    from ..data import Batch


def precision_name(dtype: torch.dtype | None) -> str:
    """How a precision is named in records: fp32, bfloat16, float16."""
    return str(dtype).replace("torch.", "") if dtype is not None else "fp32"


def fastest_seconds(jobs: dict[Any, Callable[[], Any]], device: torch.device, rounds: int = 3) -> dict[Any, float]:
    """The fastest of `rounds` timed calls of each job, after one untimed round (kernel choice,
    first-touch memory), the jobs interleaved so that a machine's slow spell falls on all of them:
    the one timer behind every choice made by timing (precision, engine, a budget's sizes)."""
    best = dict.fromkeys(jobs, float("inf"))
    for rnd in range(rounds + 1):
        for key, job in jobs.items():
            t = time.perf_counter()
            job()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rnd:
                best[key] = min(best[key], time.perf_counter() - t)
    return best


def net_seconds(net: "Net", size: int, batch_size: int) -> float:
    """Seconds of one inference batch of `net` at `size`: how the precision and the engine are
    chosen, on the work they will do."""
    x = torch.randn(batch_size, 3, size, size, device=net.device)
    x = x.contiguous(memory_format=memory_format(net.channels_last))
    return fastest_seconds({size: lambda: net(x)}, net.device)[size]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype`, or nothing at all for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def memory_format(channels_last: bool) -> torch.memory_format:
    """channels_last (NHWC) is oneDNN's and cuDNN's faster convolution layout, and the layout our
    uint8 batches are decoded in."""
    return torch.channels_last if channels_last else torch.contiguous_format


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that follows a convolution into that convolution's weights and bias
    (in place; the model must be in eval mode). In inference BatchNorm is a fixed per-channel
    affine map, so the folded convolution computes the same function in one pass over memory
    instead of two. Sibling order is forward order in our models, as in torchvision's; a
    BatchNorm is folded only into a convolution of matching width just before it. Synchronised
    BatchNorms (`--sync-bn`) are plain BatchNorms in eval mode, and fold alike."""
    for parent in model.modules():
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Sequential) and len(conv):  # a deep stem: its last convolution, then bn1
                conv = conv[-1]
            if (type(conv) is nn.Conv2d and isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm))
                    and conv.out_channels == bn.num_features and not bn.training):
                fused = nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                conv.weight, conv.bias = fused.weight, fused.bias
                setattr(parent, bn_name, nn.Identity())
    return model


def compile_for_inference(model: nn.Module) -> nn.Module:
    """torch.compile with Inductor's freezing: the weights become constants, so convolutions run on
    prepacked oneDNN weights with the ReLU and residual add fused in. Measured on the 2-core AVX2
    CPU, ResNet-18 @224 batch 64, against the folded eager model with glibc's heap kept: 1.03x
    (52.0 against 50.7 img/s), after ~15 s of compiling per batch shape: worth it for long runs
    only (docs/benchmarks.md)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # applies to inference graphs only; training is compiled apart
    return torch.compile(model, dynamic=False)


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
        """Move `model` to the device and layout, put it in eval mode and fold its BatchNorms
        (measured in docs/benchmarks.md)."""
        model = fold_batchnorm(model.eval()).to(device, memory_format=memory_format(channels_last))
        return cls(model, device, dtype, channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(self.device, self.dtype):
            return self.model(x)

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)


def tta_views(tta: bool, shift: int) -> int:
    """Forward passes `logits` makes per image: what a validation costs."""
    return (6 if shift else 2) if tta else 1


def logits(net: Net, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
           tta: bool = False, shift: int = 0) -> torch.Tensor:
    """The one inference function: a uint8 NCHW batch -> float32 logits on the CPU. With `tta`,
    the logits of each image and its mirror image are averaged; with a `shift` too, that pair
    counts half and the same pair moved `shift` px down-right and up-left (edges mirrored) a
    quarter each: airbench's translate TTA, for images trained with pad-and-crop shifts."""
    x = normalize(images, tuple(mean), tuple(std), net.device, net.channels_last)
    if not tta:
        return net(x).float().cpu()
    out = _with_mirror(net, x)
    if shift:
        h, w = x.shape[-2:]
        padded = F.pad(x, (shift,) * 4, mode="reflect")
        moved = [padded[..., :h, :w], padded[..., 2 * shift:, 2 * shift:]]
        out = out / 2 + sum(_with_mirror(net, v.contiguous(memory_format=memory_format(net.channels_last)))
                            for v in moved) / 4
    return out.cpu()


def _with_mirror(net: Net, x: torch.Tensor) -> torch.Tensor:
    return (net(x).float() + net(x.flip(-1)).float()) / 2


def run_eval(net: Net, batches: Iterable[Batch], mean: Sequence[float], std: Sequence[float],
             tta: bool = False, shift: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """(logits, labels, dataset indices, failures) over a loader's batches, through `logits`."""
    outs, labels, indices, failures = [], [], [], []
    for batch in batches:
        failures += batch.failures
        if len(batch.labels) == 0:
            continue
        outs.append(logits(net, batch.images, mean, std, tta, shift))
        labels.append(batch.labels)
        indices.append(batch.indices)
    if not outs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), failures
    return torch.cat(outs), torch.cat(labels), torch.cat(indices), failures


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
