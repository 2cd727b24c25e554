"""Every list of allowed values, and the named recipes (presets), defined once: the command line,
the checks of `config.make_config` and the decisions of `policy` all read them from here. No torch
here, so that `resnet --help` stays fast."""

from __future__ import annotations

from typing import Any

DEVICES = ("auto", "cpu", "cuda")
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
# The names a precision is recorded under (config.json, checkpoints, `evaluate`'s JSON, /info).
PRECISIONS = ("fp32", "bfloat16", "float16")
ONNX_ENGINES = ("onnxruntime", "openvino")  # the engines that run an ONNX export
ENGINES = ("auto", "torch", *ONNX_ENGINES)
SCHEDULES = ("onecycle", "cosine", "flat-cos", "step", "constant")
AUGMENTS = ("random-resized-crop", "pad-crop")
# Augmentation policies after the crop, named as torchvision's reference scripts name them
# (`--auto-augment ta_wide`: TrivialAugment Wide).
AUTO_AUGMENTS = ("none", "ta_wide")
PADDING_MODES = ("constant", "reflect")  # pad-crop's, named as torchvision's RandomCrop names them
# How training counters imbalanced classes (`--class-balance`): auto plans it from the data
# (constants.CLASS_BALANCE_PLANNED where the classes are imbalanced, none where not); sampler
# draws each class equally often, reweight weighs each image's loss by 1 / its class's share
# (scikit-learn's class_weight="balanced"), logit-adjust adds the log class priors to the logits
# in the loss (Menon et al. 2021).
CLASS_BALANCE = ("auto", "none", "sampler", "reweight", "logit-adjust")
EXPORT_FORMATS = ("onnx", "safetensors")
QUANTIZE = ("int8",)
BENCHMARKS = ("train", "infer", "data")
# The smallest input side trained or evaluated: the ImageNet stem down-samples 32x, and below this
# leaves nothing to pool.
MIN_IMG_SIZE = 16
# The largest channel multiplier a model (or a checkpoint's model options) may ask for: 4x the
# published widths is already 16x the compute; a crafted file asking for 1000x would take ~24 GB.
MAX_WIDTH = 4.0
# Evaluation's centre crop keeps this fraction of the resized side: 224/256, the tutorial's
# Resize(256) -> CenterCrop(224), for any size.
CROP_PCT = 0.875

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # The tutorial exactly: its network at 224, its PREPROCESS for training too, batch 8,
    # plain SGD lr 0.01, CrossEntropy, 10 epochs.
    "seed": dict(arch="resnet18_seed", width=1.0, img_size=224, min_img_size=224, eval_size=224, batch_size=8,
                 lr=0.01 * 256 / 8,
                 momentum=0.0, nesterov=False, weight_decay=0.0, schedule="constant",
                 warmup_epochs=0.0, label_smoothing=0.0, train_like_eval=True, hflip=False,
                 channels_last=False, epochs=10),
    # The ResNet paper's CIFAR-10 recipe (section 4.2): batch 128, SGD lr 0.1 (0.2 per 256),
    # momentum 0.9, weight decay 1e-4, lr / 10 at 32k and 48k of 64k iterations (half and three
    # quarters of the run), 45k/5k split, 4-px padding + random 32 px crop + flip, no resizing;
    # 64k iterations of 128 images over 45k images are 182 epochs.
    "cifar-paper": dict(arch="resnet20", width=1.0, img_size=32, min_img_size=32, eval_size=32, crop_pct=1.0,
                        batch_size=128, lr=0.2, momentum=0.9, nesterov=False, weight_decay=1e-4,
                        schedule="step", warmup_epochs=0.0, label_smoothing=0.0, augment="pad-crop",
                        val_split=0.1, epochs=182),
    # Fine-tuning ImageNet weights: full resolution, a twentieth of the learning rate, short; planned
    # from the pretrained file and the folder where they say more (recipe.plan_finetune).
    "finetune": dict(width=1.0, img_size=224, min_img_size=224, eval_size=224, lr=0.02, epochs=5, warmup_epochs=0.5,
                     scale_min=0.35, weight_decay=1e-4),
}
