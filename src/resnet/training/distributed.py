"""Several processes training one model: PyTorch's own engine (torchrun + DistributedDataParallel),
and the few collectives the training loop needs around it.

Outside torchrun every function here is the identity (one process is a world of one), so the loop
has a single code path. Under torchrun:
- `--batch-size` is the global batch: each of the N ranks takes batch/N images per step, the
  gradients are averaged, and the learning rate follows the global batch (linear scaling, per 256
  images), so N processes train the model one process would with the same command line;
- rank 0 alone writes files, and every decision that changes the run's course (the epoch plan, an
  early stop) is rank 0's, shared, because ranks that disagreed would wait on each other forever;
- figures (training sums, validation) are reduced over all ranks: each rank validates its own
  slice of the validation set and the counts are summed, exact and with no rank idling.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol  # the differentiable collectives
from torch import nn

from ..errors import ConfigError, TrainingError



def launched() -> bool:
    """Started by torchrun (or anything that sets its environment). The process group is started
    even for a world of one, so a one-GPU launch runs the same DDP code as eight."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def start(device: torch.device) -> tuple[int, int, int]:
    """(rank, world size, local rank); the process group started from torchrun's environment:
    NCCL for CUDA (one device per local rank), Gloo for the CPU."""
    if launched() and not dist.is_initialized():
        me, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        store = attempt_store(me, size)
        if device.type == "cuda":
            dist.init_process_group("nccl", store=store, rank=me, world_size=size, device_id=device)
        else:
            dist.init_process_group("gloo", store=store, rank=me, world_size=size)
    return rank(), world(), int(os.environ.get("LOCAL_RANK", "0"))


def attempt_store(me: int, size: int) -> dist.Store:
    """torchrun's rendezvous store (MASTER_ADDR:MASTER_PORT), as `env://` would open it, seen under
    a prefix of this restart attempt's own. torchrun keeps one store for all attempts (hosted by its
    agent), so a restarted group would otherwise read the previous group's keys, among them its
    ranks' addresses, and fail to connect (gloo's "Connection refused"; pytorch issue 135712)."""
    from datetime import timedelta

    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                          is_master=not agent and me == 0, timeout=timedelta(minutes=30), multi_tenant=not agent)
    return dist.PrefixStore(f"resnet/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def stop(together: bool = False) -> None:
    """The process group torn down in order: where every rank leaves at the same point (a finished
    run, a signal's stop) each first waits for the others (none destroys its side while a peer
    still talks to it), the objects that hold work of the group are freed while it still exists,
    then the group goes. A rank that exited while its peers were tearing down once aborted in
    Gloo's threads ("terminate called without an active exception") and failed a finished job. On
    an error no rank waits: a peer may never come."""
    if dist.is_initialized():
        if together:
            barrier()
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def per_rank_batch(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ConfigError(f"--batch-size {batch_size} is the global batch: it must divide evenly over "
                          f"{world_size} processes (e.g. {batch_size // world_size * world_size or world_size})")
    return batch_size // world_size


def _collective_tensor(values: list[int], device: torch.device) -> torch.Tensor:
    """`values` where the backend's collectives take them: on the GPU for NCCL, the CPU for Gloo."""
    return torch.tensor(values, dtype=torch.long, device=device if dist.get_backend() == "nccl" else "cpu")


def from_rank0(values: list[int], device: torch.device) -> list[int]:
    """Rank 0's values on every rank."""
    if not dist.is_initialized():
        return values
    t = _collective_tensor(values, device)
    dist.broadcast(t, 0)
    return t.tolist()


def largest(value: int, device: torch.device) -> int:
    """The largest of every rank's `value` (a signal one rank received, 0 where none did)."""
    if not dist.is_initialized():
        return value
    t = _collective_tensor([value], device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather(value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def same_on_all_ranks(what: str, value: Any) -> None:
    """Raise on every rank when the ranks do not agree on `value`, instead of training on."""
    values = gather(value)
    if any(v != values[0] for v in values):
        raise TrainingError(f"the processes disagree on {what} ({', '.join(map(str, values))})")


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank. DDP sends them before each
    forward, so after the last step each rank holds the statistics of its own last batch; synced,
    every rank validates, and ends with, the very weights rank 0 saves."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the global batch of all ranks, for the CPU, where torch.nn.SyncBatchNorm has
    no kernels (CUDA runs use that one). The per-channel sums travel in a differentiable
    all_reduce, so the backward pass, like the forward, is that of one process holding the whole
    batch. Two passes (mean, then the squared deviations), as exact as BatchNorm2d's own. Same
    parameters, buffers and state_dict names as BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        x32 = x.float()  # statistics in fp32 whatever autocast hands over
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device)
        total = funcol.all_reduce(torch.cat([x32.sum(dims), count]), "sum", dist.group.WORLD)
        n = total[-1]
        mean = total[:-1] / n
        centred = x32 - mean[None, :, None, None]
        var = funcol.all_reduce(centred.square().sum(dims), "sum", dist.group.WORLD) / n
        with torch.no_grad():  # as BatchNorm2d: running variance unbiased, momentum 0.1
            self.num_batches_tracked.add_(1)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return (centred * scale[None, :, None, None] + self.bias[None, :, None, None]).to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`--sync-bn`: BatchNorm statistics over the global batch instead of each rank's slice of it
    (matters when the per-rank batch is small). torch's SyncBatchNorm on CUDA, ours on the CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            bn = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=child.weight.device)
            bn.load_state_dict(child.state_dict())
            setattr(model, name, bn)
        else:
            sync_batchnorm(child, device)
    return model
