"""`Classifier`: a trained model that takes images and gives top-k labels, and Grad-CAM heatmaps of
what it looked at.

One object for every way a model is stored — a training checkpoint, an exported ONNX file (fp32 or
int8) or exported safetensors — with the classes, preprocessing and input size read from the file.
Every input (a path, an open file, a Pillow image, an array) goes through the data module's
decoding rules and `runtime.logits`, so it is scored exactly as `evaluate` and training's
validation score it. Files that cannot be read come back as a row with an `error`, never an
exception.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import data as D
from ..checkpoint import CARD_KEYS, eval_transform, load_checkpoint
from ..constants import ENGINE_CHECK_RTOL, PROBE_BATCH
from ..data.transforms import normalize
from ..device import pick_device
from ..errors import CheckpointError, ConfigError, first_line
from . import policy, runtime
from .engines import open_onnx, read_card, trained_precision
from .exports import cached_onnx, onnx_cache_path, onnx_key, sample_images

log = logging.getLogger(__name__)

@dataclass
class Explanation:
    """Grad-CAM for one image: `heatmap` (HxW, 0..1) over `image`, the centre crop the model saw
    (HxWx3 uint8, at least 224 px on a side for display), for class `label`."""

    image: np.ndarray
    heatmap: np.ndarray
    label: str
    class_index: int
    probability: float

    def overlay(self, alpha: float = 0.6, colormap: str = "jet") -> Image.Image:
        """The photo with the heatmap's colours over it, as opaque as the heat (at most `alpha`):
        where the model did not look, the photo shows as it is."""
        from matplotlib import colormaps

        colours = colormaps[colormap](self.heatmap)[..., :3] * 255
        weight = alpha * self.heatmap[..., None]
        blended = (1 - weight) * self.image.astype(np.float32) + weight * colours
        return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), "RGB")


class Classifier:
    def __init__(self, net: runtime.Net, card: dict[str, Any], source: str = "",
                 model: torch.nn.Module | None = None, precision: policy.Precision = policy.Precision(None, ""),
                 engine: policy.Engine = policy.Engine("torch", "")):
        self.net = net
        self.precision = precision  # what `net` computes in, and why: the one record of it
        self.engine = engine
        self.model = model  # the PyTorch model behind `net`, when there is one (Grad-CAM needs it)
        self.card = {k: card[k] for k in CARD_KEYS if k in card}
        self.classes: list[str] = [str(c) for c in card["classes"]]
        self.mean, self.std = tuple(card["mean"]), tuple(card["std"])
        self.tta = bool(card.get("tta", False))  # how the model was scored when it trained
        self.tta_shift = int(card.get("tta_shift", 0))  # ... and with which shifted views (`runtime.logits`)
        self.transform = eval_transform(card)
        self.source = source

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", amp: str = "auto",
                        channels_last: bool = True, compile: bool = False, engine: str = "auto",
                        images: float = 0, cache_dir: str | Path | None = None) -> "Classifier":
        """A training checkpoint (.pt) or exported safetensors, in the model's precision and on
        the engine `policy` decides (`images`: how many it will score; `math.inf`: long-lived),
        with ONNX exports kept in `cache_dir`. `compile`: see `runtime.compile_for_inference`.
        Grad-CAM uses the eager PyTorch model whichever engine predicts."""
        return cls.from_model(*load_checkpoint(path), str(path), device, amp, channels_last, compile, engine, images,
                              cache_dir)

    @classmethod
    def from_model(cls, model: torch.nn.Module, meta: dict[str, Any], path: str, device: str = "auto",
                   amp: str = "auto", channels_last: bool = True, compile: bool = False, engine: str = "auto",
                   images: float = 0, cache_dir: str | Path | None = None) -> "Classifier":
        """`from_checkpoint` on a checkpoint already read (`load_checkpoint`'s model and the rest),
        so that a caller needing it for more than one thing reads it once. The model becomes the
        Classifier's own: moved to the device and its BatchNorms folded, in place."""
        dev = pick_device(device)
        policy.check_engine(engine, dev, compile)
        recorded = (meta.get("precision") or {}).get("dtype")
        precision = policy.model_precision(amp, dev, meta.get("precision"))
        if amp == "auto" and recorded and precision.name != recorded:
            log.warning(f"{path}: {precision.reason}")  # not the precision it trained in: one line says so
        key = onnx_key(model, meta) if engine != "torch" and dev.type == "cpu" else None  # before folding
        exported = key is not None and onnx_cache_path(key, cache_dir).is_file()
        net = runtime.TorchNet.prepare(model, dev, precision.dtype, channels_last)
        eager = net.model
        if compile:
            net.model = runtime.compile_for_inference(eager)
        # The model in memory (its BatchNorms folded: the same function), not the file read again.
        export = OnnxExport(eager, meta, key, cache_dir, precision.dtype == torch.bfloat16)
        chosen, runs = _engine_and_net(engine, net, export, precision, compile, images, exported, str(path))
        return cls(runs, meta, str(path), eager, policy.precision_on(precision, chosen.name), chosen)

    @classmethod
    def from_onnx(cls, path: str | Path, amp: str = "auto", engine: str = "auto", device: str = "auto",
                  compile: bool = False) -> "Classifier":
        """An exported ONNX file (fp32 or int8) on OpenVINO or onnxruntime (`engine`; auto: the
        faster here of those that compute it in the model's own precision, the one it trained in,
        as for a checkpoint). On the CPU, without `compile` (`policy.check_engine`)."""
        policy.check_engine(engine, torch.device("cpu" if device == "auto" else device), compile, onnx_file=True)
        card, metadata = read_card(path)
        precision = policy.model_precision(amp, torch.device("cpu"), trained_precision(path, metadata))
        precision = replace(precision, int8=metadata.get("precision") == "int8")
        bf16 = precision.dtype == torch.bfloat16
        chosen = policy.choose_onnx_engine(engine, precision)
        if chosen is not None:
            net = open_onnx(path, chosen.name, bf16)
        else:
            nets = {name: open_onnx(path, name, bf16) for name in policy.onnx_engines(precision)}
            size = int(card["eval_size"])
            chosen = policy.faster_engine({n: runtime.net_seconds(x, size, PROBE_BATCH) for n, x in nets.items()},
                                          PROBE_BATCH)
            net = nets[chosen.name]
        return cls(net, card, str(path), precision=policy.precision_on(precision, chosen.name), engine=chosen)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", amp: str = "auto", compile: bool = False,
             engine: str = "auto", images: float = 0) -> "Classifier":
        """Whatever `path` holds: ONNX by its suffix, otherwise a checkpoint."""
        if str(path).lower().endswith(".onnx"):
            return cls.from_onnx(path, amp, engine, device, compile)
        return cls.from_checkpoint(path, device, amp, compile=compile, engine=engine, images=images)

    def describe(self) -> dict[str, Any]:
        """What the model is and how it runs: for `serve`'s /info and the CLI."""
        return {"classes": self.classes, "input_size": self.transform.img_size,
                "resize_size": self.transform.resize_size, "mean": list(self.mean), "std": list(self.std),
                "arch": self.card.get("arch"), "source": self.source, "device": self.net.device.type,
                "precision": self.precision.name, "precision_reason": self.precision.reason,
                "engine": self.engine.name, "engine_reason": self.engine.reason,
                "tta": self.tta, "tta_shift": self.tta_shift, "explain": self.model is not None}

    # -- inference -------------------------------------------------------------------------

    def logits(self, images: Sequence[Image.Image | np.ndarray], tta: bool | None = None) -> torch.Tensor:
        """float32 logits of already-decoded RGB images (what `read_images` returns), one batch.
        `tta` None: as the model was scored when it trained (its card's `tta`); with TTA, the card's
        shifted views too."""
        batch = D.collate([D.Item(self.transform(img), 0, i) for i, img in enumerate(images)])
        return runtime.logits(self.net, batch.images, self.mean, self.std, self.with_tta(tta), self.tta_shift)

    def score(self, samples: Sequence[D.Sample], tta: bool | None = None, batch_size: int = 64,
              workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
        """(logits, labels, indices into `samples`, failures) of labelled samples, decoded by a
        loader (`workers` processes; None: as many as pay on this device) and scored through the
        same `runtime.logits` as `logits`: what `evaluate` reports."""
        loader = D.make_loader(D.ImageDataset(samples, self.transform), batch_size, False,
                               D.default_workers(self.net.device.type) if workers is None else workers)
        return runtime.run_eval(self.net, loader, self.mean, self.std, self.with_tta(tta), self.tta_shift)

    def with_tta(self, tta: bool | None) -> bool:
        """Whether to average with the mirror image: as asked, or (None) as the model was scored
        when it trained."""
        return self.tta if tta is None else tta

    def predict(self, images: D.ImageInput | Sequence[D.ImageInput], top_k: int = 1, tta: bool | None = None,
                batch_size: int = 32, progress: Callable[[Iterable], Iterable] = iter
                ) -> list[dict[str, Any]]:
        """One dict per input, in order (a single path or image is one input): `path`, `label`,
        `probability`, `top_k` [(label, probability)...], or `path` and `error`. `progress` wraps
        the batches (a bar)."""
        results: list[dict[str, Any]] = []
        for chunk in progress(runtime.chunks(D.as_items(images), batch_size)):
            decoded = D.read_images(chunk)
            rows = [{"path": _name(item)} for item in chunk]
            good = [i for i, img in enumerate(decoded) if not isinstance(img, str)]
            for i, img in enumerate(decoded):
                if isinstance(img, str):
                    rows[i]["error"] = img
            if good:
                probs = self.logits([decoded[i] for i in good], tta).softmax(1)
                for i, top in zip(good, self.top(probs, top_k)):
                    rows[i].update(top)
            results += rows
        return results

    def top(self, probs: torch.Tensor, top_k: int) -> list[dict[str, Any]]:
        """`label`, `probability` and `top_k` [(label, probability)...] per row of probabilities."""
        values, indices = probs.topk(max(1, min(top_k, len(self.classes))), dim=1)
        return [{"label": self.classes[idx[0]], "probability": p[0],
                 "top_k": [(self.classes[j], q) for j, q in zip(idx, p)]}
                for p, idx in zip(values.tolist(), indices.tolist())]

    # -- Grad-CAM --------------------------------------------------------------------------

    def explain(self, image: D.ImageInput, target: int | str | None = None) -> Explanation:
        """Grad-CAM (Selvaraju et al. 2017) from the last stage, for the predicted class or
        `target` (an index or a class name): the stage's feature maps weighted by the mean gradient
        of the class score over each map, summed, rectified. Read through hooks; the model's code is
        not touched. Computed in fp32 whatever the precision of `predict`."""
        if self.model is None:
            raise ConfigError("Grad-CAM needs the PyTorch model: load a checkpoint, not an ONNX file")
        img = D.load_image(image)
        x = normalize(self.transform(img)[None], self.mean, self.std, self.net.device,
                      self.net.channels_last)
        model = self.model
        stage = getattr(model, f"layer{model.num_stages}")
        captured: list[torch.Tensor] = []
        hook = stage.register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            with torch.enable_grad():
                out = model(x).float()
                probs = out.softmax(1)[0]
                index = self._class_index(target) if target is not None else int(probs.argmax())
                (grads,) = torch.autograd.grad(out[0, index], captured[0])
        finally:
            hook.remove()
        acts = captured[0][0].detach().float()
        weights = grads[0].float().mean(dim=(1, 2))
        cam = F.relu((weights[:, None, None] * acts).sum(0))
        display = self._display_crop(img)
        cam = F.interpolate(cam[None, None], size=display.shape[:2], mode="bilinear", align_corners=False)[0, 0]
        cam = cam / cam.max() if cam.max() > 0 else cam
        return Explanation(display, cam.cpu().numpy(), self.classes[index], index, float(probs[index].detach()))

    def _class_index(self, target: int | str) -> int:
        if isinstance(target, str):
            if target not in self.classes:
                raise ConfigError(f"unknown class {target!r}; the model's classes: {', '.join(self.classes)}")
            return self.classes.index(target)
        if not 0 <= target < len(self.classes):
            raise ConfigError(f"class index {target} out of range 0..{len(self.classes) - 1}")
        return target

    def _display_crop(self, img: Image.Image | np.ndarray, min_side: int = 224) -> np.ndarray:
        """The region of the photo the model saw (the centre crop, in the photo's own pixels),
        at least `min_side` px, so that a heatmap over a 96 px input is still a picture."""
        pil = img if isinstance(img, Image.Image) else Image.fromarray(img)
        w, h = pil.size
        scale = self.transform.resize_size / min(w, h)
        side = self.transform.img_size / scale
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        size = max(min_side, self.transform.img_size, min(448, int(side)))
        return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR, box=box))


