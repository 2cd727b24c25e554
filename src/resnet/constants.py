"""Every tuning constant of the data pipeline and the training loop, in one place, with the reason
it has the value it has. Measurements are on the development machine (2 cores, AVX2) unless said
otherwise; docs/training.md and docs/benchmarks.md have the runs behind them."""

# --- Resolution -------------------------------------------------------------------------------

# Evaluate 25 % larger than the training crops: random crops zoom in (scale < 1), so objects
# look larger in training than in a centre crop of the same size (Touvron et al. 2019, "Fixing the
# train-test resolution discrepancy"; timm tests its 224 px ResNets at 288, 1.29x). Measured on the
# final weights of runs already made, scored again at other sizes (crop_pct 0.875; docs/benchmarks.md,
# "More per epoch on the CPU"): eight imagenette-3k runs trained to 128 px for 67-75 epochs (three
# 10-minute runs of the development CPU, seed 0; 67-epoch runs in seeds 0, 1, 3, other held-out
# fifths), 1.25x (160 px) against 1.15x (144): +1.51, +1.17, +0.67, +2.35, +2.01, +0.50, -2.01 and
# +1.00 points, +0.90 on average, higher in 7 of 8 (1.19x, 152 px: +1.00, 7 of 8; 1.31x, 168 px:
# lower in all four scored). Neutral at 96 px: six 16-epoch imagenette runs (three seeds) +0.05 on
# average (-1.18 to +1.17), dogs vs. cats' 20-minute runs (70-75 epochs, its 2,000 photos) -0.10 /
# +0.85. One run's noise (±1.7 points on 598 photos) is larger: the 10-minute run with 1.25x planned
# scored 77.59 %, as the two before it did.
EVAL_SCALE = 1.25

# Progressive resizing starts at this fraction of the final crop size: 64 -> 96 px beat a fixed
# 80 px by ~2 points in the same 20 minutes.
START_SIZE_FRACTION = 2 / 3

# The ramp from the start size to the final one spans these fractions of the run: cheap
# low-resolution epochs while the network learns coarse features, the last ~15 % at full size so
# that it ends trained at the size it is evaluated near (fast.ai; FFCV's ResNet recipes).
RAMP = (0.4, 0.85)

# Crop sizes in between are multiples of this: oneDNN's and cuDNN's kernels like them, and fewer
# distinct sizes mean fewer shapes to time and to compile.
SIZE_STEP = 8

# `--schedule flat-cos` holds the peak learning rate for this fraction of the run, then decays it
# along a cosine (fastai's `fit_flat_cos`, on its Imagenette leaderboard's winning entries). The
# photo recipe's schedule: +1.38 points on average over 4 seeds at 67 epochs, beyond one run's
# noise in 3 (beside SIZE_LADDER). Not for small images: CIFAR-10 at 10 epochs 88.96 / 89.16 %
# against one-cycle's 89.18 / 89.82 %.
FLAT_FRACTION = 0.75

# --- Time budget (--max-minutes) --------------------------------------------------------------

# Kept back for the final evaluation and report: 18 s of a 20-minute run measured on 2 cores.
BUDGET_RESERVE = 0.03

# The first steps pay one-off costs (worker start-up, kernel selection, first-touch memory):
# they are not timed. The plan is made after this many steps...
UNTIMED_STEPS = 2
# ...and first fitted after this many (or at the end of the first epoch, if shorter).
FIRST_FIT_STEPS = 12

# A budget's last epoch may end part-way: a 10-minute run of 2.3-minute epochs (CIFAR-10 on 2 cores)
# otherwise leaves up to an epoch of its minutes unused (measured: 3 epochs in 7.5 of 10 minutes).
# Not for less than this fraction of an epoch: it would pay a whole validation pass for a sliver.
MIN_TAIL = 0.2
# A refit grows the plan only when it would still grow with this fraction of an epoch to spare,
# so timing noise does not shake it. Half an epoch (the whole-epoch plans' margin) kept the part
# epoch from ever being added: CIFAR-10, 10 minutes, 4 epochs of 2 minutes ended at 8.7.
GROW_MARGIN = 0.1

