"""The ResNet family (He et al., 2015) with torchvision's exact `state_dict` layout.

A residual block computes H(x) = F(x) + x. The shortcut is the identity where shapes agree; where
stride or width changes it is a 1x1 convolution + BN ("option B", the ImageNet nets) or, for the
paper's CIFAR nets, a parameter-free subsample-and-zero-pad ("option A"). `residual=False` builds
the paper's "plain" twin: the same layers with no shortcut at all.

Names of modules are a public contract: they must match torchvision's so that its checkpoints load
with `load_state_dict(strict=True)`. Weight loading (files, URLs, torchvision's ImageNet weights)
lives here too, because it is about what a model's keys mean.
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .errors import ConfigError, WeightsError, first_line

log = logging.getLogger(__name__)



def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def whiten_conv(conv: nn.Conv2d, images: Tensor, eps: float, floor: float, chunk_bytes: int) -> None:
    """Sets a first convolution's filters to the principal directions of its input patches, each
    scaled to unit variance, in pairs of opposite sign (so the ReLU after it passes both halves of
    each direction); directions with less than `floor` times the strongest one's variance are left
    out (grey images have none in colour: scaled to unit variance, bf16's rounding would be all
    they carry), and the filters not used keep their random values. From tysam-code's hlb-CIFAR10
    and Keller Jordan's airbench (2024), where this patch-whitening start, kept frozen, is one of
    the largest gains of a short CIFAR-10 run: the first layer begins decorrelated instead of
    having to learn it. `images`: normalised NCHW training images, unfolded into patches
    `chunk_bytes` at a time (a fixed count of images would be ~7 GB of patches at 224 px)."""
    k_h, k_w = conv.kernel_size
    dim = conv.in_channels * k_h * k_w
    covariance = torch.zeros(dim, dim, dtype=torch.float64)
    count = 0
    with torch.no_grad():
        per_image = dim * (images.shape[2] - k_h + 1) * (images.shape[3] - k_w + 1) * 12  # float + double
        for chunk in images.split(max(1, chunk_bytes // per_image)):
            patches = nn.functional.unfold(chunk.float().cpu(), (k_h, k_w)).transpose(1, 2).reshape(-1, dim)
            covariance += patches.T.double() @ patches.double()
            count += len(patches)
        values, vectors = torch.linalg.eigh(covariance / max(count, 1))      # ascending
        k = min(conv.out_channels // 2, int((values >= floor * values[-1]).sum()))
        top = (vectors[:, -k:] / (values[-k:].clamp(min=0) + eps).sqrt()).T.flip(0)  # largest first
        filters = top.reshape(k, conv.in_channels, k_h, k_w).to(conv.weight.dtype)
        conv.weight[: 2 * k] = torch.cat([filters, -filters]).to(conv.weight.device)


# The nonlinearities a block may apply, by the name a checkpoint records (model option `act`):
# ReLU, the paper's, or GELU (airbench's; ResNet-9's since it was measured, constants.py). Neither
# has weights: a state_dict is the same with either.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": partial(nn.ReLU, inplace=True), "gelu": nn.GELU}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}: {' or '.join(ACTIVATIONS)}") from None


class BlurPool(nn.Module):
    """Anti-aliased downsampling (Zhang 2019, "Making Convolutional Networks Shift-Invariant
    Again"): a fixed binomial low-pass filter, [1 2 1] x [1 2 1] / 16, before every second pixel is
    kept, so that a one-pixel shift of the input no longer decides which features survive a
    stride. timm's `BlurPool2d` (mirrored edges, filter size 3); no weights, so a network's
    state_dict is the same with it or without."""

    def __init__(self, channels: int, stride: int = 2):
        super().__init__()
        self.channels, self.stride = channels, stride
        taps = torch.tensor([1.0, 2.0, 1.0]) / 4
        self.register_buffer("filt", (taps[:, None] * taps[None, :]).expand(channels, 1, 3, 3).clone(),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        # A map one pixel across (a small image deep in the network) has no neighbour to mirror,
        # and F.pad would fail: its edges are repeated instead (a single pixel is then kept as is).
        mode = "reflect" if min(x.shape[-2:]) > 1 else "replicate"
        x = nn.functional.pad(x, (1, 1, 1, 1), mode=mode)
        return nn.functional.conv2d(x, self.filt, stride=self.stride, groups=self.channels)


class PadShortcut(nn.Module):
    """The paper's option A: subsample spatially, zero-pad the new channels; no parameters, so the
    CIFAR nets keep the paper's sizes (0.27M for ResNet-20)."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride, self.extra_channels = stride, extra_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions: ResNet-18/34 and the CIFAR nets (the tutorial's `ResidualBlock`)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 residual: bool = True, act: str = "relu", blur: bool = False):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        blur = blur and stride > 1  # `blur`: the stride taken by a `BlurPool` after the first conv
        self.conv1 = conv3x3(inplanes, planes, 1 if blur else stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = activation(act)
        self.aa = BlurPool(planes, stride) if blur else None
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        if self.aa is not None:
            out = self.aa(out)
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand: ResNet-50/101/152. The stride sits on the 3x3 convolution
    (torchvision's "v1.5"), which is more accurate than the paper's stride on the first 1x1.
    `groups` and `width_per_group` give ResNeXt and the wide ResNets."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 residual: bool = True, blur: bool = False):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        blur = blur and stride > 1  # as in BasicBlock, after the 3x3 convolution that had the stride
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, 1 if blur else stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.aa = BlurPool(width, stride) if blur else None
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        if self.aa is not None:
            out = self.aa(out)
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """A stem, one stage per entry of `layers` (widths doubling, stride 2 from the second stage on),
    global average pooling and a linear classifier.

    stem="imagenet": 7x7/2 conv + BN + ReLU + 3x3/2 max-pool (torchvision).
    stem="deep": three 3x3 convs (the first stride 2; half, half, then full width) + BN + ReLU +
    3x3/2 max-pool: ResNet-C of "Bag of Tricks" (He et al. 2019), timm's `stem_type="deep"`.
    stem="cifar": 3x3/1 conv + BN + ReLU and no pool, for small images; with the ImageNet widths
    this is the tutorial's network.
    shortcut="B": 1x1 conv + BN where the shape changes; "A": zero padding (the paper's CIFAR nets).
    avg_down: shortcut B's stride taken by a 2x2 average pool before a stride-1 1x1 conv, which then
    sees every input pixel instead of a quarter of them (ResNet-D, ibid.; timm's `avg_down`).
    State-dict names are timm's for its `resnet18d`...: `conv1.0/.1/.3/.4/.6`, `downsample.1/.2`.
    blur: anti-aliased downsampling (`BlurPool`) wherever the residual branch and the stem halve
    the resolution: the strided 3x3 convolution runs at stride 1 and is blurred and subsampled
    after its ReLU; the stem's max-pool runs at stride 1 and is blurred and subsampled (timm's
    `aa_layer=BlurPool2d`, its resnetblur18...). The shortcut keeps its strided 1x1 convolution.
    No weights are added: the state_dict is the network's without it.
    """

    def __init__(self, block: Block, layers: list[int], num_classes: int = 1000,
                 stem: str = "imagenet", widths: tuple[int, ...] = (64, 128, 256, 512),
                 shortcut: str = "B", residual: bool = True, zero_init_residual: bool = False,
                 groups: int = 1, width_per_group: int = 64, avg_down: bool = False, blur: bool = False):
        super().__init__()
        if stem not in ("imagenet", "deep", "cifar"):
            raise ValueError(f"stem must be 'imagenet', 'deep' or 'cifar', not {stem!r}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', not {shortcut!r}")
        if len(widths) != len(layers):
            raise ValueError("one width per stage is needed")
        self.groups, self.base_width = groups, width_per_group
        self.shortcut, self.residual, self.avg_down, self.blur = shortcut, residual, avg_down, blur
        self.inplanes = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
        elif stem == "deep":
            mid = max(1, self.inplanes // 2)
            self.conv1 = nn.Sequential(conv3x3(3, mid, stride=2), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                                       conv3x3(mid, mid), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                                       conv3x3(mid, self.inplanes))
        else:
            self.conv1 = conv3x3(3, self.inplanes)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        if stem == "cifar":
            self.maxpool = nn.Identity()
        elif blur:
            self.maxpool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), BlurPool(self.inplanes, 2))
        else:
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        for i, (width, blocks) in enumerate(zip(widths, layers)):
            stage = self._make_layer(block, width, blocks, stride=1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", stage)
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = widths[-1] * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            # Each block then starts as the identity (+ ReLU): the deep net begins as a shallow one.
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        if self.residual and (stride != 1 or self.inplanes != out_planes):
            if self.shortcut == "B" and self.avg_down:
                pool = (nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1
                        else nn.Identity())
                downsample = nn.Sequential(pool, conv1x1(self.inplanes, out_planes), nn.BatchNorm2d(out_planes))
            elif self.shortcut == "B":
                downsample = nn.Sequential(conv1x1(self.inplanes, out_planes, stride),
                                           nn.BatchNorm2d(out_planes))
            else:
                downsample = PadShortcut(stride, out_planes - self.inplanes)
        opts = dict(groups=self.groups, base_width=self.base_width, residual=self.residual, blur=self.blur)
        layers = [block(self.inplanes, planes, stride, downsample, **opts)]
        self.inplanes = out_planes
        layers += [block(self.inplanes, planes, **opts) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map (before pooling): what Grad-CAM and feature extraction read."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


class ConvPool(nn.Module):
    """A 3x3 convolution and a 2x2 max-pool: how ResNet-9 halves the resolution (a pool after a
    stride-1 convolution sees every position, where a strided convolution skips 3 in 4).

    `pool_first`: BN and ReLU after the pool (airbench's order; Page's first network pooled last),
    so they run on a quarter of the pixels. ReLU commutes with a max-pool; BN does not quite (its
    statistics are of the pooled map, and a negative scale would turn the max into a min), so it is
    a slightly different network, and as good per epoch. Half-width training step at 32 px, batch
    128, fp32, 2-core Xeon: 1.13-1.15x the images a second; the small-image recipe on CIFAR-10,
    held-out 5,000 with flip TTA, pooling first against last: 85.78 / 85.12 % after 3 epochs,
    89.50 / 89.28 % after 8.
    Modules are registered in the order they run, so that BatchNorm folding (which folds a BN into
    the convolution registered just before it) leaves a BN behind a pool unfolded."""

    def __init__(self, inplanes: int, planes: int, pool_first: bool = True, act: str = "relu"):
        super().__init__()
        self.pool_first = pool_first
        self.conv = conv3x3(inplanes, planes)
        if pool_first:
            self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = activation(act)
        if not pool_first:
            self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool_first:
            return self.relu(self.bn(self.pool(self.conv(x))))
        return self.pool(self.relu(self.bn(self.conv(x))))


class ResNet9(nn.Module):
    """The 9-layer residual network of the DAWNBench CIFAR-10 records (David Page, myrtle.ai, "How
    to train your ResNet", 2018; the base of Keller Jordan's airbench): a 3x3 stride-1 stem, three
    stages that each widen and halve the resolution with `ConvPool`, a residual `BasicBlock` after
    the first and the last, global max-pooling and a linear classifier whose logits are scaled by
    1/8 (Page's scale: it keeps early softmax outputs soft at high learning rates). Wide and
    shallow: at 32 px it is ~9 layers of large matrix products, where the paper's ResNet-56 is 56
    thin ones, which suits a CPU's vector units and short budgets. `act`: GELU after every BN, as
    airbench has it (Page's ReLU for files written before; the figures are in constants.py)."""

    LOGIT_SCALE = 0.125

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (64, 128, 256, 512),
                 zero_init_residual: bool = False, pool_first: bool = True, act: str = "gelu"):
        super().__init__()
        if len(widths) != 4:
            raise ValueError("ResNet-9 takes 4 widths: the stem's and one per stage")
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = activation(act)
        self.layer1 = nn.Sequential(ConvPool(widths[0], widths[1], pool_first, act),
                                    BasicBlock(widths[1], widths[1], act=act))
        self.layer2 = nn.Sequential(ConvPool(widths[1], widths[2], pool_first, act))
        self.layer3 = nn.Sequential(ConvPool(widths[2], widths[3], pool_first, act),
                                    BasicBlock(widths[3], widths[3], act=act))
        self.num_stages = 3
        self.pool = nn.AdaptiveMaxPool2d((1, 1))
        self.num_features = widths[3]
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.forward_features(x)), 1)) * self.LOGIT_SCALE


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]
    input_size: int           # native resolution: what GFLOPs are quoted at and what img_size defaults to
    default_classes: int
    imagenet_url: str | None = None
    options: dict = field(default_factory=dict)
    # Options whose default changed: {option: the value files written before the change were built
    # with}. A checkpoint records them (`recorded_options`), so that one without them is known to
    # be older and loads as it was trained (`options_of_file`).
    changed: dict = field(default_factory=dict)


