"""The optimiser: SGD over parameter groups, weight decay on weights only, and for fine-tuning a
group per stage whose share of the schedule's rate falls below the classifier (`lr_scale`)."""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


# A parameter's stage, counted down from the classifier (0), by the module it is in; anything
# else (the stem) is the bottom stage.
STAGES = {"fc": 0, "layer4": 1, "layer3": 2, "layer2": 3, "layer1": 4}
STEM = 5


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0, by_stage: bool = False
                 ) -> list[dict]:
    """The optimiser's groups: weight decay on weights only (BN scales and shifts, biases are 1-D);
    `by_stage`, a group per stage too, its `lr_scale` `layer_decay` ** its depth below the
    classifier, the classifier's `head` (what trains while the rest is frozen). Without it, the two
    groups every run had before fine-tuning's rates existed (a resumed run's optimiser state fits)."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth = STAGES.get(name.split(".")[0], STEM) if by_stage else 0
        decays = p.ndim > 1
        group = groups.setdefault((depth, decays), {"params": [], "weight_decay": weight_decay if decays else 0.0,
                                                    "lr_scale": layer_decay ** depth, "head": depth == 0})
        group["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def lr_scale(group: dict, epoch: int, freeze_epochs: int) -> float:
    """A group's share of the schedule's rate at `epoch`: none below the classifier while frozen."""
    if epoch < freeze_epochs and not group.get("head", True):
        return 0.0
    return group.get("lr_scale", 1.0)  # groups restored from a checkpoint of before these keys: one rate


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD over `param_groups`, with the fused kernel: one pass over the parameters instead of a
    pass per operation (ResNet-18's step: 9 ms against 16 ms with `foreach` on the 2-core CPU)."""
    by_stage = cfg.layer_decay != 1.0 or cfg.freeze_epochs > 0
    return torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.layer_decay, by_stage), lr=cfg.lr,
                           momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, fused=True)