# The plan is refitted every epoch from the median ratio of measured to predicted epoch time over
# this many recent epochs: one epoch can mislead (a slow validation, a busy machine).
REFIT_WINDOW = 5

# A validation batch is this many times a training batch (forward only: no activations are kept
# for a backward pass, so twice the images fit the same memory)...
VAL_BATCH_FACTOR = 2
# ...and costs this fraction of a training step's forward + backward: twice the images, forward
# only (a third of forward + backward).
VAL_BATCH_COST = VAL_BATCH_FACTOR / 3

# --- Model size (--max-minutes with the default preset's size left open) ----------------------

# The (width, final crop px) a time budget may train, cheapest first: the default first, then
# resolution before width (dogs vs. cats: a sharper view of a photo is cheaper than wider layers,
# 1.6x the compute for 96 -> 128 px against 3.2x for width 0.5 -> 1.0), then both up to
# torchvision's 224 px.
SIZE_LADDER = ((0.5, 96), (0.5, 128), (0.75, 128), (1.0, 128), (1.0, 160), (1.0, 192), (1.0, 224))

# Screened for the photo recipe and not taken (ResNet-D, zero-init BN, label smoothing 0.2,
# scale_min, weight decay 2e-4, CutMix, mixup, EMA, blur pooling, GELU), and how flat-cos was
# taken: docs/training.md, "Screened and not kept".
# TrivialAugment Wide after each crop (`--auto-augment ta_wide`, transforms.trivial_augment;
# Müller & Hutter 2021, torchvision's reference recipe): 81.27 / 81.44 % (+3.01 / +2.51), and
# 82.78 / 80.77 % in seeds 2 / 3 (seed 3's default 78.76 %), the training accuracy ending at 78-81 %
# instead of 95 %: taken for sets like it (below). ~0.4 ms of Pillow a crop in the loader.

# TrivialAugment is planned for photos with at most this many training images a class: it is a
# regulariser, and pays where the network over-fits. imagenette-3k (239 a class) ends 67 epochs at
# 95 % training accuracy (on its augmented crops) against 79 % held out, and gains +2.9 points with
# it (above; 10 minutes side by side: 82.11 % with it, 79.26 % without). Dogs vs. cats (4,000 a
# class) ends its 20-minute run at 95.5-95.7 % training accuracy against 94.7-95.2 % held out:
# nothing to regularise. With it, its 20-minute run scored 93.70 % (training accuracy 87 %: held
# back from fitting; that run's budget also took 128 px, 45 epochs), without it 95.15 % (96 px, 79
# epochs). Between the two nothing is measured: the bound sits where ImageNet's classes (1,300 a
# class) begin, which torchvision trains with it only for 600 epochs.
AUTO_AUGMENT_MAX_PER_CLASS = 1000
# ...and, in a run of fixed epochs, only with at least this many: a short run does not over-fit.
# imagenette-3k at 20 epochs (`--epochs 20`, 64 -> 96 px; seeds 0 / 1) scored 68.73 / 67.73 % with
# it against 72.07 / 70.23 % without (-2.9; training accuracy 58 % with it, 75 % without), at 67
# epochs +2.9 (above). The crossing between 20 and 67 is not measured: 40 is about where a straight
# line between the two crosses zero. A budget's epochs are known once its size is timed: it is
# planned again then, by the epochs that size buys (docs/benchmarks.md, "The budget's own plan").
AUTO_AUGMENT_MIN_EPOCHS = 40

# A photo set of at most this many training images a class (on average) gets a plan line pointing
# at --pretrained, with what from scratch and fine-tuning reached (advice: imagenette-3k, 239 a
# class, still reaches 77-84 % from scratch in 10 minutes). Measured from scratch with
# the default plan (`bash benchmarks/few_photos.sh`; 2-core AVX2 EPYC, fp32; the final weights
# scored on photos no run saw), its 10 epochs / `--max-minutes 2`: dogs vs. cats at 10 / 30 / 100 /
# 300 photos a class 50.0 / 50.0 (50.2) / 50.0 / 52.8 (61.2) %, chance being 50 %; imagenette at
# 10 / 30 / 100 / ~240 a class 10.0 / 15.6 (29.6) / 37.4 (61.0) / 58.6 %, chance 10 %; where all
# 4,000 a class of dogs vs. cats reach 95 % and imagenette's 9,469 photos 84 % in 10 minutes.
FEW_PHOTOS_A_CLASS = 300

