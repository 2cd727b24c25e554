"""The one inference path: Classifier inputs of every kind, evaluate = predict, the predict command,
Grad-CAM, ONNX / int8 / safetensors exports."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from conftest import photo, write_broken
from resnet import Classifier
from resnet.cli import main
from resnet.errors import ConfigError
from resnet.inference.evaluate import evaluate


@pytest.fixture(scope="module")
def clf(trained) -> Classifier:
    return Classifier.from_checkpoint(trained[1] / "best.pt", device="cpu")


def odd_images(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """name -> (file, the RGB pixels a viewer shows for it, as the array a user would hold)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = photo(80, 60, seed=7)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    base.save(folder / "rotated.jpg", exif=exif.tobytes(), quality=90)
    rgba = np.dstack([np.asarray(base), np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (60, 1))])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    grey16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(grey16).save(folder / "sixteen.png")
    big = photo(640, 480, seed=8)  # large enough for the JPEG draft-scale decoding to apply
    big.save(folder / "big.jpg", quality=92)
    return {"rotated": (folder / "rotated.jpg", np.asarray(ImageOps.exif_transpose(Image.open(folder / "rotated.jpg")))),
            "alpha": (folder / "alpha.png", rgba),
            "sixteen": (folder / "sixteen.png", grey16),
            "big": (folder / "big.jpg", None)}


def test_path_pillow_and_array_give_identical_logits(clf, tmp_path):
    for name, (path, array) in odd_images(tmp_path).items():
        by_path = clf.predict([path], top_k=2)[0]
        with Image.open(path) as im:
            by_pillow = clf.predict([im], top_k=2)[0]
            assert im.size == Image.open(path).size, "the caller's image was changed"
        assert by_path["top_k"] == by_pillow["top_k"], name
        if array is not None:
            assert clf.predict([array], top_k=2)[0]["top_k"] == by_path["top_k"], name
    # The same photo decoded by a naive convert("RGB") (no EXIF rotation) is a different input:
    # the test above would not catch a path that skipped the rotation unless it changed the logits.
    naive = np.asarray(Image.open(tmp_path / "rotated.jpg").convert("RGB"))
    rotated = odd_images(tmp_path)["rotated"][1]
    assert not torch.equal(clf.logits([naive]), clf.logits([rotated]))


def test_evaluate_and_classifier_give_identical_probabilities(trained, tmp_path):
    root, run = trained
    big = tmp_path / "data"
    for c, bright in (("a", False), ("b", True)):
        (big / c).mkdir(parents=True)
        for i in range(3):
            photo(300, 220, seed=i + (9 if bright else 0), bright=bright).save(big / c / f"{i}.jpg", quality=90)
    for source in (root, big):
        result, samples, probs = evaluate(run / "best.pt", source, workers=0, batch_size=5, device="cpu")
        rows = Classifier.from_checkpoint(run / "best.pt", device="cpu").predict(
            [s.path for s in samples], top_k=2, batch_size=5)
        ours = torch.tensor([[p for _, p in sorted(r["top_k"])] for r in rows])
        assert torch.equal(ours, probs.to(ours.dtype))


def test_tta_averages_with_the_mirror_image(clf):
    from resnet.inference import runtime

    def logits(batch: torch.Tensor, tta: bool) -> torch.Tensor:
        return runtime.logits(clf.net, batch, clf.mean, clf.std, tta)

    g = torch.Generator().manual_seed(0)
    half = torch.randint(0, 256, (1, 3, 24, 12), dtype=torch.uint8, generator=g)
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)
    asymmetric = torch.cat([half, torch.randint(0, 256, (1, 3, 24, 12), dtype=torch.uint8, generator=g)], dim=-1)
    assert torch.allclose(logits(symmetric, True), logits(symmetric, False), atol=1e-5)
    plain, tta = logits(asymmetric, False), logits(asymmetric, True)
    assert not torch.allclose(plain, tta, atol=1e-4)
    assert torch.allclose(tta, (plain + logits(asymmetric.flip(-1), False)) / 2, atol=1e-5)


