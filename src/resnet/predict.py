"""`Classifier`: a checkpoint that takes images (paths or Pillow images) and gives the top-k
labels. Files that cannot be read come back as a row with an `error`, never an exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from .checkpoint import load_checkpoint
from .data import read_images
from .train import pick_device
from .transforms import EvalTransform, normalize


class Classifier:
    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], device: str = "auto"):
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.classes: list[str] = list(meta["classes"])
        self.mean, self.std = tuple(meta["mean"]), tuple(meta["std"])
        self.transform = EvalTransform.for_size(meta["img_size"])

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> "Classifier":
        model, meta = load_checkpoint(path)
        return cls(model, meta, device)

    @torch.inference_mode()
    def predict(self, images: Sequence[str | Path | Image.Image], top_k: int = 1,
                batch_size: int = 32) -> list[dict[str, Any]]:
        """One dict per input: `label`, `probability`, `top_k` [(label, probability)...], or `error`."""
        k = max(1, min(top_k, len(self.classes)))
        results: list[dict[str, Any]] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            paths = [x for x in chunk if not isinstance(x, Image.Image)]
            decoded = iter(read_images(paths, draft_size=self.transform.resize_size))
            rows, tensors = [], []
            for item in chunk:
                img = item.convert("RGB") if isinstance(item, Image.Image) else next(decoded)
                name = getattr(item, "filename", "") if isinstance(item, Image.Image) else str(item)
                if isinstance(img, str):
                    rows.append({"path": name, "error": img})
                    continue
                rows.append({"path": name})
                tensors.append(self.transform(img))
            if tensors:
                x = normalize(torch.stack(tensors), self.mean, self.std, self.device)
                probs = self.model(x).float().softmax(1).cpu()
                top = iter(zip(*probs.topk(k, dim=1)))
                for row in rows:
                    if "error" not in row:
                        p, idx = next(top)
                        row["label"], row["probability"] = self.classes[idx[0]], float(p[0])
                        row["top_k"] = [(self.classes[i], float(q)) for q, i in zip(p.tolist(), idx.tolist())]
            results += rows
        return results
