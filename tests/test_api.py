"""The Python API is the command line's: `resnet.train(...)` does what `resnet train` does, with
the same options, files, refusals and model."""

import json
from pathlib import Path

import pytest
import torch

import resnet
from resnet.checkpoint import read_checkpoint
from resnet.cli import main
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
