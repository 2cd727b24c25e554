import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DATASETS, needs_datasets, photo, write_broken, write_odd
from resnet import data as D
from resnet.data.transforms import (TA_OPS, EvalTransform, PadCropTransform, TrainTransform, normalize, resized_crop,
                                    ta_apply, trivial_augment)


def test_every_odd_image_is_read_and_every_broken_one_skipped_with_its_reason(tmp_path):
    odd = write_odd(tmp_path / "odd")
    broken = write_broken(tmp_path / "broken")
    results = D.read_images([p for p, _ in odd.values()] + list(broken.values()))
    for (name, (path, size)), img in zip(odd.items(), results):
        assert isinstance(img, Image.Image), f"{name}: {img}"
        assert img.mode == "RGB" and img.size == size, name
    reasons = dict(zip(broken, results[len(odd):]))
    assert reasons["zero_byte"] == "empty file"
    assert reasons["text"].startswith("not an image")
    assert reasons["pixel_bomb"].startswith("decompression bomb")
    assert reasons["truncated"].startswith("unreadable") and "truncated" in reasons["truncated"]
    assert reasons["header_only_png"].startswith("not an image")  # Pillow cannot identify it
    assert D.read_images([tmp_path / "nope.jpg"]) == ["file not found"]


def test_modes_are_converted_sensibly(tmp_path):
    odd = write_odd(tmp_path)
    grey = np.asarray(photo(80, 60).convert("L"), dtype=np.int32)
    sixteen = np.asarray(D.decode(odd["16bit"][0]))[..., 0].astype(np.int32)
    assert np.abs(sixteen - grey).max() <= 1  # scaled from 16 bits, not clipped to white
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert D.to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)  # on white, not black


def test_scan_finds_bad_files_cheaply_and_the_rest_at_load_time(messy_folder):
    root, odd, broken = messy_folder
    good, skipped, labels = D.scan(root)
    assert labels == {"cats", "dogs"}
    at_scan = {Path(p).name for p, _ in skipped}
    assert at_scan == {"empty.jpg", "notes.jpg", "bomb.png", "header_only.png"}
    assert not any("/." in p for p, _ in good + skipped)  # .hidden.jpg and .thumbnails/ are not data
    assert {p for p, _ in good} >= {str(p) for p, _ in odd.values()}


def test_training_over_a_messy_folder_skips_exactly_the_broken_files(messy_folder, tmp_path):
    from resnet.cli import main

    root, odd, broken = messy_folder
    out = tmp_path / "run"
    code = main(["train", str(root), "--arch", "resnet20", "--img-size", "32", "--epochs", "1",
                 "--batch-size", "8", "--workers", "2", "--out", str(out), "--val-split", "0.25"])
    assert code == 0
    listed = {line.split("\t")[0] for line in (out / "skipped.txt").read_text().splitlines()}
    assert listed == {str(p) for p in broken.values()}
    reasons = dict(line.split("\t") for line in (out / "skipped.txt").read_text().splitlines())
    assert all(reasons.values())