@dataclass(frozen=True)
class OnnxExport:
    """A checkpoint's ONNX export as an engine opens it: made from `model` once and cached under
    `key` (`exports.cached_onnx`), only when an engine is tried."""

    model: torch.nn.Module
    meta: dict[str, Any]
    key: str | None
    cache_dir: str | Path | None
    bf16: bool

    def open(self, engine: str) -> runtime.Net:
        assert self.key is not None, "an ONNX engine runs on the CPU only, where the export has its key"
        return open_onnx(cached_onnx(self.model, self.meta, self.key, self.cache_dir), engine, self.bf16)


def _engine_and_net(requested: str, net: runtime.TorchNet, export: OnnxExport, precision: policy.Precision,
                    compile: bool, images: float, exported: bool, source: str) -> tuple[policy.Engine, runtime.Net]:
    """(the engine, the `Net` that runs it) for a model loaded as `net`: `policy.choose_engine`'s
    answer where it needs no timing; else, for a job of known length, whether an export pays
    (`policy.export_too_dear` on a timed PyTorch batch), and then whichever of PyTorch and the ONNX
    engines that compute the model in its precision (`policy.onnx_engines`) scores probe batches
    fastest, each provided it computes what the model does. An engine that fails is left out,
    saying why, unless it was asked for by name."""
    size = int(export.meta["eval_size"])
    chosen = policy.choose_engine(requested, net.device, compile, images, exported)
    torch_s = None
    if chosen is None and not exported and images < math.inf:
        torch_s = runtime.net_seconds(net, size, PROBE_BATCH)
        chosen = policy.export_too_dear(images, torch_s / PROBE_BATCH)
    if chosen is not None and chosen.name == "torch":
        return chosen, net
    if chosen is not None:  # asked for by name: it runs, in the model's precision, or it is an error
        try:
            return chosen, export.open(chosen.name)
        except Exception as e:  # noqa: BLE001 - the exporter and the engines raise many unrelated types
            raise CheckpointError(f"cannot run {source} on {chosen.name}: {first_line(e)}") from e
    nets, left_out = _matching_nets(net, size, precision, export)
    seconds = {"torch": torch_s if torch_s is not None else runtime.net_seconds(net, size, PROBE_BATCH)}
    seconds |= {name: runtime.net_seconds(other, size, PROBE_BATCH) for name, other in nets.items()}
    chosen = policy.faster_engine(seconds, PROBE_BATCH, left_out)
    return chosen, nets.get(chosen.name, net)


