"""The plan from the data: what each kind of data gets, why, and that the user's options win."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from resnet import data as D
from resnet import checkpoint as TCk
from resnet.training import config as TC, loop as TL, recipe as TP
from resnet.data.stats import DataStats
from resnet.training.recipe import eval_size_for, plan_recipe
from resnet.data.transforms import MEAN_PIXEL, PadCropTransform, TrainTransform
from resnet.constants import (AUTO_AUGMENT_MAX_PER_CLASS, AUTO_AUGMENT_MIN_EPOCHS, EPOCHS_TO_GROW,
                              FEW_PHOTOS_A_CLASS, FINETUNE_BATCH, FINETUNE_LR, FINETUNE_MAX_EPOCHS, FINETUNE_STEPS,
                              IN_MEMORY_BYTES, SIZE_LADDER, SMALL_IMAGE_MAX)

from conftest import killed_before_epoch, photo


def stats(short: int, images: int = 50_000, classes: int = 10, grey: float = 0.0) -> DataStats:
    return DataStats(images=images, classes=classes, short_side=short, short_side_p10=short, short_side_p90=short,
                     grey=grey, smallest_class=images // classes, largest_class=images // classes)


@pytest.mark.parametrize("short", [8, 28, 32, 64])
def test_small_images_never_get_a_crop_above_their_size_nor_an_imagenet_stem(short):
    recipe = plan_recipe(stats(short))
    v = recipe.values
    size = max(16, short)  # the smallest input the networks take
    assert v["arch"] == "resnet9m" and v["augment"] == "pad-crop"  # fixed epochs: airbench94's widths
    assert plan_recipe(stats(short), budget=True).values["arch"] == "resnet9"  # a budget: the cheapest epochs
    assert v["img_size"] == v["min_img_size"] == v["eval_size"] == size and v["crop_pct"] == 1.0
    assert {s for _, s in recipe.ladder} == {size}  # the budget may only widen, never up-sample
    assert v["in_memory"] and recipe.kind == "small images"
    assert v["tta"]  # scored with the mirror image too, as the CIFAR-10 records are
    assert v["whiten"]  # the stem starts whitened, as airbench's does
    assert (v["padding"], v["padding_mode"]) == (2, "reflect")  # airbench's crops, not the paper's 4 zeros


def test_small_images_too_many_for_memory_go_through_the_cache():
    n = IN_MEMORY_BYTES // (32 * 32 * 3) + 1
    recipe = plan_recipe(stats(32, images=n))
    assert not recipe.values["in_memory"] and "decoded cache" in recipe.reasons[-1][1]


def test_photos_of_180_px_never_train_or_evaluate_above_what_they_hold():
    """Kaggle's dogs vs. cats at 180 px: the preset's network (nothing planned but the loader), and
    a budget may grow it only to sizes whose evaluation crop (crop x 1.25) fits in 180 px — 128 px
    at most (160 px scored); 160 px would be scored at 200, up-sampled."""
    recipe = plan_recipe(stats(180, images=8000, classes=2))
    assert recipe.kind == "photos"
    assert recipe.values == {"in_memory": False, "schedule": "flat-cos", "auto_augment": "none"}  # 4,000 a class
    assert recipe.ladder == ((0.5, 96), (0.5, 128), (0.75, 128), (1.0, 128))
    assert eval_size_for(128) <= 180 < eval_size_for(160)
    assert "sizes up to 128 px: larger ones would be up-sampled from 180 px" in recipe.reasons[-1][1]
    assert recipe.enough_epochs == EPOCHS_TO_GROW


def planned(tmp_path, short: int, images: int = 2000, **given) -> tuple[TC.TrainConfig, list[str]]:
    """The configuration the default preset plans for data of this shorter side and size, with the
    options `given`, and its plan lines."""
    cfg = TC.make_config("default", data=str(tmp_path), out=str(tmp_path / "run"), **given)
    planned_cfg, _, lines = TP.apply_recipe(cfg, stats(short, images=images))
    return planned_cfg, lines


def test_photos_hold_the_peak_learning_rate_unless_a_schedule_is_given(tmp_path):
    """flat-cos for photos (measured there), one-cycle for small images (flat-cos lost on CIFAR-10),
    and a --schedule given is kept, its plan line not shown."""
    cfg, lines = planned(tmp_path, 224)
    assert cfg.schedule == "flat-cos" and any("flat-cos" in line for line in lines)
    assert planned(tmp_path, 32)[0].schedule == "onecycle"
    cfg, lines = planned(tmp_path, 224, schedule="onecycle")
    assert cfg.schedule == "onecycle" and not any("flat-cos" in line for line in lines)


def test_trivial_augment_for_photos_with_few_images_a_class_trained_long_enough_unless_given(tmp_path):
    """TrivialAugment Wide for photo sets that over-fit: few images a class (imagenette-3k's 239,
    where it paid at 67 epochs), not with more a class (dogs vs. cats' 4,000, where nothing was
    over-fit), not for fixed epochs too few to over-fit (it lost at 20), nor for small images
    (32 px translations would empty a 32 px image); a budget plans it by the images alone until its
    size is timed, then again (its planned configuration) by the epochs that size buys; a choice
    given is kept and its line not shown."""
    def policy(short: int, images: int = 2000, **given) -> tuple[str, list[str]]:
        cfg, lines = planned(tmp_path, short, images, **{"epochs": AUTO_AUGMENT_MIN_EPOCHS, **given})
        return cfg.auto_augment, lines

    chosen, lines = policy(224, images=10 * AUTO_AUGMENT_MAX_PER_CLASS)  # both bounds themselves
    assert chosen == "ta_wide" and any("TrivialAugment Wide after each crop: 1000 images a class" in l for l in lines)
    chosen, lines = policy(224, images=10 * AUTO_AUGMENT_MAX_PER_CLASS + 10)
    assert chosen == "none" and any("no TrivialAugment: 1001 images a class" in line for line in lines)
    chosen, lines = policy(224, epochs=AUTO_AUGMENT_MIN_EPOCHS - 1)
    assert chosen == "none" and any(f"no TrivialAugment: {AUTO_AUGMENT_MIN_EPOCHS - 1} epochs" in l for l in lines)
    assert policy(224, epochs=1, max_minutes=1.0)[0] == "ta_wide"  # --epochs is not what a budget buys
    few = stats(224, images=2000)
    before_sizing = TP.apply_recipe(TC.make_config("default", data=str(tmp_path), out=str(tmp_path / "run"),
                                                   max_minutes=10.0), few)[0]
    for bought, augment in ((AUTO_AUGMENT_MIN_EPOCHS - 1, "none"), (AUTO_AUGMENT_MIN_EPOCHS, "ta_wide")):
        cfg, _, lines = TP.apply_recipe(before_sizing, few, bought)
        assert cfg.auto_augment == augment, bought
        assert any(f"the {bought} epochs the time budget buys" in line for line in lines), lines
    assert policy(32)[0] == "none"
    chosen, lines = policy(224, auto_augment="none")  # where the plan would have taken it
    assert chosen == "none" and not any("TrivialAugment" in line for line in lines)
    small, lines = planned(tmp_path, 32, auto_augment="ta_wide")  # Pillow's operations: image by image
    assert (small.auto_augment, small.in_memory) == ("ta_wide", False)
    assert not any("in memory" in line for line in lines)


def test_few_photos_a_class_are_told_to_start_from_pretrained_weights(tmp_path):
    """At most `FEW_PHOTOS_A_CLASS` photos a class (from scratch: near chance, measured) the plan
    says so and names --pretrained; not above it, nor for small images (the digits demo reaches
    100 % from 144 a class)."""
    def advice(short: int, images: int) -> list[str]:
        return [line for line in planned(tmp_path, short, images)[1] if "few photos a class" in line]

    lines = advice(224, 10 * FEW_PHOTOS_A_CLASS)
    assert len(lines) == 1 and f"({FEW_PHOTOS_A_CLASS} on average" in lines[0]
    assert "--pretrained imagenet" in lines[0] and "--pretrained FILE" in lines[0]
    assert advice(224, 10 * FEW_PHOTOS_A_CLASS + 10) == []
    assert advice(32, 300) == []


def test_fine_tuning_a_small_folder_takes_enough_steps_at_the_size_the_weights_know(tmp_path):
    """60 photos with the preset's 5 epochs of 64 were 5 steps, learning nothing (measured): a
    folder of fewer than 10 batches gets small batches, a higher rate and enough epochs; a large
    folder keeps the preset's steps. The size is the one the pretrained file was evaluated at,
    where it says; what the user gave wins over both."""
    def plan(images: int, trained_at: int | None = 120, **given) -> tuple[TC.TrainConfig, list[str]]:
        cfg = TC.make_config("finetune", data=str(tmp_path), out=str(tmp_path / "r"), pretrained="w.pt", **given)
        return TP.plan_finetune(cfg, images, trained_at)

    cfg, lines = plan(48)
    assert (cfg.batch_size, cfg.lr, cfg.epochs) == (FINETUNE_BATCH, FINETUNE_LR, FINETUNE_MAX_EPOCHS)
    assert (cfg.img_size, cfg.min_img_size, cfg.eval_size) == (120, 120, 120)
    assert len(lines) == 2 and "120 px" in lines[0] and f"{FINETUNE_MAX_EPOCHS} epochs of 3 steps of 16" in lines[1]
    cfg, _ = plan(600)  # 37 steps an epoch: enough epochs for the steps, no more
    assert cfg.epochs == -(-FINETUNE_STEPS // 37) < FINETUNE_MAX_EPOCHS and cfg.batch_size == FINETUNE_BATCH
    preset = TC.make_config("finetune", data=str(tmp_path), out=str(tmp_path / "r"))
    cfg, lines = plan(10_000, None)  # torchvision's file says no size: the preset's 224
    assert (cfg.batch_size, cfg.lr, cfg.epochs, cfg.img_size, cfg.eval_size) == (
        preset.batch_size, preset.lr, preset.epochs, 224, 224) and lines == []
    cfg, lines = plan(48, img_size=160, batch_size=8, lr=0.01, epochs=3)
    assert (cfg.img_size, cfg.eval_size, cfg.batch_size, cfg.lr, cfg.epochs) == (160, 160, 8, 0.01, 3)
    assert len(lines) == 1 and "3 epochs of 6 steps of 8 at lr 0.01" in lines[0]


def test_small_images_add_the_shifted_views_only_for_fixed_epochs(tmp_path):
    """The shifted views triple validation's forward passes: with fixed epochs that is seconds,
    on a time budget it would be epochs. Not for photos; a --tta-shift given wins either way."""
    def shift(short: int, **given) -> tuple[int, list[str]]:
        cfg, lines = planned(tmp_path, short, 50_000, **given)
        return cfg.tta_shift, lines

    px, lines = shift(32)
    assert px == 1 and any("shifted 1 px" in line for line in lines)
    px, lines = shift(32, max_minutes=10)
    assert px == 0 and not any("shifted" in line for line in lines)
    assert shift(32, max_minutes=10, tta_shift=1)[0] == 1 and shift(32, tta_shift=0)[0] == 0
    assert shift(224)[0] == 0
    assert shift(32, hflip=False)[0] == 0  # no mirror images, no TTA at all


def test_large_photos_may_grow_to_torchvisions_224():
    assert plan_recipe(stats(375, images=2000, classes=2)).ladder == SIZE_LADDER


def test_low_resolution_photos_are_not_up_sampled():
    recipe = plan_recipe(stats(SMALL_IMAGE_MAX + 16))  # 80 px: a photo, but below the default's 96
    size = recipe.values["img_size"]
    assert size <= 80 and recipe.values["eval_size"] <= 80 and recipe.ladder == ((0.5, size),)
    assert "the photos hold 80 px" in recipe.reasons[-1][1]


def test_the_plan_keeps_every_option_given_and_the_sizes_follow_a_given_size(tmp_path):
    split = D.DataSplit(["a", "b"], [D.Sample(str(tmp_path / f"{i}.png"), i % 2) for i in range(8)], [])
    for s in split.train:
        photo(32, 32, seed=1).save(s.path)
    cfg = TC.make_config("default", data=str(tmp_path), out=str(tmp_path / "run"), arch="resnet20",
                        img_size=24, label_smoothing=0.0)
    stats = D.describe(split.train, len(split.classes), 0)
    planned, recipe, lines = TP.apply_recipe(cfg, stats)
    assert recipe.kind == "small images" and planned.augment == "pad-crop" and planned.in_memory
    assert (planned.arch, planned.img_size, planned.label_smoothing) == ("resnet20", 24, 0.0)
    assert planned.min_img_size == planned.eval_size == 24
    assert lines[0].startswith("data: 8 images, 2 classes (balanced), shorter side 32 px")
    assert "as given: --arch resnet20, --img-size 24, --label-smoothing 0.0" in lines
    assert not any("ResNet-9" in line for line in lines)  # the lines say what the plan decided, only that
    assert planned.tta and any("flip TTA" in line for line in lines)
    assert any("pad-and-crop" in line for line in lines)
    # Trained without mirror images (digits, text): not scored on them either.
    planned, _, lines = TP.apply_recipe(TC.make_config("default", data=str(tmp_path), out=str(tmp_path / "run"),
                                                     hflip=False), stats)
    assert not planned.tta and not any("TTA" in line for line in lines)
    # Other presets are recipes of their own, and pretrained weights bring their network.
    for other in (TC.make_config("cifar-paper", data=str(tmp_path), out=str(tmp_path / "r2")),
                  TC.make_config("default", data=str(tmp_path), out=str(tmp_path / "r3"), pretrained="x.pth")):
        assert not TP.recipe_applies(other)


def test_describe_reads_sizes_grey_and_balance(tmp_path):
    samples = []
    for i, (w, h, mode, label) in enumerate([(32, 32, "RGB", 0), (40, 30, "RGB", 0), (64, 48, "L", 0),
                                             (30, 30, "RGB", 0), (32, 20, "L", 1)]):
        path = tmp_path / f"{i}.png"
        photo(w, h, seed=i).convert(mode).save(path)
        samples.append(D.Sample(str(path), label))
    s = D.describe(samples, classes=2)
    assert (s.images, s.classes, s.smallest_class, s.largest_class) == (5, 2, 1, 4)
    assert s.short_side == 30 and (s.short_side_p10, s.short_side_p90) == (20, 48) and s.grey == 0.4
    assert "imbalanced: 1 to 4 a class" in s.line()


def test_in_memory_crops_are_pad_crops_drawn_from_each_images_own_seed():
    images = torch.randint(0, 256, (400, 3, 8, 8), dtype=torch.uint8)
    seeds = torch.arange(400) + 10**12  # consecutive, as the sampler's are
    out = D.pad_crop_flip(images, 2, True, seeds)
    assert out.shape == images.shape and out.is_contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    drawn = []
    for i in range(400):  # each is one of the 25 crops of its padded image, mirrored or not
        crops = [(t, l, m) for t in range(5) for l in range(5) for m in (0, 1)
                 if torch.equal(out[i], padded[i, :, t:t + 8, l:l + 8].flip(-1) if m else padded[i, :, t:t + 8, l:l + 8])]
        assert crops, i
        drawn.append(crops[0])
    # Every offset and both mirrorings occur, about evenly (400 draws of 50 outcomes).
    assert len(set(drawn)) == 50 and max(drawn.count(d) for d in set(drawn)) < 24
    # The same seed gives the same crop whatever batch the image is in: half batches agree.
    halves = torch.cat([D.pad_crop_flip(images[:150], 2, True, seeds[:150]),
                        D.pad_crop_flip(images[150:], 2, True, seeds[150:])])
    assert torch.equal(out, halves)
    assert not torch.equal(out, D.pad_crop_flip(images, 2, True, seeds + 1))
    assert torch.equal(D.pad_crop_flip(images, 0, False, seeds), images)


def test_mirrored_padding_crops_alike_in_memory_and_image_by_image():
    """`--padding-mode reflect`: every crop, in memory or from one image, lies inside the image
    mirrored about its edges, never on a zero border."""
    images = torch.randint(1, 256, (200, 3, 6, 6), dtype=torch.uint8)  # no zero pixel anywhere
    mirrored = np.pad(images.permute(0, 2, 3, 1).numpy(), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    mirrored = torch.from_numpy(mirrored).permute(0, 3, 1, 2)

    def crops(i: int) -> list[torch.Tensor]:
        return [mirrored[i, :, t:t + 6, l:l + 6] for t in range(5) for l in range(5)]

    out = D.pad_crop_flip(images, 2, False, torch.arange(200), "reflect")
    assert all(any(torch.equal(out[i], c) for c in crops(i)) for i in range(200))
    assert (out > 0).all() and not torch.equal(out, images)  # shifted, and no zero border
    one = PadCropTransform(6, 2, "reflect", hflip=False)
    g = torch.Generator().manual_seed(0)
    from_image = [one(images[i].permute(1, 2, 0).numpy(), g) for i in range(20)]
    assert all(any(torch.equal(x, c) for c in crops(i)) for i, x in enumerate(from_image))
    assert not all(torch.equal(x, images[i]) for i, x in enumerate(from_image))  # it does shift
    with pytest.raises(ValueError, match="cannot be mirrored 6 px"):
        PadCropTransform(6, 6, "reflect")(images[0].permute(1, 2, 0).numpy())


def _cut_square(out: torch.Tensor, kept: torch.Tensor, size: int, length: int) -> tuple[int, int]:
    """(rows, columns) of the one rectangle of mean pixels `cutout` put into the CHW crop `out`,
    which equals `kept` (the crop without cutout) everywhere else; a side is `size` unless the
    square reaches past the crop's edge."""
    changed = (out != kept).any(0)
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    assert len(rows) and len(cols)
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    assert (out[:, box[0], box[1]] == torch.tensor(MEAN_PIXEL, dtype=out.dtype).view(3, 1, 1)).all()
    assert torch.equal(out[:, ~changed], kept[:, ~changed])
    for side in (len(rows), len(cols)):
        assert size // 2 <= side <= size
    assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
    return len(rows), len(cols)