# Fine-tuning (the `finetune` preset, --pretrained) on a folder whose epoch holds fewer than
# FINETUNE_SMALL_STEPS batches of the preset's: batches of FINETUNE_BATCH at FINETUNE_LR (per 256)
# for FINETUNE_STEPS steps, in at most FINETUNE_MAX_EPOCHS epochs. Measured from a half-width
# ResNet-18 trained on imagenette-3k (120 px) on dogs vs. cats at 30 / 100 photos a class, final
# weights scored on 2,000 other photos, mean of seeds 0 and 1 (docs/benchmarks.md, "A few photos a
# class"): the preset's 5 epochs of 64 at lr 0.02 and 224 px (5 steps for 30 a class) 51.0 / 51.8 %;
# at 112 px, batch 16, 20 epochs: lr 0.02 55.9 / 63.1, 0.05 58.8 / 66.6, 0.2 61.2 / 69.1 % (batch 32:
# 60.5 / 68.8 %); 40 epochs at 0.2 66.1 / 70.7, at 0.4 67.5 / 70.9 %; 80 epochs at 0.2 66.7 / 71.3 %.
# 224 px rather than 112 (20 epochs at 0.02): -2.3 / -5.8 points; 96 or 120 px: within a point.
FINETUNE_SMALL_STEPS = 10
FINETUNE_BATCH = 16
FINETUNE_LR = 0.4
FINETUNE_STEPS = 400
FINETUNE_MAX_EPOCHS = 40

# A larger size is taken only while it still gets this many epochs in the budget (as estimated
# before the run, from timed forward + backward: ~15 % above the epochs the run then gets, whose
# loader and cache the estimate leaves out). Measured on the development CPU: 20 minutes buy the
# default 35-40 epochs (estimated 47) and each extra epoch paid; width 0.75 got 19 and lost 2-3
# points. At ~1.7x that compute (60 minutes on one thread, two runs side by side) the default got 65
# epochs (estimated 76), 93.75 % (final weights 93.65 %), 128 px got 38 (estimated 43), 93.20 %:
# the extra resolution did not pay yet. An AMX CPU's 90 bf16 epochs of the default scored no
# better on held-out photos than its 59 in fp32: past ~60 the small net has had enough.
# At the compute of 10 minutes of the development CPU (67 epochs of 0.5 @ 128 px, imagenette-3k,
# bf16 on a GPU, seeds 0 / 1), the next rungs at the epochs that compute buys them lost: 0.5 @ 128
# 76.76 / 74.75 %, 0.75 @ 128 x 36 epochs 77.26 / 71.74 %, 1.0 @ 128 x 20 72.74 / 67.06 %,
# 1.0 @ 160 x 14 70.40 / 67.73 % (docs/benchmarks.md).
EPOCHS_TO_GROW = 60

# --- The plan from the data (recipe.py) ----------------------------------------------------------

# Headers read to describe a training set's sizes (data/stats.py): the median of 1,000 is within a
# few pixels of the whole's, read in ~0.2 s where 50,000 take ~10 s.
STATS_SAMPLE = 1000

# Images whose median shorter side is at most this are "small" (CIFAR's 32, Tiny ImageNet's 64):
# the ImageNet stem would reduce them to 1-2 px maps by its fourth stage, so they get ResNet-9 at
# native resolution. STL-10's 96 px and the 180 px photos keep the photo recipe.
SMALL_IMAGE_MAX = 64