def test_kaggle_flat_folder_and_label_pattern(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(10):
        photo(40, 40, seed=i).save(flat / f"cat.{i}.jpg")
        photo(40, 40, seed=i + 9, bright=True).save(flat / f"dog.{i}.jpg")
    split = D.discover(flat, val_split=0.2, seed=1)
    assert split.classes == ["cat", "dog"]
    assert len(split.train) == 16 and len(split.val) == 4
    assert sorted(s.label for s in split.val) == [0, 0, 1, 1]  # stratified
    (flat / "img_dog_7.png").write_bytes((flat / "dog.1.jpg").read_bytes())
    files = D.scan(flat, label_pattern=r"(?:^|_)(?P<label>cat|dog)[._]").good
    assert ("img_dog_7.png" in {Path(p).name for p, _ in files})
    assert dict((Path(p).name, c) for p, c in files)["img_dog_7.png"] == "dog"


def test_flat_folder_trains_without_moving_a_file(tmp_path):
    from resnet.cli import main

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(8):
        photo(40, 40, seed=i).save(flat / f"cat.{i}.jpg")
        photo(40, 40, seed=i, bright=True).save(flat / f"dog.{i}.jpg")
    before = sorted(os.listdir(flat))
    assert main(["train", str(flat), "--arch", "resnet20", "--img-size", "32", "--epochs", "1",
                 "--batch-size", "8", "--workers", "0", "--out", str(tmp_path / "run")]) == 0
    assert sorted(os.listdir(flat)) == before
    assert (tmp_path / "run" / "best.pt").is_file()


def test_csv_source_and_train_val_roots(tmp_path, tiny_folder):
    rows = [(str(p.relative_to(tiny_folder)), p.parent.name) for p in sorted(tiny_folder.rglob("*.png"))]
    with open(tiny_folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label")] + rows)
    split = D.discover(tiny_folder / "labels.csv", val_split=0.25)
    assert split.classes == ["a", "b"] and len(split.train) + len(split.val) == 32
    assert all(Path(s.path).is_file() for s in split.train)

    both = tmp_path / "both"
    for part in ("train", "valid"):
        for c in ("x", "y"):
            (both / part / c).mkdir(parents=True)
            for i in range(3):
                photo(30, 30, seed=i).save(both / part / c / f"{i}.png")
    split = D.discover(both)
    assert len(split.train) == 6 and len(split.val) == 6
    assert all("/valid/" in s.path for s in split.val)


def test_class_errors_name_the_classes(tmp_path):
    root = tmp_path / "d"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    photo().save(root / "good" / "1.jpg")
    (root / "bad" / "1.jpg").write_bytes(b"")
    with pytest.raises(D.DataError, match="no readable image in class.*bad"):
        D.discover(root, val_split=0)
    val = tmp_path / "v"
    (val / "good").mkdir(parents=True)
    (val / "other").mkdir()
    photo().save(val / "good" / "1.jpg")
    photo().save(val / "other" / "1.jpg")
    (root / "bad" / "2.jpg").unlink(missing_ok=True)
    (root / "bad" / "1.jpg").unlink()
    (root / "bad").rmdir()
    with pytest.raises(D.DataError, match=r"only in validation \['other'\]"):
        D.discover(root, val=val)


def test_split_is_seeded_and_stratified():
    labels = [0] * 30 + [1] * 10
    a = D.stratified_split(labels, 0.2, seed=3)
    assert a == D.stratified_split(labels, 0.2, seed=3)
    assert a != D.stratified_split(labels, 0.2, seed=4)
    val = [labels[i] for i in a[1]]
    assert val.count(0) == 6 and val.count(1) == 2


# ----- transforms -------------------------------------------------------------------------------


def torchvision_reference(img: Image.Image, size: int) -> np.ndarray:
    """torchvision's documented Resize(int) + CenterCrop on PIL, written directly with Pillow."""
    resize = int(round(size / 0.875))
    w, h = img.size
    if w <= h:
        rw, rh = resize, int(resize * h / w)
    else:
        rw, rh = int(resize * w / h), resize
    r = img.resize((rw, rh), Image.Resampling.BILINEAR)
    top, left = int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))
    return np.array(r.crop((left, top, left + size, top + size)))


@pytest.mark.parametrize("w,h,size", [(500, 375, 224), (375, 500, 224), (333, 333, 112), (640, 480, 64), (230, 700, 32)])
def test_eval_transform_equals_pillow_reference(w, h, size):
    img = photo(w, h, seed=w)
    out = EvalTransform.for_size(size)(img)
    assert torch.equal(out, torch.from_numpy(torchvision_reference(img, size)).permute(2, 0, 1))


def test_resized_crop_is_pillows_resize_bit_for_bit():
    """Random sources, crop boxes, output sizes (up and down, either axis alone, rows-first and
    columns-first orders) and windows of the output: always Pillow's pixels."""
    rng = np.random.default_rng(0)
    for trial in range(300):
        W, H = rng.integers(1, 300, 2)
        x0, y0 = rng.integers(0, W), rng.integers(0, H)
        w, h = rng.integers(1, W - x0 + 1), rng.integers(1, H - y0 + 1)
        ow, oh = (w if trial % 5 == 0 else rng.integers(1, 200)), (h if trial % 7 == 0 else rng.integers(1, 200))
        src = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(src).crop((x0, y0, x0 + w, y0 + h)).resize((ow, oh), Image.Resampling.BILINEAR))
        left, top = rng.integers(0, ow), rng.integers(0, oh)
        cw, ch = rng.integers(1, ow - left + 1), rng.integers(1, oh - top + 1)
        got = resized_crop(src, (x0, y0, w, h), (ow, oh), (left, top, cw, ch))
        assert np.array_equal(got, ref[top:top + ch, left:left + cw]), (W, H, x0, y0, w, h, ow, oh, left, top, cw, ch)
    with pytest.raises(ValueError, match="bad resample"):
        resized_crop(src, (0, 0, W + 1, H), (5, 5))


