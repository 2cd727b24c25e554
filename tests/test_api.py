"""The Python API is the command line's: `resnet.train(...)` does what `resnet train` does, with
the same options, files, refusals and model."""

import json
from pathlib import Path

import pytest
import torch

import resnet
from resnet.checkpoint import read_checkpoint
from resnet.cli import main
from resnet.constants import FINETUNE_BATCH, FINETUNE_LR
from resnet.errors import ConfigError

OPTIONS = dict(arch="resnet20", img_size=24, epochs=1, batch_size=8, workers=0, deterministic=True, seed=3,
               val_split=0.25)


def flags(options: dict) -> list[str]:
    return [x for k, v in options.items() for x in ((f"--{k.replace('_', '-')}",) if v is True
                                                    else (f"--{k.replace('_', '-')}", str(v)))]


def files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


def test_train_from_python_writes_what_the_command_writes(tiny_folder, tmp_path):
    """Same options, same seed: the same files in the run's folder, bit-identical weights, the same
    held-out score and report; a second call into the same folder is refused as the command
    refuses it, and `resume="auto"` goes on from it (a Python API that skipped the command's
    checks, or its evaluation, would differ here)."""
    assert main(["train", str(tiny_folder), *flags(OPTIONS), "--out", str(tmp_path / "shell")]) == 0
    summary = resnet.train(tiny_folder, out=str(tmp_path / "python"), **OPTIONS)
    shell, python = tmp_path / "shell", tmp_path / "python"
    assert files(python) == files(shell) and {"best.pt", "evaluation.json", "report/report.md"} <= files(python)
    a, b = read_checkpoint(shell / "last.pt")["model"], read_checkpoint(python / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    evaluation = json.loads((shell / "evaluation.json").read_text())
    assert summary["evaluation"]["accuracy"] == evaluation["accuracy"] and summary["report"] == python / "report" / "report.md"
    with pytest.raises(ConfigError, match="already holds a run"):
        resnet.train(tiny_folder, out=str(python), **OPTIONS)
    resumed = resnet.train(out=str(python), resume="auto", epochs=2)
    assert resumed["epochs"] == 2 and len((python / "metrics.csv").read_text().splitlines()) == 3


def test_pretrained_weights_pick_finetune_and_training_starts_from_them(tiny_folder, tmp_path):
    """`pretrained=` without a preset fine-tunes, as `--pretrained` does (a Python call that took
    `default` would plan a network of its own), from the file's weights: at a learning rate of
    1e-9 the trained convolutions are the file's (a run that ignored the file would start from
    random ones)."""
    source = resnet.create_model("resnet20", num_classes=2)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    options = {**OPTIONS, "lr": 1e-9, "warmup_epochs": 0.0}
    resnet.train(tiny_folder, out=str(tmp_path / "run"), pretrained=str(tmp_path / "weights.pth"), **options)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["preset"] == "finetune" and config["pretrained"] == str(tmp_path / "weights.pth")
    trained = read_checkpoint(tmp_path / "run" / "last.pt")["model"]
    for name, tensor in source.state_dict().items():
        if name.endswith("conv1.weight") or name == "fc.weight":
            assert torch.allclose(trained[name], tensor, atol=1e-6), name


def test_fine_tuning_a_small_folder_is_planned_from_the_pretrained_file(tiny_folder, tmp_path, capsys):
    """The run takes the size the pretrained checkpoint was evaluated at and, its folder being a few
    dozen photos, small batches at the higher rate; the plan says both (a run that planned nothing
    would train at the preset's 224 px in batches of 64)."""
    from resnet.checkpoint import model_card, save_checkpoint

    card = model_card("resnet20", {}, ["a", "b", "c"], 40, 1.0, False)
    save_checkpoint(tmp_path / "source.pt", {**card, "model": resnet.create_model("resnet20", num_classes=3).state_dict()})
    resnet.train(tiny_folder, out=str(tmp_path / "run"), pretrained=str(tmp_path / "source.pt"), arch="resnet20",
                 epochs=1, workers=0, val_split=0.25)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["img_size"], config["eval_size"], config["batch_size"], config["lr"]) == (
        40, 40, FINETUNE_BATCH, FINETUNE_LR)
    plan = [line for line in capsys.readouterr().out.splitlines() if line.startswith("plan:")]
    assert any("40 px, the size the pretrained model was evaluated at" in line for line in plan), plan
    assert any(f"1 epochs of 1 steps of {FINETUNE_BATCH}" in line for line in plan), plan