def _matching_nets(torch_net: runtime.TorchNet, size: int, precision: policy.Precision, export: OnnxExport
                   ) -> tuple[dict[str, runtime.Net], list[str]]:
    """The ONNX engines that run the model in its `precision` and compute what PyTorch computes —
    their logits on a random batch within `ENGINE_CHECK_RTOL` of fp32 PyTorch's (relative to their
    scale; bf16 rounds more) — and a reason for each engine left out."""
    x = torch.randn(PROBE_BATCH, 3, size, size)
    reference = replace(torch_net, dtype=None)(
        x.to(torch_net.device, memory_format=runtime.memory_format(torch_net.channels_last))).float().cpu()
    tolerance = ENGINE_CHECK_RTOL[precision.name] * max(1.0, float(reference.abs().max()))
    nets, left_out = {}, []
    for name in policy.onnx_engines(precision):
        try:
            candidate = export.open(name)
        except Exception as e:  # noqa: BLE001 - the exporter and the engines raise many unrelated types
            left_out.append(f"{name} left out: {first_line(e)}")
            continue
        gap = float((candidate(x) - reference).abs().max())
        if gap > tolerance:
            left_out.append(f"{name} left out: its logits differ from PyTorch's by {gap:.2g}")
        else:
            nets[name] = candidate
    return nets, left_out