# The small-image recipe, after Page's ResNet-9 DAWNBench recipe (SGD + Nesterov 0.9, peak lr 0.4,
# weight decay 5e-4, a warm-up then decay) and airbench's label smoothing 0.2 (it keeps a short
# run's confident mistakes cheap), with batches of 128 instead of 512: a CPU trains as many images
# a second either way, and a short run gains from 4x the steps. One epoch of the whole schedule on
# CIFAR-10 (45,000 images, 2-core Xeon, fp32), held-out accuracy: batch 512 at lr 0.2 or 0.4 per
# 256: 53.4-53.6 %; batch 64 at 0.2: 66.4 %; batch 128 at 0.2: 65.7 %, 0.4: 68.7 %, 0.8: 69.9 %,
# 1.6: 69.6 %. So 128 at 0.8 per 256 (a peak of 0.4, Page's).
# Scored with flip TTA (each image averaged with its mirror image, as Page and airbench score):
# CIFAR-10's 5,000 held out, the same checkpoints, +0.58 points after 10 minutes (85.46 -> 86.04 %)
# and +0.92 after 30 (88.72 -> 89.64 %), for one more forward pass of a 32 px image. Photos keep
# single-view scoring: their model is judged as the tutorial's was, and flip TTA did not pay there
# (imagenette-3k, today's 10-minute model, its 598 held out: 77.59 % one view, 77.26 % with TTA).
# With fixed epochs, small images are also scored with the mirror pair shifted this many pixels
# down-right and up-left (airbench's translate TTA, `runtime.logits`): the same final weights of
# three 10-epoch CIFAR-10 runs (the 45,000 / 5,000 split; seeds 0, 1 on one thread each, seed 0 on
# two), flip TTA 90.00 / 90.30 / 89.70 %, with the shifted pairs 90.14 / 90.54 / 90.14 %: +0.27
# points, in 3 of 3. Not with a time budget: validation then takes 3x the forward passes (~22 %
# of a CIFAR-10 epoch's compute instead of ~7 %), ~12 % of the epochs, worth more than the views.
# Screened and not kept (an EMA of the weights, pairs shifted 2 px): docs/training.md, "Screened
# and not kept".
TTA_SHIFT = 1

# ResNet-9 applies GELU where Page's had ReLU (models.ResNet9 `act`, airbench's nonlinearity; a
# model option, so files written before load with ReLU). 10 epochs of this recipe on CIFAR-10 (the
# 45,000 / 5,000 split; one thread a run, the same seeds side by side; final weights scored with
# flip TTA / with the shifted pairs too): seed 0 ReLU 90.00 / 90.14 %, GELU 90.46 / 90.62; seed 1
# 90.30 / 90.54, GELU 90.34 / 90.74; seed 2 90.02 / 90.14, GELU 90.70 / 90.78: +0.44 points with
# the shifted pairs, higher in 3 of 3 seeds (one view, seed 2: 89.34 -> 90.48 %), for 1.06x the
# half-width bf16 step (one thread: 355-359 against 376-386 ms). CELU(0.3) had lost at 3 epochs
# (below), and so GELU was screened where the runs end, not where they start.
# Screened and not kept (a halved peak rate, more width, alternating flips, capacity moved to the
# middle): docs/training.md, "Screened and not kept".
SMALL_RECIPE = dict(arch="resnet9", width=0.5, augment="pad-crop", padding=2, padding_mode="reflect",
                    batch_size=128, lr=0.8, momentum=0.9, nesterov=True, weight_decay=5e-4, label_smoothing=0.2,
                    warmup_epochs=2.0, tta=True, whiten=True)

# Pad-crop's padding in the small-image recipe: 2 px mirrored (airbench's translate 2, reflect), not
# the paper's 4 zeros, which it used for 182 epochs; a budget of minutes buys 5 to 15, where
# milder crops and no black border pay. 3 epochs of the recipe on CIFAR-10 (45,000 images,
# held-out 5,000 with flip TTA, seed 0): 4 zeros 83.24 %, 2 zeros 84.28 %, 2 mirrored 85.12 %.
# Screened and not kept (dirac start, frozen BN scales, momentum 0.85, linear decay, ghost BN,
# CELU, 4 px padding and cutout at 30 minutes): docs/training.md, "Screened and not kept".

