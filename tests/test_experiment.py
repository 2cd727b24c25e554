"""`resnet experiment degradation` on a tiny synthetic folder: the files and their schema (the
science is in docs/science.md, measured on CIFAR-10)."""

import csv
import json

import numpy as np
import torch
from PIL import Image

from conftest import photo
from resnet.cli import main
from resnet.transforms import EvalTransform, PadCropTransform


def test_degradation_writes_history_summary_and_figure(tmp_path):
    root = tmp_path / "cifar"
    for c, bright in (("cat", False), ("dog", True)):
        (root / c).mkdir(parents=True)
        for i in range(20):
            photo(32, 32, seed=i + (40 if bright else 0), bright=bright).save(root / c / f"{i}.png")
    out = tmp_path / "exp"
    assert main(["experiment", "degradation", str(root), "--depths", "20", "--epochs", "2", "--out", str(out),
                 "--train-images", "20", "--lr", "0.05"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["plain20", "resnet20"]
    for s in summary.values():
        assert set(s) == {"final_train_error", "final_test_error", "epochs", "seconds"}
        assert s["epochs"] == 2 and 0 <= s["final_train_error"] <= 1 and 0 <= s["final_test_error"] <= 1
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["network"], r["epoch"]) for r in rows] == [("plain20", "1"), ("plain20", "2"),
                                                          ("resnet20", "1"), ("resnet20", "2")]
    assert float(rows[-1]["train_error"]) == summary["resnet20"]["final_train_error"]
    with Image.open(out / "figure6.png") as im:
        assert im.size[0] > 800 and im.size[1] > 300
    # every network saw the same images: one training list (the subset asked for), one test list
    assert len((out / "train.csv").read_text().splitlines()) == 1 + 20
    assert len((out / "test.csv").read_text().splitlines()) == 1 + 4  # the paper's 10 % held out
    for name in summary:  # one recipe for all: --lr reached every network's run
        assert json.loads((out / name / "config.json").read_text())["lr"] == 0.05


def test_pad_crop_moves_the_image_without_resampling():
    a = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    g = torch.Generator().manual_seed(1)
    t = PadCropTransform(32, pad=4, hflip=False)
    seen = set()
    for _ in range(40):
        out = t(a, g).permute(1, 2, 0).numpy()
        # some shift (dy, dx) in -4..4 maps the crop onto the image, the rest is zero padding
        found = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                 if np.array_equal(out[max(0, -dy):32 - max(0, dy), max(0, -dx):32 - max(0, dx)],
                                   a[max(0, dy):32 + min(0, dy), max(0, dx):32 + min(0, dx)])]
        assert found
        seen.add(found[0])
    assert len(seen) > 10  # the crops really move
    assert torch.equal(EvalTransform.for_size(32, 1.0)(a), torch.from_numpy(a).permute(2, 0, 1))  # no resize