_TV = "https://download.pytorch.org/models/"
_IMAGENET_URLS = {  # torchvision's IMAGENET1K_V1 weights
    "resnet18": _TV + "resnet18-f37072fd.pth",
    "resnet34": _TV + "resnet34-b627a593.pth",
    "resnet50": _TV + "resnet50-0676ba61.pth",
    "resnet101": _TV + "resnet101-63fe2227.pth",
    "resnet152": _TV + "resnet152-394f9c45.pth",
    "resnext50_32x4d": _TV + "resnext50_32x4d-7cdf4587.pth",
    "resnext101_32x8d": _TV + "resnext101_32x8d-8ba56ff5.pth",
    "wide_resnet50_2": _TV + "wide_resnet50_2-95faca4d.pth",
    "wide_resnet101_2": _TV + "wide_resnet101_2-32ee1156.pth",
}
_IMAGENET_NETS: dict[str, tuple[Block, list[int], dict]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], {}),
    "resnet34": (BasicBlock, [3, 4, 6, 3], {}),
    "resnet50": (Bottleneck, [3, 4, 6, 3], {}),
    "resnet101": (Bottleneck, [3, 4, 23, 3], {}),
    "resnet152": (Bottleneck, [3, 8, 36, 3], {}),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], {"groups": 32, "width_per_group": 4}),
    "resnext101_32x8d": (Bottleneck, [3, 4, 23, 3], {"groups": 32, "width_per_group": 8}),
    "wide_resnet50_2": (Bottleneck, [3, 4, 6, 3], {"width_per_group": 128}),
    "wide_resnet101_2": (Bottleneck, [3, 4, 23, 3], {"width_per_group": 128}),
}
CIFAR_DEPTHS = (20, 32, 44, 56, 110)  # the paper's CIFAR-10 nets, 6n + 2 layers