def test_cutout_fills_one_square_of_each_crop_with_the_mean_pixel_in_memory_and_image_by_image():
    """`--cutout 4` on 16 px crops: one square of mean pixels per crop, the rest of the crop as
    without cutout; whole where it lies inside, clipped at an edge (its centre is drawn anywhere);
    placed differently for each image, and (in memory) by the image's seed, whatever its batch."""
    images = torch.randint(0, 100, (300, 3, 16, 16), dtype=torch.uint8)  # no pixel is the mean pixel
    seeds = torch.arange(300) + 10**12
    kept = D.pad_crop_flip(images, 2, True, seeds, "reflect")
    out = D.pad_crop_flip(images, 2, True, seeds, "reflect", cutout=4)
    assert out.is_contiguous(memory_format=torch.channels_last)
    sides = [_cut_square(out[i], kept[i], 4, 16) for i in range(300)]
    assert (4, 4) in sides and {2, 3} & {r for r, _ in sides}  # whole inside, clipped at an edge
    assert len({tuple((out[i] != kept[i]).any(0).nonzero()[0].tolist()) for i in range(300)}) > 50
    halves = torch.cat([D.pad_crop_flip(images[:100], 2, True, seeds[:100], "reflect", 4),
                        D.pad_crop_flip(images[100:], 2, True, seeds[100:], "reflect", 4)])
    assert torch.equal(out, halves)
    g, again = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for transform in (PadCropTransform(16, 2, "reflect"), TrainTransform(16, scale=(0.5, 1.0))):
        cut = replace(transform, cutout=4)
        for i in range(40):
            a = images[i].permute(1, 2, 0).numpy()
            _cut_square(cut(a, g), transform(a, again), 4, 16)
            for _ in range(2):  # the draws that placed the square
                torch.randint(0, 16, (1,), generator=again)