def test_evaluation_decodes_big_jpegs_exactly_training_drafts_them(tmp_path):
    path = tmp_path / "big.jpg"
    photo(1200, 900, seed=5).save(path, quality=92)
    size = 112  # evaluation would resize to 128 from a JPEG that a draft decodes at 1/4 or 1/8
    exact = torchvision_reference(Image.open(path).convert("RGB"), size)
    ds = D.ImageDataset([D.Sample(str(path), 0)], EvalTransform.for_size(size))
    assert ds.draft_size is None
    assert np.array_equal(ds[0][0].permute(1, 2, 0).numpy(), exact)
    train = D.ImageDataset([D.Sample(str(path), 0)], TrainTransform(size, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3),
                                                                    hflip=False))
    assert train.draft_size == size
    with Image.open(path) as im:
        im.draft("RGB", (size, size))
        assert im.size == (150, 113)  # the draft really happens for training: 1/8 scale
    fast = train[D.Draw(0, 0)].image.permute(1, 2, 0).numpy()
    full = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3


def test_normalize_matches_to_tensor_and_normalize():
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normalize(x, mean, std), ref, atol=1e-5)


def test_random_resized_crop_follows_torchvisions_sampling():
    tf = TrainTransform(24, scale=(0.5, 1.0))
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        left, top, cw, ch = tf.crop_box(100, 60, g)
        assert 0 <= left and left + cw <= 100 and 0 <= top and top + ch <= 60
        assert 0.5 * 6000 * 0.7 <= cw * ch <= 6000  # area in scale range (rounding slack)
    a = tf(photo(100, 60), torch.Generator().manual_seed(7))
    b = tf(photo(100, 60), torch.Generator().manual_seed(7))
    assert a.shape == (3, 24, 24) and a.dtype == torch.uint8 and torch.equal(a, b)
    # torchvision's pixels: crop the sampled box, resize the crop, flip on the next draw
    g = torch.Generator().manual_seed(7)
    left, top, cw, ch = tf.crop_box(100, 60, g)
    ref = photo(100, 60).crop((left, top, left + cw, top + ch)).resize((24, 24), Image.Resampling.BILINEAR)
    if torch.rand(1, generator=g).item() < 0.5:
        ref = ref.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert torch.equal(a, torch.from_numpy(np.array(ref)).permute(2, 0, 1))


TA_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "trivial_augment_torchvision.npz"


def test_trivial_augment_gives_torchvisions_pixels_and_draws():
    """Against torchvision's own TrivialAugmentWide (fixtures/make_trivial_augment.py): every
    operation at two strengths and both signs, pixel for pixel, and whole draws from the same seeds
    (the operation, its bin and its sign drawn in torchvision's order)."""
    ref = np.load(TA_FIXTURE)
    img = Image.fromarray(ref["image"])
    ops = {key.split("|")[0] for key in ref.files if "|" in key and not key.startswith("draw")}
    assert ops == set(TA_OPS)
    for key in (k for k in ref.files if "|" in k):
        name, arg, *sign = key.split("|")
        if name == "draw":
            got = trivial_augment(ref["image"].copy(), torch.Generator().manual_seed(int(arg)))
        else:
            magnitudes = TA_OPS[name][0]
            got = np.asarray(ta_apply(img, name, 0.0 if magnitudes is None else float(magnitudes[int(arg)]) * int(sign[0])))
        assert np.array_equal(got, ref[key]), key
    changed = sum(not np.array_equal(ref[k], ref["image"]) for k in ref.files if k.startswith("draw"))
    assert changed >= 20  # the draws are not mostly the identity


@pytest.mark.parametrize("tf", [TrainTransform(24, scale=(0.5, 1.0), trivial_augment=True),
                                PadCropTransform(24, 2, "reflect", trivial_augment=True)])