_REGISTRY: dict[str, ModelSpec] = {}


def _register(name: str, block: Block, layers: list[int], input_size: int, classes: int,
              url: str | None = None, **fixed) -> None:
    build = partial(ResNet, block, layers, **fixed)
    _REGISTRY[name] = ModelSpec(name, build, input_size, classes, url, fixed)


for _name, (_block, _layers, _opts) in _IMAGENET_NETS.items():
    _register(_name, _block, _layers, 224, 1000, _IMAGENET_URLS[_name], **_opts)
    _register("plain_" + _name, _block, _layers, 224, 1000, residual=False, **_opts)
# timm's variants, under its names and with its state-dict names (no torchvision weights): ResNet-D
# (He et al. 2019, "Bag of Tricks": the deep stem and the average-pooled downsampling shortcut),
# resnet18d...; anti-aliased downsampling (Zhang 2019), resnetblur18..., whose weights are the
# network's without it; and both, resnetblur18d...
for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    _block, _layers, _opts = _IMAGENET_NETS[_name]
    _blur = "resnetblur" + _name[len("resnet"):]
    _register(_name + "d", _block, _layers, 224, 1000, stem="deep", avg_down=True, **_opts)
    _register(_blur, _block, _layers, 224, 1000, blur=True, **_opts)
    _register(_blur + "d", _block, _layers, 224, 1000, stem="deep", avg_down=True, blur=True, **_opts)