def test_in_memory_loader_shards_resumes_and_reports_failures():
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 4, 4).contiguous()
    labels, positions = torch.arange(20) % 2, torch.arange(20) + 100

    def loader(rank=0, world=1, batch=4):
        return D.TensorLoader(images, labels, positions, batch, PadCropTransform(4, 0, hflip=False), 7, rank, world, True, [(5, "truncated")])

    whole = loader()
    whole.sampler.set_epoch(3)
    batches = list(whole)
    assert len(batches) == len(whole) == 5 and batches[0].failures == [(5, "truncated")]
    seen = torch.cat([b.indices for b in batches])
    assert sorted(seen.tolist()) == list(range(100, 120))  # every image once, by its dataset position
    for b in batches:
        assert torch.equal(b.images[:, 0, 0, 0].long() + 100, b.indices) and torch.equal(b.labels, b.indices % 2)
    resumed = loader()
    resumed.sampler.set_epoch(3, start=8)  # two batches in
    assert [torch.equal(a.indices, b.indices) for a, b in zip(batches[2:], resumed)] == [True] * 3
    assert all(not b.failures for b in resumed)
    halves = [torch.cat([b.indices for b in _epoch(loader(r, 2, batch=5), 3)]) for r in (0, 1)]
    assert sorted(torch.cat(halves).tolist()) == list(range(100, 120))