def test_trivial_augment_follows_the_crop_and_flip_on_the_same_seed(tf):
    """The crop and flip as without it, then TrivialAugment on the next draws of the same
    generator: a sample's augmentation stays fixed by its seed (exact resume, any worker count)."""
    src = photo(40, 30) if isinstance(tf, TrainTransform) else photo(24, 24)
    plain = TrainTransform(24, scale=(0.5, 1.0)) if isinstance(tf, TrainTransform) else PadCropTransform(24, 2, "reflect")
    differ = 0
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        base = plain(src, g).permute(1, 2, 0).numpy().copy()
        expected = trivial_augment(base, g)
        got = tf(src, torch.Generator().manual_seed(seed))
        assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(expected)).permute(2, 0, 1))
        assert torch.equal(got, tf(src, torch.Generator().manual_seed(seed)))
        differ += not np.array_equal(expected, base)
    assert differ >= 6


# ----- sampler, loader, cache -------------------------------------------------------------------


def test_epoch_sampler_is_fixed_by_seed_and_epoch_and_resumes_mid_epoch():
    s = D.EpochSampler(10, shuffle=True, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=4)
    assert list(s) == full[4:]
    s.set_epoch(3)
    assert [d.index for d in s] != [d.index for d in full]
    shards = [list(D.EpochSampler(10, True, 1, rank=r, world_size=3)) for r in range(3)]
    assert len({len(x) for x in shards}) == 1
    assert {d.index for sh in shards for d in sh} == set(range(10))


def test_epoch_crop_size_reaches_persistent_workers(tmp_path):
    """Progressive resizing: the size travels with each item, so workers started in epoch 1 crop
    at the size of epoch 2."""
    for i in range(4):
        photo(60, 50, seed=i).save(tmp_path / f"{i}.jpg")
    samples = [D.Sample(str(tmp_path / f"{i}.jpg"), 0) for i in range(4)]
    loader = D.make_loader(D.ImageDataset(samples, TrainTransform(32)), 4, True, workers=1)
    shapes = []
    for epoch, size in enumerate((16, 24)):
        loader.sampler.set_epoch(epoch, 0, size)
        shapes += [tuple(b.images.shape[2:]) for b in loader]
    assert shapes == [(16, 16), (24, 24)]


def test_loader_reports_failures_without_stopping(messy_folder):
    root, _, broken = messy_folder
    files = D.scan(root).good
    samples = [D.Sample(p, 0) for p, _ in files]
    loader = D.make_loader(D.ImageDataset(samples, EvalTransform.for_size(32)), 5, False, workers=2)
    seen, failed = 0, {}
    for batch in loader:
        seen += len(batch.labels)
        failed.update({samples[i].path: r for i, r in batch.failures})
        assert batch.images.dtype == torch.uint8 and batch.images.shape[1:] == (3, 32, 32)
    assert set(failed) == {str(broken["truncated"])}  # the header reads; the data does not
    assert seen == len(samples) - 1


def test_cache_gives_the_same_pixels_and_is_rebuilt_when_files_change(tmp_path, tiny_folder):
    split = D.discover(tiny_folder, val_split=0)
    tf = EvalTransform.for_size(24)
    cache = D.build_cache(split.train, tmp_path / "c", tf.resize_size)
    assert cache.ready
    plain = D.ImageDataset(split.train, tf)
    cached = D.ImageDataset(split.train, tf, cache)
    for i in range(0, len(split.train), 5):
        assert torch.equal(plain[i][0], cached[i][0])
    again = D.DecodedCache(tmp_path / "c", [s.path for s in split.train], tf.resize_size)
    assert again.ready and again.dir == cache.dir
    path = Path(split.train[0].path)
    time.sleep(0.01)
    photo(40, 40, seed=123).save(path)
    changed = D.DecodedCache(tmp_path / "c", [s.path for s in split.train], tf.resize_size)
    assert changed.dir != cache.dir and not changed.ready