for _depth in CIFAR_DEPTHS:
    _n = (_depth - 2) // 6  # 6n+2 layers: 3 stages of n blocks of 2 convs, the stem and fc
    _cifar = dict(stem="cifar", widths=(16, 32, 64), shortcut="A")
    _register(f"resnet{_depth}", BasicBlock, [_n] * 3, 32, 10, **_cifar)
    _register(f"plain{_depth}", BasicBlock, [_n] * 3, 32, 10, residual=False, **_cifar)
# The tutorial's network: ResNet-18's stages behind a 3x3 stride-1 stem with no max-pool.
_register("resnet18_seed", BasicBlock, [2, 2, 2, 2], 224, 2, stem="cifar")
_register("plain_resnet18_seed", BasicBlock, [2, 2, 2, 2], 224, 2, stem="cifar", residual=False)
_REGISTRY["resnet9"] = ModelSpec("resnet9", ResNet9, 32, 10, options={"widths": (64, 128, 256, 512)},
                                 changed={"pool_first": False, "act": "relu"})
# ResNet-9 with its capacity in the middle, as airbench94 (Jordan 2024) places it: the second
# stage as wide as the third (32, 64, 256, 256 at half width: 2.0M parameters, airbench94's 1.97M,
# 1.33-1.35x half-width ResNet-9's bf16 step). What the small-image recipe trains for fixed epochs. No file
# predates it, so every one records `pool_first` and `act` at today's values: they keep loading as
# trained after ResNet9's next change of default.
_M_WIDTHS = (64, 128, 512, 512)
_REGISTRY["resnet9m"] = ModelSpec("resnet9m", partial(ResNet9, widths=_M_WIDTHS), 32, 10,
                                  options={"widths": _M_WIDTHS}, changed={"pool_first": True, "act": "gelu"})


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose from: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int | None = None, pretrained: str | None = None,
                 width: float = 1.0, **options) -> nn.Module:
    """`num_classes` defaults to the family's own (1000 for ImageNet nets, 10 for CIFAR nets,
    2 for the tutorial's). `width` scales every stage's channels (0.5: a quarter of the compute,
    for small CPUs; only 1.0 matches published weights). `pretrained`: see `load_pretrained`."""
    spec = model_spec(name)
    if width != 1.0:
        base = spec.options.get("widths", (64, 128, 256, 512))
        options["widths"] = tuple(max(1, int(round(w * width))) for w in base)
    model = spec.build(num_classes=num_classes or spec.default_classes, **options)
    if pretrained:
        load_pretrained(model, pretrained, name)
    return model