def test_shifted_views_count_half_as_airbench_scores_them(clf):
    """TTA with a shift: the mirror pair counts half, the pair moved `shift` px down-right and
    up-left (edges mirrored, as numpy's reflect pads) a quarter each. A wrong direction, weight or
    padding gives other logits: the image is random, the network's receptive field covers it."""
    from resnet.inference import runtime

    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8, generator=g)
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect"))

    def pair(batch: torch.Tensor) -> torch.Tensor:
        return runtime.logits(clf.net, batch.contiguous(), clf.mean, clf.std, True)

    expected = pair(x) / 2 + (pair(padded[..., :24, :24]) + pair(padded[..., 4:, 4:])) / 4
    shifted = runtime.logits(clf.net, x, clf.mean, clf.std, True, shift=2)
    assert torch.allclose(shifted, expected, atol=1e-5)
    assert not torch.allclose(shifted, pair(x), atol=1e-3)
    assert torch.equal(runtime.logits(clf.net, x, clf.mean, clf.std, False, shift=2),
                       runtime.logits(clf.net, x, clf.mean, clf.std, False))  # no TTA: one view
    assert runtime.tta_views(True, 2) == 6 and runtime.tta_views(True, 0) == 2 and runtime.tta_views(False, 2) == 1


def test_import_resnet_does_not_load_the_training_loop():
    """`import resnet` loads none of the training modules; `resnet.train` then does (so the names
    checked are modules that exist: a renamed module would fail here, not pass unseen)."""
    training = tuple(f"resnet.training.{m}" for m in ("loop", "run", "records", "budget", "recipe"))
    code = (f"import sys, resnet; print(sorted(m for m in {training} if m in sys.modules)); resnet.train; "
            f"import resnet.api; print(sorted(m for m in {training} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    before, after = r.stdout.splitlines()
    assert before == "[]" and after == str(sorted(training))


def test_predict_folder_with_broken_files_one_row_each(trained, tmp_path, capsys):
    root, run = trained
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(4):
        photo(50, 40, seed=i).save(folder / f"{i}.jpg", quality=90)
    broken = write_broken(folder / "broken")
    out = tmp_path / "deep" / "rows.csv"
    assert main(["predict", str(run / "best.pt"), str(folder), "--output", str(out), "--top-k", "2"]) == 0
    assert capsys.readouterr().out == ""  # the file only
    raw = out.read_bytes()
    assert b"\r\n" not in raw
    rows = list(csv.DictReader(raw.decode().splitlines()))
    assert len(rows) == 4 + len(broken)
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {p.name for p in broken.values()}
    assert "decompression bomb" in errors["bomb.png"]
    good = [r for r in rows if not r["error"]]  # each row is the Classifier's answer for its file
    answers = Classifier.load(run / "best.pt").predict([r["path"] for r in good], top_k=2)
    assert [r["label"] for r in good] == [a["label"] for a in answers]
    assert [float(r["probability"]) for r in good] == [round(a["probability"], 4) for a in answers]
    assert [r["top_k"] for r in good] == [" ".join(f"{c}:{p:.4f}" for c, p in a["top_k"]) for a in answers]

    assert main(["predict", str(run / "best.pt"), str(folder / "*.jpg"), "--output", str(tmp_path / "r.json")]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data) == 4 and set(data[0]) == {"path", "label", "probability", "top_k"}
    assert data[0]["top_k"][0] == {"label": data[0]["label"], "probability": data[0]["probability"]}


def test_predict_exit_codes(trained, tmp_path, capsys):
    run = trained[1]
    assert main(["predict", str(run / "best.pt"), str(tmp_path / "none" / "*.jpg")]) == 1
    (tmp_path / "bad.jpg").write_text("not an image")
    assert main(["predict", str(run / "best.pt"), str(tmp_path / "bad.jpg")]) == 1
    assert main(["predict", str(run / "best.pt"), str(trained[0] / "a" / "0.png"), str(tmp_path / "bad.jpg")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["path", "label", "prob"]
    assert "error: not an image" in table[-1]
    for args, needle in (([str(tmp_path / "missing.pt"), "x.jpg"], "checkpoint not found"),
                         ([str(run / "best.pt"), "x.jpg", "--output", "rows.txt"], "name a .csv or .json")):
        r = subprocess.run([sys.executable, "-m", "resnet", "predict", *args], capture_output=True, text=True)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


PATTERNS = ("horizontal", "none", "vertical")  # sorted: the classes' indices


def quadrant_images(n: int, seed: int, classes: tuple[int, ...] = (0, 1, 2)) -> list[tuple[np.ndarray, int]]:
    """36 px noise images whose class is set by the top-left quadrant alone: vertical or horizontal
    stripes there, or nothing but the noise that fills the rest of every image. Grad-CAM shows
    evidence *for* a class; with a "none" class, each pattern class has to be recognised by its
    pattern, not as the absence of the other's."""
    rng = np.random.default_rng(seed)
    bars = (np.arange(18) // 3 % 2 * 255).astype(np.uint8)  # 6 px period: survives resizing
    patterns = {"vertical": np.tile(bars, (18, 1)), "horizontal": np.tile(bars[:, None], (1, 18))}
    out = []
    for i in range(n):
        label = classes[i % len(classes)]
        img = rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)
        if PATTERNS[label] in patterns:
            img[:18, :18] = patterns[PATTERNS[label]][..., None]
        out.append((img, label))
    return out


def test_grad_cam_looks_at_the_quadrant_that_decides(tmp_path):
    root = tmp_path / "quad"
    for c in PATTERNS:
        (root / c).mkdir(parents=True)
    for i, (img, label) in enumerate(quadrant_images(150, seed=0)):
        Image.fromarray(img).save(root / PATTERNS[label] / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", str(root), "--arch", "resnet20", "--img-size", "32", "--min-img-size", "32", "--eval-size", "32", "--epochs", "12",
                 "--batch-size", "16", "--workers", "0", "--out", str(run), "--val-split", "0.2",
                 "--scale-min", "1.0", "--cache-dir", str(tmp_path / "cache")]) == 0
    clf = Classifier.from_checkpoint(run / "best.pt", device="cpu")
    tests = quadrant_images(20, seed=1, classes=(0, 2))  # the images with a pattern to find
    correct = sum(r["label"] == PATTERNS[lab] for r, (_, lab) in zip(clf.predict([img for img, _ in tests]), tests))
    assert correct >= 18, "the model did not learn the task: the Grad-CAM check would mean nothing"
    peaks = 0
    for img, label in tests:
        cam = clf.explain(img)
        h, w = cam.heatmap.shape
        quads = [cam.heatmap[:h // 2, :w // 2], cam.heatmap[:h // 2, w // 2:],
                 cam.heatmap[h // 2:, :w // 2], cam.heatmap[h // 2:, w // 2:]]
        peaks += int(np.argmax([q.mean() for q in quads]) == 0)
        assert cam.image.shape[:2] == cam.heatmap.shape
    # chance (a heatmap unrelated to the evidence) is 5 of 20; measured 20 of 20 with seeds 0, 1, 2
    assert peaks >= 16, f"the heatmap peaked in the deciding quadrant on {peaks} of 20 images"
    # explaining another class works, and a bad class is a clear error
    assert clf.explain(tests[0][0], target="vertical").label == "vertical"
    with pytest.raises(ValueError, match="unknown class"):
        clf.explain(tests[0][0], target="cat")


def test_predict_writes_cam_overlays_named_after_inputs(trained, tmp_path):
    root, run = trained
    assert main(["predict", str(run / "best.pt"), str(root / "a" / "0.png"), str(root / "b" / "0.png"),
                 str(root / "b" / "1.png"), "--cam", str(tmp_path / "cams"), "--output", str(tmp_path / "p.csv")]) == 0
    names = sorted(p.name for p in (tmp_path / "cams").iterdir())
    assert names == ["0_cam.png", "0_cam_2.png", "1_cam.png"]
    with Image.open(tmp_path / "cams" / "1_cam.png") as im:
        assert im.size == (224, 224) and im.mode == "RGB"


def test_onnx_export_matches_pytorch_and_labels_alike(trained, tmp_path, capsys, engine_clock):
    from resnet.inference.engines import OnnxRuntimeNet, read_card

    engine_clock("onnxruntime")  # the export's engine, whichever a loaded machine would time faster
    root, run = trained
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(run / "best.pt"), "--output", str(onnx_path), "--verify", str(root)]) == 0
    out = capsys.readouterr().out
    diff = float(out.split("max abs difference: ")[1].split()[0])
    assert diff < 1e-4
    card, _ = read_card(onnx_path)
    assert card["classes"] == ["a", "b"] and card["arch"] == "resnet20"
    assert card["eval_size"] == 24 and len(card["mean"]) == 3
    net = OnnxRuntimeNet(onnx_path)
    shape = net.session.get_inputs()[0].shape
    assert isinstance(shape[0], str) and shape[1:] == [3, 24, 24]  # dynamic batch axis
    files = [str(p) for p in sorted(root.rglob("*.png"))]
    # the export's weights are fp32: both run as fp32 (each runs in the precision it trained in otherwise)
    ckpt, onnx = Classifier.load(run / "best.pt", device="cpu", amp="off"), Classifier.load(onnx_path, amp="off")
    a, b = ckpt.predict(files, batch_size=7), onnx.predict(files, batch_size=5)
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert max(abs(x["probability"] - y["probability"]) for x, y in zip(a, b)) < 1e-5
    with pytest.raises(ConfigError, match="--engine torch runs checkpoints"):  # from Python too, not run as onnxruntime
        Classifier.from_onnx(onnx_path, engine="torch")
    # the command reads ONNX as it reads checkpoints
    assert main(["predict", str(onnx_path), str(root), "--output", str(tmp_path / "o.csv")]) == 0
    assert main(["predict", str(run / "best.pt"), str(root), "--output", str(tmp_path / "c.csv")]) == 0
    onnx_rows, ckpt_rows = ({Path(r["path"]).parts[-2:]: r["label"] for r in csv.DictReader(open(tmp_path / f))}
                            for f in ("o.csv", "c.csv"))
    assert onnx_rows.keys() == ckpt_rows.keys() and len(onnx_rows) == 24
    # The checkpoint runs in the precision it trained in (bf16 where its run took it): the labels
    # agree wherever the fp32 answer is not a tie within bf16's rounding.
    clear = [Path(r["path"]).parts[-2:] for r in b if abs(r["probability"] - 0.5) > 0.01]
    assert len(clear) >= 12 and all(onnx_rows[k] == ckpt_rows[k] for k in clear)


def test_int8_onnx_keeps_most_labels(trained, tmp_path, capsys, engine_clock):
    engine_clock("onnxruntime")  # --verify's int8 engine: its labels, whichever a loaded machine would time faster
    root, run = trained
    out = tmp_path / "m.int8.onnx"
    assert main(["export", str(run / "best.pt"), "--quantize", "int8", "--calib", str(root),
                 "--output", str(out), "--verify", str(root)]) == 0
    text = capsys.readouterr().out
    agree, total = text.split("agree on ")[1].split(" of ")
    assert int(total.rstrip(")\n")) == 24 and int(agree) >= 20  # 24 images: at most 4 labels change
    q = Classifier.load(out)
    assert q.describe()["precision"] == "int8" and q.classes == ["a", "b"]


def test_safetensors_export_loads_as_a_classifier(trained, tmp_path):
    from safetensors import safe_open

    root, run = trained
    path = tmp_path / "w.safetensors"
    assert main(["export", str(run / "best.pt"), "--format", "safetensors", "--output", str(path)]) == 0
    with safe_open(str(path), "pt") as f:
        assert "conv1.weight" in f.keys() and json.loads(f.metadata()["classes"]) == ["a", "b"]
    files = [str(p) for p in sorted(root.rglob("*.png"))][:6]
    a = Classifier.load(run / "best.pt", device="cpu").predict(files)
    b = Classifier.load(path, device="cpu").predict(files)
    assert a == b


def test_a_model_trained_to_be_scored_with_tta_is_so_everywhere(trained, tmp_path):
    """A checkpoint whose card says `tta` is scored with the mirror image by default, and its
    exports say so too: the ONNX file and the safetensors weights score with it unless told not
    to. (Each against itself: a bf16 checkpoint and its fp32 ONNX export differ in the third
    decimal.)"""
    from resnet.checkpoint import read_checkpoint, save_checkpoint

    root, run = trained
    state = read_checkpoint(run / "best.pt")
    state["tta"], state["tta_shift"] = True, 1
    save_checkpoint(tmp_path / "tta.pt", state)
    files = [str(p) for p in sorted(root.rglob("*.png"))][:6]
    for name in ("tta.pt", "w.safetensors", "m.onnx"):
        path = tmp_path / name
        if name != "tta.pt":
            assert main(["export", str(tmp_path / "tta.pt"), "--format", name.split(".")[1],
                         "--output", str(path)]) == 0
        clf = Classifier.load(path, device="cpu")
        assert clf.describe()["tta"] and clf.describe()["tta_shift"] == 1, name  # what serve's /info shows
        probs = [r["probability"] for r in clf.predict(files)]
        assert probs == [r["probability"] for r in clf.predict(files, tta=True)], name
        assert probs != [r["probability"] for r in clf.predict(files, tta=False)], name


@pytest.mark.parametrize("args,needle", [
    (["--quantize", "int8", "--calib", "/nonexistent"], "not a folder: /nonexistent"),
    (["--format", "safetensors", "--quantize", "int8", "--calib", "."], "goes with --format onnx"),
])
def test_export_usage_errors(trained, args, needle):
    r = subprocess.run([sys.executable, "-m", "resnet", "export", str(trained[1] / "best.pt"), *args],
                       capture_output=True, text=True)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_metrics_values_per_class_and_top5_on_known_answers():
    """Six classes, six images with known answers: image i is class i; the top answer is right for
    classes 0-2, the true class is second for 3 and 4 (top-5 right, top-1 wrong) and sixth for 5.
    Catches a top-5 over the wrong axis, precision and recall swapped, or a confusion matrix
    transposed."""
    from resnet.inference.evaluate import compute_metrics

    classes = list("abcdef")
    labels = torch.arange(6)
    logits = torch.zeros(6, 6)
    for i in range(3):
        logits[i, i] = 5.0
    logits[3, 0], logits[3, 3] = 5.0, 4.0  # answered a, d second
    logits[4, 0], logits[4, 4] = 5.0, 4.0  # answered a, e second
    logits[5] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, -1.0])  # answered a, f last
    r = compute_metrics(logits, labels, classes)
    assert r["accuracy"] == pytest.approx(3 / 6) and r["top5_accuracy"] == pytest.approx(5 / 6)
    assert r["per_class"]["a"] == {"precision": pytest.approx(1 / 4), "recall": 1.0, "f1": pytest.approx(0.4),
                                   "support": 1}
    assert r["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["confusion_matrix"][3] == [1, 0, 0, 0, 0, 0]  # row: the true class, column: the answer
    assert [row[0] for row in r["confusion_matrix"]] == [1, 0, 0, 1, 1, 1]