def _epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_pad_crop_and_in_memory_are_refused_where_they_cannot_do_what_is_asked(tmp_path):
    from resnet.errors import ConfigError

    with pytest.raises(ConfigError, match="--in-memory augments as --augment pad-crop does"):
        TC.make_config("default", out=str(tmp_path / "a"), in_memory=True, augment="random-resized-crop")
    with pytest.raises(ConfigError, match="not with --no-cache"):
        TC.make_config("default", out=str(tmp_path / "b"), in_memory=True, augment="pad-crop", cache=False)
    with pytest.raises(ConfigError, match="--padding must be less than the image's 32 px, not 32"):
        TC.make_config("default", out=str(tmp_path / "c"), augment="pad-crop", img_size=32, padding=32,
                      padding_mode="reflect")


def test_a_small_image_run_plans_trains_in_memory_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    """End to end on 32 px images with no option but the folder: the plan's choices reach the
    run (ResNet-9, pad-crop from memory) and its records, and a run resumed after its first epoch
    ends with the weights of one that was not interrupted."""
    root = tmp_path / "small"
    for c, bright in (("a", False), ("b", True)):
        (root / c).mkdir(parents=True)
        for i in range(20):
            photo(32, 32, seed=i + (50 if bright else 0), bright=bright).save(root / c / f"{i}.png")
    opts = dict(data=str(root), epochs=2, batch_size=16, deterministic=True, val_split=0.2)
    straight = TL.train(TC.make_config("default", out=str(tmp_path / "straight"), **opts))
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert (config["arch"], config["img_size"], config["eval_size"], config["augment"], config["in_memory"]) == \
        ("resnet9m", 32, 32, "pad-crop", True)
    assert config["plan"][0].startswith("data: 32 images, 2 classes (balanced), shorter side 32 px")  # the training part
    assert TCk.read_checkpoint(tmp_path / "straight" / "best.pt")["plan"] == config["plan"]
    assert straight["epochs"] == 2

    killed_before_epoch(monkeypatch, lambda: TL.train(TC.make_config("default", out=str(tmp_path / "resumed"), **opts)))
    TL.train(*TC.resume_config(tmp_path / "resumed" / "last.pt"))
    a = TCk.read_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = TCk.read_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The stem started as the patches' whitening (filters in opposite pairs) and stayed frozen
    # through both epochs: training would have broken the pairs.
    stem = a["conv1.weight"]
    assert config["whiten"] and torch.equal(stem[16:32], -stem[:16])
    # A ResNet-9 run saved before it pooled first records no `pool_first`: resumed, it goes on
    # pooling last, as it was trained, and says so in the checkpoint it writes.
    TL.train(TC.make_config("default", out=str(tmp_path / "resnet9"), arch="resnet9", **opts))
    old = torch.load(tmp_path / "resnet9" / "last.pt", weights_only=True)
    assert old["model_options"]["pool_first"] is True
    del old["model_options"]["pool_first"]
    (tmp_path / "older").mkdir()
    torch.save(old, tmp_path / "older" / "last.pt")
    TL.train(*TC.resume_config(tmp_path / "older" / "last.pt", {"epochs": 3}))
    assert TCk.read_checkpoint(tmp_path / "older" / "last.pt")["model_options"]["pool_first"] is False

    # The trained ResNet-9 goes through every inference path: ONNX gives PyTorch's logits, and
    # predict gives each image the label evaluate scored it with.
    from resnet.inference.evaluate import evaluate
    from resnet.inference.exports import export_onnx
    from resnet.inference.predict import Classifier, compare

    best = tmp_path / "straight" / "best.pt"
    fp32 = Classifier.load(best, amp="off", engine="torch")  # the export is fp32, whatever the run's precision
    assert compare(fp32, Classifier.load(export_onnx(best, tmp_path / "m.onnx"), amp="off"))["max_abs_difference"] < 1e-4
    result, samples, probs = evaluate(best, tmp_path / "straight" / "val.csv", workers=0)
    rows = Classifier.load(best).predict([s.path for s in samples])
    assert [r["label"] for r in rows] == [result["classes"][i] for i in probs.argmax(1).tolist()]
