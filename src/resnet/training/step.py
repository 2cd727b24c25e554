"""One training step's two halves, the only ones: the forward with its loss (`forward_loss`) and
the backward with the update (`apply_gradients`). The loop's `take_step`, `resnet benchmark
train` and the time budget's timing all run these, so what is timed is what trains."""

from __future__ import annotations

import torch
from torch import nn

from .. import data as D
from ..data.transforms import normalize
from ..inference.runtime import autocast


def forward_loss(net: nn.Module, criterion: nn.Module, batch: D.Batch, device: torch.device,
                 dtype: torch.dtype | None, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training step's forward: the uint8 batch normalised on the device, the network under
    autocast, the loss in fp32: (loss, logits, labels). Shared with `resnet benchmark train`, so
    that it times the step a run takes."""
    x = normalize(batch.images, device=device, channels_last=channels_last)
    y = batch.labels.to(device, non_blocking=True)
    with autocast(device, dtype):
        logits = net(x)
        loss = criterion(logits.float(), y)
    return loss, logits, y


def apply_gradients(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor) -> None:
    """A training step's backward and update, through the loss scaler (a no-op but for fp16)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