# The whitened stem (`--whiten`, models.whiten_conv, in the small-image recipe): 2 epochs of the
# recipe on CIFAR-10 (45,000 images, held-out 5,000 with flip TTA) scored 80.44 and 80.66 % with it
# against 79.50 and 79.24 % without (seeds 0 and 1; the stem then from the first 5,000 augmented
# images the loader drew), the training accuracy ahead too; 10 minutes side by side: 86.14 against
# 85.20 % (docs/training.md). Screened the same way and not kept: airbench's alternating flips
# (80.48 %) and its lookahead averaging of the weights (80.22 %), each on top of the whitened stem
# (seed 0): within a run's noise.
# Its patch statistics come from this many training images (airbench's 5,000: 4.5 million 3x3
# patches of CIFAR-10), and this variance is added to each direction's before scaling it to one,
# so that the faintest of the 27 directions (pixel noise) are not amplified a thousandfold
# (airbench's eps).
WHITEN_IMAGES = 5000
WHITEN_EPS = 5e-4
# The patches are unfolded this many bytes at a time: 256 CIFAR-10 images' 230,000 3x3 patches, as
# before, where 256 images at 224 px with a 7x7 stem took 7 GB at once.
WHITEN_CHUNK_BYTES = 80 * 2**20
# Directions fainter than this fraction of the strongest one's variance are not used: in bf16
# (2^-8 relative rounding) their filters would output mostly rounding, scaled up to unit variance
# by the BatchNorm after them (a bf16 run on grey test images, which have no colour variance at
# all, evaluated 4 points apart from its fp32 self). CIFAR-10's 27 directions span 1 to 3e-6 of
# the strongest; the half-width stem's 16 reach down to 5.6e-5, all kept.
WHITEN_FLOOR = 1e-5

# ResNet-9's widths a budget may take, cheapest first (half width is a quarter of the compute: 4x
# the epochs), and the epochs a wider one must still get. Measured on a 2-core Xeon at 32 px,
# batch 512, fp32: 281 img/s at half width, 115 at 0.75, 77 at full width; the full-width
# network reaches 94 % in 24 epochs on a GPU (Page), a short budget gets more from more epochs.
# Measured at equal compute (CIFAR-10, the 45,000 / 5,000 split, flip TTA, bf16 on a GPU, seeds
# 0 / 1, benchmarks/gpu_screen.sh): half width x 14 epochs 90.68 / 90.92 % against 0.75 x 6 89.22 /
# 89.80 % and 1.0 x 4 88.20 / 88.12 % (a 10-minute run's compute on an AMX CPU); half width x 24
# 91.64 / 91.44 % against 0.75 x 10 90.86 / 90.92 %. So the wider network loses while it gets 10
# epochs or fewer, and the 24 it must get stand (0.75 x 18 scored 91.79 %; half width's 44 at that
# compute were not measured to their end). At fixed 10 epochs the widths score 89.50 / 90.89 /
# 91.20 % (airbench94 at its 9.9 epochs, 3 seeds: 90.97 %, with ~1.4x half width's compute an epoch).
SMALL_WIDTHS = (0.5, 0.75, 1.0)
SMALL_EPOCHS_TO_GROW = 24

# Fixed epochs of small images train ResNet-9 with airbench94's middle-heavy widths (`resnet9m`:
# 32, 64, 256, 256 at half width against 32, 64, 128, 256; airbench94's parameters and compute an
# epoch; 1.33-1.35x half-width resnet9's bf16 step on 2 cores). 10 epochs of the recipe on CIFAR-10
# (the 45,000 / 5,000 split, one thread a run, final weights with flip TTA / with the shifted pairs
# too): seed 0 90.48 / 90.78 %, seed 1 90.86 / 91.12, seed 2 90.66 / 90.96, seed 3 90.64 / 90.86,
# against resnet9's 90.46 / 90.62, 90.34 / 90.74, 90.70 / 90.78 (GELU, above): +0.24 points with
# the shifted pairs, higher in 3 of 3 seeds (ReLU's screen had +0.60 in one). Seeds 4 and 5 91.22
# and 91.16: 91.02 % over six, airbench94 90.97 % over three at its 9.9 epochs. A time budget keeps
# `resnet9`: resnet9m's 10 epochs buy resnet9 13.5, worth ~1 point (half width gains ~0.25-0.3 an
# epoch between 10 and 14, above and docs/benchmarks.md), against the widths' 0.24.
SMALL_FIXED_EPOCHS_ARCH = "resnet9m"