@pytest.mark.parametrize("options, needle", [
    (dict(epochs="ten"), "--epochs must be a whole number, not 'ten'"),
    (dict(img_size=32.5), "--img-size must be a whole number, not 32.5"),
    (dict(epochs=True), "--epochs must be a whole number, not True"),
    (dict(lr="0.1"), "--lr must be a number, not '0.1'"),
    (dict(hflip="no"), "--hflip must be True or False, not 'no'"),
    (dict(val_split=[0.2]), "--val-split must be a number or None"),
    (dict(out=3), "--out must be a string or a Path, not 3"),
    (dict(bogus=1), "unknown training options: bogus"),
])
def test_train_checks_each_keyword_as_the_command_line_checks_its_flag(tiny_folder, tmp_path, options, needle):
    """A keyword of the wrong type is refused as its flag would be, naming the option and what it
    takes, before any folder is made (a torch TypeError, or one that named no option, was what
    `epochs="ten"` and `img_size=32.5` gave)."""
    with pytest.raises(ConfigError) as e:
        resnet.train(tiny_folder, **{"out": str(tmp_path / "run"), **options})
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()
    resnet.train(tiny_folder, out=tmp_path / "as_path", **OPTIONS, report=False)  # a Path is a path
    assert (tmp_path / "as_path" / "last.pt").is_file()


def test_export_refuses_a_format_or_quantization_it_does_not_write(trained, tmp_path):
    """`quantize="int4"` once wrote an int8 file without a word, `format="tflite"` raised a
    KeyError: each is refused naming what is allowed, and nothing is written."""
    _, run = trained
    for kwargs, needle in ((dict(quantize="int4"), "--quantize must be one of int8, not 'int4'"),
                           (dict(format="tflite"), "--format must be one of onnx, safetensors, not 'tflite'")):
        with pytest.raises(ConfigError, match=needle):
            resnet.export(run / "best.pt", output=tmp_path / "m.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_a_single_image_given_where_a_list_is_expected_is_one_image(trained):
    """`predict("photo.jpg")` iterated the string's characters (one "file not found" row each); a
    path, a Pillow image or an array given alone is one input, and a batch array N inputs."""
    import numpy as np
    from PIL import Image

    data, run = trained
    path = sorted(data.rglob("*.png"))[0]
    clf = resnet.Classifier.load(run / "best.pt")
    [row] = clf.predict(str(path))
    assert row["path"] == str(path) and "label" in row
    with Image.open(path) as im:
        image = np.asarray(im.convert("RGB"))
    assert [r["label"] for r in clf.predict(path)] == [r["label"] for r in clf.predict(image)] == [row["label"]]
    assert len(clf.predict(np.stack([image, image]))) == 2


def test_predict_files_labels_and_writes_what_the_command_does(trained, tmp_path):
    """`resnet.predict_files` is `resnet predict`: the same rows in the same file; nothing matching
    is no rows; a path that is only a URL is refused before any model is loaded."""
    data, run = trained
    rows = resnet.predict_files(run / "best.pt", data, output=tmp_path / "api.json", top_k=2)
    assert main(["predict", str(run / "best.pt"), str(data), "--output", str(tmp_path / "cli.json"),
                 "--top-k", "2"]) == 0
    assert json.loads((tmp_path / "api.json").read_text()) == json.loads((tmp_path / "cli.json").read_text())
    assert len(rows) == len(list(data.rglob("*.png"))) and all(len(r["top_k"]) == 2 for r in rows)
    assert resnet.predict_files(run / "best.pt", [str(tmp_path / "none-*.png")]) == []
    with pytest.raises(ConfigError, match="is a URL"):
        resnet.predict_files(tmp_path / "not-read.pt", "https://example.com/cat.jpg")


def test_evaluate_model_scores_and_writes_what_the_command_does(trained, tmp_path):
    """`resnet.evaluate_model` is `resnet evaluate`: the same result in the same JSON, the report
    written; a JSON onto the model is refused before anything is scored."""
    data, run = trained
    result, report = resnet.evaluate_model(run / "best.pt", data, json=tmp_path / "api.json", report=tmp_path / "r")
    assert main(["evaluate", str(run / "best.pt"), str(data), "--json", str(tmp_path / "cli.json")]) == 0
    assert json.loads((tmp_path / "api.json").read_text()) == json.loads((tmp_path / "cli.json").read_text())
    assert result["num_images"] == 24 and report == tmp_path / "r" / "report.md" and report.is_file()
    with pytest.raises(ConfigError, match="would overwrite the input"):
        resnet.evaluate_model(run / "best.pt", data, json=run / "best.pt")