def recorded_options(name: str, options: dict) -> dict:
    """`options` as a checkpoint of a new `name` model records them: every option whose default
    changed is written down at today's default (the builder's), so the file keeps loading as it
    was trained after the next change."""
    spec = _REGISTRY.get(name)
    if spec is None:
        return options
    defaults = inspect.signature(spec.build).parameters
    return {**{key: defaults[key].default for key in spec.changed}, **options}


def options_of_file(name: str, options: dict) -> dict:
    """A checkpoint's model options, with each option it does not record at the value models had
    before that option's default changed (the file is older than the change)."""
    spec = _REGISTRY.get(name)
    return {**spec.changed, **options} if spec is not None else options


# ---------------------------------------------------------------------------------------------
# Weights

_PREFIXES = ("module.", "_orig_mod.")  # left by DistributedDataParallel and torch.compile


def clean_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def _fetch_url(url: str) -> dict[str, Tensor]:
    """torch.hub's cache and download; `check_hash` verifies the sha256 prefix that torchvision
    puts in its file names (`resnet18-f37072fd.pth`)."""
    name = url.rsplit("/", 1)[-1]
    check = re.search(r"-([a-f0-9]{6,})\.", name) is not None
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=check,
                                                  weights_only=True, progress=False)
    except RuntimeError as e:  # hash mismatch
        raise WeightsError(f"{url}: {e}") from e
    except OSError as e:
        raise WeightsError(f"cannot download {url}: {e}") from e


def read_weights(src: str, arch: str | None = None) -> dict[str, Tensor]:
    """A state_dict from a local .pth/.pt/.safetensors file, an http(s)/file URL, or "imagenet"
    (torchvision's official weights for `arch`). Our own checkpoints are accepted too."""
    return read_pretrained(src, arch)[0]