# The in-memory loader (data/memory.py) takes a training set of at most this many bytes of
# pixels: CIFAR-10 is 150 MB, Tiny ImageNet at 64 px 1.2 GB; past that, memory is better left to
# the page cache of the decoded copy.
IN_MEMORY_BYTES = 2 * 1024**3

# A warm-up is at most this fraction of the run: 2 epochs of warm-up in a 3-epoch budget would
# leave no time at the peak learning rate (Page warms up over 5 of 24 epochs).
WARMUP_MAX_FRACTION = 0.2

# --- Imbalanced classes (metrics.py, recipe.class_balance_for) -----------------------------------
# A set whose largest class holds more than this many times its smallest's images is imbalanced:
# it is trained with the class balance below, and scored (evaluate, the report, the summary,
# best.pt's choice) by balanced accuracy, the mean per-class recall, beside accuracy. At 1.5:1 a
# model that only ever answers the larger class of two already scores 60 % accuracy against 50 %
# balanced; imagenette-3k (286 to 300 a class) and CIFAR-10 (exactly even) stay below it, so their
# runs train and are chosen exactly as before. Measured at 1:5 and 1:20 (docs/benchmarks.md,
# "Imbalanced folders").
IMBALANCE_RATIO = 1.5
# What `--class-balance auto` trains an imbalanced set with (options.CLASS_BALANCE): class-balanced
# sampling, each class drawn equally often. On dogs vs. cats at 1:20 (3,200 dogs and 160 cats
# trained on; 10 minutes, one core a run, side by side; 2,000 balanced held-out photos), the
# final weights' balanced accuracy: no balancing 0.500 (every photo called a dog), the
# logit-adjusted loss 0.509 and re-weighting 0.500 (every photo called a cat: neither ever left the
# prior), the sampler 0.708 and 0.652 (seeds 0, 1); TrivialAugment on top of it 0.621 (seed 1).
# At 1:5: docs/benchmarks.md, "Imbalanced folders".
CLASS_BALANCE_PLANNED = "sampler"
# The logit-adjusted loss's tau (`--class-balance logit-adjust`): Menon et al. 2021's 1.
LOGIT_ADJUST_TAU = 1.0
# Where the classes are imbalanced, best.pt is the latest epoch whose balanced accuracy is within
# this many standard errors of the highest so far (`metrics.balanced_accuracy_error`; the
# one-standard-error rule): the rarest class's recall is measured on few images (40 cats at 1:20:
# ~3.6 points of noise), so the highest epoch is mostly the luckiest. Dogs vs. cats at 1:20, the
# highest epoch's weights / the final ones on 2,000 held-out photos: 0.636 / 0.731, 0.699 / 0.717,
# 0.758 / 0.762, 0.607 / 0.708, 0.568 / 0.652, 0.568 / 0.621, never above; 1:5 0.785 / 0.796.
SELECTION_STANDARD_ERRORS = 1.0
# ...and scored with flip TTA where not given (the saved model keeps it): the same final weights,
# one view / two, at 1:20 0.755 / 0.779, 0.731 / 0.740, 0.746 / 0.778, 0.748 / 0.760, 0.762 /
# 0.781, at 1:5 0.848 / 0.857, long-tail Imagenette level (docs/benchmarks.md, "Imbalanced folders").
# One more forward pass of the validation images, which a time budget pays for (`budget.val_forwards`).
IMBALANCED_TTA = True
# ...and best.pt's decision moved toward the rarer classes after training (`training/threshold.py`):
# its logits minus tau x the log of each class's share of the training images (Menon et al.
# 2021's post-hoc logit adjustment), tau the middle of those of this grid that score the highest
# balanced accuracy on the run's validation images, none below 0 (towards the common classes). On
# the final weights of 17 runs of dogs vs. cats at 1:20 (2,000 held-out photos): +2.0 points on
# average, higher in 13, lower in 3 (-1.25 at worst), +2.0 / +2.2 in the two `--max-minutes 10`
# runs, +5.7 / +7.3 with twice their epochs (which call more new cats dogs); +0.1 at 1:5; on the
# long Imagenette tail -1.3, 0, -1.3, 0 (150 photos: +-4 points of noise). docs/benchmarks.md,
# "Imbalanced folders".
POSTHOC_TAUS = tuple(round(0.02 * i, 2) for i in range(101))
# The report draws the confusion matrix as a grid up to this many classes; beyond, a grid is
# unreadable, and it lists the most confused pairs instead (these many).
CONFUSION_GRID_MAX = 20
CONFUSED_PAIRS_SHOWN = 15
# Top-5 accuracy joins the headline beyond this many classes (ImageNet's convention; with ten or
# fewer, top-5 is half the classes or more and says little).
TOP5_HEADLINE_CLASSES = 10

