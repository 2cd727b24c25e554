"""`resnet demo`: the whole workflow offline, on a real dataset that ships inside scikit-learn
(1,797 handwritten digits, 10 classes, UCI): write it as an image folder, train the paper's
ResNet-20, evaluate on a held-out fifth, predict a few files, point at the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .api import train
from .data import read_listing
from .inference.predict import Classifier


def write_digits(root: str | Path, size: int = 32) -> Path:
    """Each 8x8 digit (grey levels 0..16) as a `size` px PNG in `root/<digit>/`. Idempotent."""
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        path = root / str(label) / f"{i:04d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray((255 - pixels * 255 / 16).astype(np.uint8), "L")  # dark ink on white
        img.resize((size, size), Image.Resampling.BILINEAR).save(path)
    return root


def previous_demo(run: Path, digits: Path) -> bool:
    """Whether `run` holds a run this demo trained on `digits` before: the demo starts it over (a
    folder holding anything else is refused, as `train` refuses any used --out)."""
    config = run / "config.json"  # what the run trained on, without loading its weights
    return (run / "last.pt").is_file() and config.is_file() and \
        json.loads(config.read_text()).get("data") == str(digits.resolve())


def run_demo(out: str | Path = "runs/demo", epochs: int = 15) -> dict:
    out = Path(out)
    root = write_digits(out / "digits")
    print(f"dataset: scikit-learn's handwritten digits written to {root}")
    run = out / "run"
    if previous_demo(run, root):
        shutil.rmtree(run)
    # Digits are not mirror-symmetric: no flips; crops keep most of the digit. 8x8 scans hold no
    # detail for progressive resizing to skip: one size throughout.
    summary = train(root, arch="resnet20", width=1.0, img_size=32, min_img_size=32, eval_size=32, epochs=epochs,
                    batch_size=64, lr=0.2, hflip=False, scale_min=0.6, val_split=0.2, workers=0, out=str(run), seed=0)
    result = summary["evaluation"]
    held_out = read_listing(run / "val.csv")
    for row in Classifier.from_checkpoint(run / "best.pt").predict(held_out[:: max(1, len(held_out) // 5)][:5], top_k=1):
        print(f"predict {row['path']}: {row['label']} ({row['probability']:.1%})")
    print(f"report: {summary['report']}")
    print(f"held-out accuracy: {result['accuracy']:.4f} on {result['num_images']} images "
          f"({run / 'evaluation.json'})")
    return result