def read_pretrained(src: str, arch: str | None = None) -> tuple[dict[str, Tensor], int | None]:
    """(the state_dict `read_weights` reads, the size its model was evaluated at where the file
    says: our checkpoints and safetensors exports carry a model card; torchvision's files do not)."""
    size = None
    if src == "imagenet":
        url = model_spec(arch).imagenet_url if arch else None
        if not url:
            raise WeightsError(f"no ImageNet weights are published for {arch!r}")
        state = _fetch_url(url)
    elif re.match(r"^(https?|file)://", src):
        state = _fetch_url(src)
    else:
        state, size = _read_file(src)
    if isinstance(state, dict):
        size = size or (state.get("eval_size") if isinstance(state.get("eval_size"), int) else None)
        for key in ("model", "state_dict"):  # our checkpoints, and common training scripts
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{src} does not hold a state_dict of tensors")
    return clean_state_dict(state), size


def _read_file(src: str) -> tuple[object, int | None]:
    """(what a weights file holds, the evaluation size in a safetensors file's metadata)."""
    path = Path(src)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {src}")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                size = (f.metadata() or {}).get("eval_size", "")
                return {k: f.get_tensor(k) for k in f.keys()}, int(size) if size.isdigit() else None
        return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise WeightsError(f"cannot read weights from {src}: {first_line(e)}") from e


def fit_weights(model: nn.Module, weights: dict[str, Tensor], src: str, arch: str | None = None
                ) -> tuple[dict[str, Tensor], list[str]]:
    """(the weights to load into `model`, the head keys left out): every key and shape must match,
    except a classifier for another number of classes, which is left out (fine-tuning to new
    classes). Shapes only: `model` may live on the meta device, so this check costs nothing."""
    own = model.state_dict()
    head: list[str] = []
    if ("fc.weight" in weights and "fc.weight" in own
            and weights["fc.weight"].shape[1:] == own["fc.weight"].shape[1:]
            and weights["fc.weight"].shape[0] != own["fc.weight"].shape[0]):
        head = [k for k in ("fc.weight", "fc.bias") if k in weights]
        weights = {k: v for k, v in weights.items() if k not in head}
    missing = sorted(set(own) - set(weights) - set(head))
    unexpected = sorted(set(weights) - set(own))
    wrong = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in weights and weights[k].shape != own[k].shape]
    problems = []
    for what, items in (("wrong shapes", wrong), ("missing keys", missing), ("unexpected keys", unexpected)):
        if items:
            problems.append(f"{what}: " + "; ".join(items[:8]) + (" ..." if len(items) > 8 else ""))
    if problems:
        raise WeightsError(f"weights from {src} do not fit {arch or 'the model'}: " + " | ".join(problems))
    return weights, head


def load_pretrained(model: ResNet, weights: str | dict[str, Tensor], arch: str | None = None,
                    source: str | None = None) -> list[str]:
    """Load weights (a source for `read_weights`, or what it returned) as `fit_weights` allows.
    Returns the keys that were not loaded (a replaced classifier)."""
    src = source or (weights if isinstance(weights, str) else "the weights")
    given = read_weights(weights, arch) if isinstance(weights, str) else weights
    state, head = fit_weights(model, given, src, arch)
    if head:
        log.warning("pretrained head has %d classes, the model %d: replacing the classifier (fc)",
                    given["fc.weight"].shape[0], model.fc.out_features)
    model.load_state_dict(state, strict=False)
    return head


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(name: str, img_size: int | None = None) -> tuple[int, float]:
    """(parameters, GFLOPs) of one image at the native size: every convolution (a `BlurPool`'s
    filter too) and the classifier, counted from the shapes they produce in a forward pass on the
    meta device (what torch's FlopCounterMode counts, without computing anything). A multiply-add
    counts as 2 FLOPs (torchvision's tables count it as 1)."""
    size = img_size or model_spec(name).input_size
    with torch.device("meta"):
        model = create_model(name)
    flops = []

    def count(module: nn.Module, args: tuple, out: Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            flops.append(2 * out[0].numel() * module.in_channels // module.groups * kh * kw)
        elif isinstance(module, BlurPool):  # a 3x3 filter per channel
            flops.append(2 * out[0].numel() * 9)
        else:
            flops.append(2 * module.in_features * module.out_features)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, BlurPool))]
    model.eval()(torch.empty(1, 3, size, size, device="meta"))
    for hook in hooks:
        hook.remove()
    return count_params(model), sum(flops) / 1e9