# --- Logs -------------------------------------------------------------------------------------

# Off a terminal, an epoch's progress is a plain line at its quarters, at most this often: a long
# epoch in a SLURM log shows it is alive, a 20-minute run's log stays a page of epoch lines.
LOG_EVERY_S = 30

# --- Data loading -----------------------------------------------------------------------------

# On a GPU, decoding is the bottleneck: up to this many workers, one core left for the main
# process. On a CPU the same cores also train, so workers only overlap decoding with compute:
# at most this many, and no more than half the cores.
MAX_WORKERS_GPU = 8
MAX_WORKERS_CPU = 2

# Batches each worker prepares ahead: enough to hide the jitter of JPEG decode times.
PREFETCH_BATCHES = 4

# Training caches its decoded images by itself when the copy is at most this large: decoding then
# happens once instead of every epoch, which on a 2-core machine is CPU taken from training.
AUTO_CACHE_BYTES = 2 * 1024**3

# The decoded caches of a user are kept under this size (RESNET_CACHE_LIMIT_GB changes it): the
# least recently used, not in use, are dropped after a new one is built. Ten 2 GiB caches (the
# largest made without --cache) or a day of trying sizes on several data sets.
CACHE_LIMIT_BYTES = 20 * 1024**3

# Processes other than the one decoding a machine's cache look for its finished index this often:
# a build takes seconds to hours, and a stat twice a second costs nothing.
CACHE_POLL_S = 0.5

# A decoded cache is checked before each use (data/cache.py, `_sampled_digest`) by the sha256 of
# this many blocks of this many bytes spread over its pixels file: 256 KiB read, well under a
# millisecond warm, whatever the cache's size, where hashing a 2 GiB cache whole takes seconds.
CACHE_DIGEST_BLOCKS = 64
CACHE_DIGEST_BLOCK_BYTES = 4096

# --- Memory (device.keep_freed_memory) --------------------------------------------------------

# Freed memory at the top of glibc's heap is kept for the next step up to this much, instead of
# being returned to the kernel and faulted in again. Training steps at 224 px, batch 32, img/s:
# ResNet-18 12.9 with glibc's default, 13.1-13.2 keeping 64 MiB, 13.5 keeping 512 MiB or 2 GiB;
# ResNet-50 5.0-5.1 by default, 5.6 keeping 1 GiB or 2 GiB. The middle of what measured best.
HEAP_KEEP_BYTES = 1024**3

# --- Inference engine (--engine auto) ---------------------------------------------------------

# The engines are timed on batches of this many images at the model's input size: a second or two
# for ResNet-50, once per load.
PROBE_BATCH = 16