def test_eval_crop_cache_holds_the_transforms_output(tmp_path, tiny_folder):
    """A crop cache stores what the eval transform gives, so evaluation from it is a copy."""
    split = D.discover(tiny_folder, val_split=0)
    tf = EvalTransform.for_size(24)
    cache = D.build_cache(split.train, tmp_path / "c", tf.resize_size, crop=tf)
    other = D.DecodedCache(tmp_path / "c", [s.path for s in split.train], tf.resize_size)
    assert cache.crop.img_size == 24 and other.dir != cache.dir  # a different key from the uncropped cache
    plain, cached = D.ImageDataset(split.train, tf), D.ImageDataset(split.train, tf, cache)
    for i in range(len(split.train)):
        assert torch.equal(plain[i][0], cached[i][0])
    with pytest.raises(ValueError, match="the cache holds"):  # another transform's pixels: refused
        D.ImageDataset(split.train, EvalTransform.for_size(32), cache)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_channels_last_uint8(tiny_folder, workers):
    """Stacked as NHWC, handed over as NCHW with channels_last strides: normalising for a
    channels_last model then moves no memory around, and the values match a per-image reference."""
    split = D.discover(tiny_folder, val_split=0)
    ds = D.ImageDataset(split.train, TrainTransform(24), None)
    batch = next(iter(D.make_loader(ds, 8, True, workers, seed=5)))
    assert batch.images.shape == (8, 3, 24, 24) and batch.images.is_contiguous(memory_format=torch.channels_last)
    for k, i in enumerate(batch.indices.tolist()):
        seed = next(s for j, s, *_ in D.make_loader(ds, 8, True, 0, seed=5).sampler if j == i)
        assert torch.equal(batch.images[k], ds[D.Draw(i, seed)].image)
    x = normalize(batch.images, channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert normalize(batch.images, channels_last=False).is_contiguous()


def test_eval_transform_of_an_image_already_at_the_resize_size(recwarn):
    img = photo(37, 50)  # shorter side 37 = round(32 / 0.875): only the crop is left to do
    out = EvalTransform.for_size(32)(img)
    assert torch.equal(out, torch.from_numpy(torchvision_reference(img, 32)).permute(2, 0, 1))
    assert not [w for w in recwarn if "not writable" in str(w.message)]


@needs_datasets()
def test_real_kaggle_photos_decode_to_the_reference():
    folder = DATASETS / "catsdogs" / "train"
    paths = sorted((folder / "cats").iterdir())[:100] + sorted((folder / "dogs").iterdir())[:100]
    tf = EvalTransform.for_size(224)
    for p in paths:
        img = D.decode(p)  # no draft: these photos are smaller than 2x the resize size
        assert torch.equal(tf(img), torch.from_numpy(torchvision_reference(img, 224)).permute(2, 0, 1)), p


HOLD_CACHE = """
import sys
from pathlib import Path
from resnet import data as D
root, folder = sys.argv[1], Path(sys.argv[2])
samples = [D.Sample(str(p), 0) for p in sorted(folder.glob("*.png"))]
cache = D.build_cache(samples, root, 32)
print(cache.dir, flush=True)
if len(sys.argv) > 3:  # hold it until told to go
    sys.stdin.readline()
"""


def test_decoded_caches_stay_under_their_limit_and_one_in_use_is_kept(tmp_path):
    """Three caches, the limit lowered to nothing: building the third drops the least recently used
    one nobody holds, and keeps the one a running process holds; `resnet cache --clear` removes
    the rest once nobody does."""
    root = tmp_path / "caches"
    sets = []
    for k in range(3):
        folder = tmp_path / f"set{k}"
        folder.mkdir()
        for i in range(4):
            photo(48, 40, seed=10 * k + i).save(folder / f"{i}.png")
        sets.append(folder)

    def build(folder: Path, env: dict, hold: bool = False) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", HOLD_CACHE, str(root), str(folder), *(["hold"] if hold else [])],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env})

    first, second = (build(f, {}).communicate()[0].strip() for f in sets[:2])
    assert {p.name for p in root.iterdir()} == {Path(first).name, Path(second).name}
    holder = build(sets[0], {}, hold=True)  # uses the first cache again: now the most recent, and in use
    assert holder.stdout.readline().strip() == first
    third = build(sets[2], {"RESNET_CACHE_LIMIT_GB": "0"}).communicate()[0].strip()
    assert {p.name for p in root.iterdir()} == {Path(first).name, Path(third).name}  # the second dropped
    holder.communicate("go\n")

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    (tmp_path / "xdg" / "resnet").mkdir(parents=True)
    root.rename(tmp_path / "xdg" / "resnet" / "decoded")
    listing = subprocess.run([sys.executable, "-m", "resnet", "cache"], capture_output=True, text=True, env=env)
    rows = [line for line in listing.stdout.splitlines() if line.startswith("decoded ")]
    assert listing.returncode == 0 and len(rows) == 2 and not any("in use" in row for row in rows)
    cleared = subprocess.run([sys.executable, "-m", "resnet", "cache", "--clear"], capture_output=True, text=True, env=env)
    assert "removed 2 caches" in cleared.stdout and not any((tmp_path / "xdg" / "resnet" / "decoded").iterdir())
