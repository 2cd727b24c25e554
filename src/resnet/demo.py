"""`resnet demo`: the whole workflow offline, on a real dataset that ships inside scikit-learn
(1,797 handwritten digits, 10 classes, UCI): write it as an image folder, train the paper's
ResNet-20, evaluate on a held-out fifth, predict a few files, point at the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .evaluate import evaluate, write_json, write_report
from .predict import Classifier
from .train import make_config, train


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


def run_demo(out: str | Path = "runs/demo", epochs: int = 15) -> dict:
    out = Path(out)
    root = write_digits(out / "digits")
    print(f"dataset: scikit-learn's handwritten digits written to {root}")
    # Digits are not mirror-symmetric: no flips; crops keep most of the digit. 8x8 scans hold no
    # detail for progressive resizing to skip: one size throughout.
    cfg = make_config("default", data=str(root), arch="resnet20", width=1.0, img_size=32, min_img_size=32,
                      eval_size=32, epochs=epochs, batch_size=64, lr=0.2, hflip=False, scale_min=0.6,
                      val_split=0.2, workers=0,
                      out=str(out / "run"), seed=0)
    train(cfg)
    run = out / "run"
    result, samples, probs = evaluate(run / "best.pt", run / "val.csv", workers=0)
    write_json(run / "evaluation.json", result)
    report = write_report(run / "report", result, samples, probs, run / "metrics.csv")
    files = [s.path for s in samples[:: max(1, len(samples) // 5)][:5]]
    for row in Classifier.from_checkpoint(run / "best.pt").predict(files, top_k=1):
        print(f"predict {row['path']}: {row['label']} ({row['probability']:.1%})")
    print(f"report: {report}")
    print(f"held-out accuracy: {result['accuracy']:.4f} on {result['num_images']} images "
          f"({run / 'evaluation.json'})")
    return result