# An ONNX export for onnxruntime costs seconds, once per model (it is kept in the cache). Below
# this many images to score, `auto` neither makes one nor times anything: PyTorch runs them.
ONNX_MIN_IMAGES = 1000
# Above it, an export is made only if it should save more than it costs: the images' PyTorch time
# (timed on a probe batch) times the fraction onnxruntime saved, against the export's seconds.
# Measured on the development CPU (benchmarks/engine_cost.py): ResNet-18 exports in 3.4 s (plus ~2 s
# to import the exporter, once per process); with PyTorch keeping its freed memory
# (device.keep_freed_memory) onnxruntime saved 7 % of PyTorch's time at 224 px and 27 % on the
# half-width 112 px model. The smaller saving, because a needless export costs its seconds while a
# missed one costs little where the saving is large (a small model's whole run is seconds): a
# 112 px half-width model stays on PyTorch, ResNet-18 at 224 px exports from ~2,800 images (the
# export measured paying after 2,300).
ONNX_EXPORT_SECONDS = 4.0
ONNX_TIME_SAVED = 0.07

# An engine other than PyTorch is used only if its logits on a random probe batch are within this
# fraction of the logits' scale of fp32 PyTorch's: fp32 engines differ in the order they add in
# (measured ~1e-5 relative); a bf16 engine rounds every product's inputs to 8 bits of mantissa, as
# PyTorch's bf16 autocast does (the suite allows 0.1 between two correct bf16 runs). Anything
# further is a wrong export, not rounding.
ENGINE_CHECK_RTOL = {"fp32": 1e-3, "bfloat16": 0.1}

# Static int8 calibrates its activation ranges on this many images: enough for MinMax ranges of a
# ResNet's activations to settle.
CALIBRATION_IMAGES = 128

# `serve` runs up to this many images through the model together, across queued requests: the
# largest batch the benchmarks time, more only adds latency for the last request in.
SERVE_BATCH = 32

# --- The degradation experiment (experiment.py) -----------------------------------------------

# A budget buys this many epochs of every network, on as many training images as it can pay for:
# the deeper ResNet trains below the shallower only once it fits its images, which takes epochs,
# not images. Measured (docs/science.md; batch 64, lr 0.05 per 256, final training error ResNet-20
# / ResNet-56): 5,000 images x 20 epochs 37.7 / 41.9 % (at lr 0.1: 34.5 / ~42 %); 2,500 x 40
# 32.8 / 31.8 %; 30-minute runs at a rule of 60 epochs, 1,386 x 81: 18.5 / 17.1 % (seed 1),
# 1,640 x 77: 20.2 / 21.4 % (seed 2: level from epoch 58, then 1.2 points above); 500 x 72 at batch
# 32: 30.8 / 25.8 % and 29.4 / 24.8 %. More epochs widen the deeper net's lead. 30 minutes on the
# 2-core development CPU buy ~1,000 images.
EXPERIMENT_EPOCHS = 100
# ...but never fewer images than this (the smallest set measured to show both results).
EXPERIMENT_MIN_IMAGES = 500
# Test images scored every epoch: the standard error of a 50 % error on 1,000 images is 1.6
# points, and scoring CIFAR-10's 10,000 every epoch would cost more than training on 3,000.
EXPERIMENT_TEST_IMAGES = 1000
# The experiment's recipe where the paper's (batch 128, lr 0.2 per 256, no warm-up) is not kept:
# on a CPU batch 64 trains as many images a second as 128 (ResNet-56: 209 against 223 img/s on 2
# cores) in twice the steps; the paper's rate is too large for the 56-layer network in a run this
# short (docs/science.md: ResNet-56 behind ResNet-20 at 0.2 and 0.1 per 256, ahead at 0.05).
EXPERIMENT_RECIPE = dict(batch_size=64, lr=0.05, warmup_epochs=0.0)
# An epoch of every network against the sum of their timed steps (`bench_network`'s, taken at the
# command's start): 1.1x with the DataLoader, as first measured; with the in-memory loader the
# 30-minute runs' epochs took 0.65x the prediction (18.5 s against 28.7 s on the 2-core Xeon).
# Left high: the plan then errs toward fewer images and the refit adds epochs (60 planned, 81
# trained), the direction in which the result was measured (docs/science.md).
EXPERIMENT_EPOCH_OVERHEAD = 1.15

# Exports kept in the cache, the least recently used dropped first: a few models in use at once
# (a training run's best.pt, the model being served), ~45 MB each for a full-width ResNet-18.
ONNX_CACHE_KEEP = 8