def _name(item: D.ImageInput) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    return str(getattr(item, "filename", "") or getattr(item, "name", "") or "")


def compare(reference: Classifier, exported: Classifier, images: Sequence[D.ImageInput] | None = None,
            count: int = 8, seed: int = 0) -> dict[str, Any]:
    """Logits of both on the same preprocessed images: real ones when given, else `count` random
    photos-sized arrays. `max_abs_difference` of the logits and how many top-1 labels agree:
    `resnet export --verify`."""
    if images:
        decoded = [img for img in D.read_images(list(images))
                   if not isinstance(img, str)]
    else:
        rng = np.random.default_rng(seed)
        side = reference.transform.resize_size + 8
        decoded = [rng.integers(0, 256, (side, side + 16 * i, 3), dtype=np.uint8) for i in range(count)]
    a, b = reference.logits(decoded), exported.logits(decoded)
    return {"images": len(decoded), "max_abs_difference": float((a - b).abs().max()),
            "labels_agree": int((a.argmax(1) == b.argmax(1)).sum())}


def verify_images(folder: str | Path | None, limit: int = 64) -> list[str] | None:
    """Up to `limit` images of `folder`, spread over it (None: use random images)."""
    return None if folder is None else sample_images(folder, limit, "verify")


def write_cams(clf: Classifier, rows: list[dict[str, Any]], folder: Path) -> None:
    """`<name>_cam.png` per labelled file (`_2`, `_3`... when names repeat)."""
    folder.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for row in rows:
        if "label" not in row:
            continue
        stem, n = Path(row["path"]).stem, 1
        while (name := f"{stem}_cam.png" if n == 1 else f"{stem}_cam_{n}.png") in taken:
            n += 1
        taken.add(name)
        clf.explain(row["path"]).overlay().save(folder / name)
        row["cam"] = str(folder / name)
