"""Every user mistake is one line naming the bad value and what is allowed, exit code 2, and nothing
written or lost; checked before any expensive work. Each case is one a new user hit."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import photo
from resnet import data as D
from resnet.training import config as TC, run as TR
from resnet.checkpoint import read_checkpoint, save_checkpoint
from resnet.cli import main
from resnet.errors import ConfigError
from resnet.outputs import WRITER_LOCK
from resnet.data.transforms import EvalTransform


def fails(capsys, args: list[str], *needles: str) -> str:
    """Run the CLI in-process: exit 2, no exception, and the error one line holding every needle
    (after progress bars, when training had started)."""
    assert main([str(a) for a in args]) == 2
    lines = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.strip()]
    err = lines[-1]
    assert err.startswith(f"resnet {args[0]}: error: "), lines
    assert not any(line.startswith("resnet") for line in lines[:-1]), lines
    for needle in needles:
        assert needle in err, err
    return err


def small_run(tiny_folder: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(tiny_folder), "--arch", "resnet20", "--img-size", "24", "--epochs", "2",
            "--batch-size", "8", "--workers", "0", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory) -> Path:
    """A finished two-epoch run in a/ on its own data."""
    root = tmp_path_factory.mktemp("errors")
    data = root / "data"
    for c, bright in (("a", False), ("b", True)):
        (data / c).mkdir(parents=True)
        for i in range(12):
            photo(40, 40, seed=i + (50 if bright else 0), bright=bright).save(data / c / f"{i}.png")
    assert main(small_run(data, root / "a", "--cache-dir", str(root / "cache"))) == 0
    return root / "a"


# 1. Resume keeps its word


def test_resume_refuses_other_data_arch_or_out(run_a, tiny_folder, tmp_path, capsys):
    err = fails(capsys, ["train", tiny_folder, "--resume", run_a / "last.pt", "--out", tmp_path / "elsewhere",
                         "--arch", "resnet56"], "--arch resnet56", "--out", "DATA")
    assert "continues that run" in err
    assert not (tmp_path / "elsewhere").exists()


def test_resume_from_another_folder_extends_the_same_run(run_a, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # stored paths are absolute: nothing depends on where we stand
    assert main(["train", "--resume", str(run_a / "last.pt"), "--epochs", "3"]) == 0
    state = read_checkpoint(run_a / "last.pt")
    assert state["epoch"] == 3 and len((run_a / "metrics.csv").read_text().splitlines()) == 4
    assert not any(tmp_path.iterdir())  # nothing written where we stood


def test_a_copied_run_resumes_where_it_now_is(run_a, tmp_path):
    """Resuming a copy continues in the copy's folder; the original is not written."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_a, copy)
    original = {p.name: p.read_bytes() for p in run_a.iterdir() if p.is_file()}
    assert main(["train", "--resume", str(copy / "last.pt"), "--epochs", str(read_checkpoint(copy / "last.pt")["epoch"] + 1)]) == 0
    assert {p.name: p.read_bytes() for p in run_a.iterdir() if p.is_file()} == original
    rows = (copy / "metrics.csv").read_text().splitlines()
    assert len(rows) == len((run_a / "metrics.csv").read_text().splitlines()) + 1


def test_resume_refuses_a_data_folder_that_changed(tiny_folder, tmp_path, capsys):
    """A class folder added or gone, or training images added or gone since the run started: one
    line naming what changed, before any work, instead of a size-mismatch traceback (a run resumes
    exactly only on its own data); the data put back, it resumes."""
    out = tmp_path / "run"
    assert main(small_run(tiny_folder, out)) == 0
    capsys.readouterr()
    resume = ["train", "--resume", out / "last.pt", "--epochs", "3", "--workers", "0"]
    (tiny_folder / "c").mkdir()
    for i in range(4):
        photo(40, 40, seed=90 + i).save(tiny_folder / "c" / f"{i}.png")
    fails(capsys, resume, "new classes ['c']", "resumes only on the data it trained on", "another --out")
    shutil.rmtree(tiny_folder / "c")
    (tiny_folder / "b").rename(tiny_folder / "dogs")
    fails(capsys, resume, "new classes ['dogs'], classes gone ['b']")
    (tiny_folder / "dogs").rename(tiny_folder / "b")
    photo(40, 40, seed=99).save(tiny_folder / "a" / "new.png")
    fails(capsys, resume, "the training images changed")
    (tiny_folder / "a" / "new.png").unlink()
    assert main([str(a) for a in resume]) == 0  # its own data again: it goes on


def test_train_without_data_or_resume(capsys):
    fails(capsys, ["train"], "needs DATA")


# Outputs: checked before any work, never onto an input


def output_mistakes(run: Path, data: Path, tmp: Path) -> list[tuple[list, tuple[str, ...]]]:
    """(command line, what its one-line error says) for the output mistakes a user makes most."""
    ckpt = run / "best.pt"
    (tmp / "a-file").write_text("x")
    (tmp / "a-folder").mkdir(exist_ok=True)
    return [
        (["evaluate", ckpt, data, "--json", ckpt], ("--json", "would overwrite the input")),
        (["evaluate", ckpt, data, "--json", tmp / "a-folder"], ("--json", "is a folder")),
        (["evaluate", ckpt, data, "--json", tmp / "a-file" / "e.json"], ("a-file is a file, not a folder",)),
        (["evaluate", ckpt, data, "--report", tmp / "a-file"], ("--report", "is a file, not a folder")),
        (["evaluate", ckpt, data, "--report", "/proc/resnet-test/report"], ("--report", "cannot write in /proc")),
        (["export", ckpt, "--format", "onnx", "--output", ckpt], ("--output", "named *.onnx")),
        (["export", ckpt, "--format", "onnx", "--output", tmp / "m.safetensors"], ("named *.onnx",)),
        (["export", ckpt, "--format", "safetensors", "--output", tmp / "m.onnx"], ("named *.safetensors",)),
        (["export", ckpt, "--output", "/proc/resnet-test.onnx"], ("--output", "cannot write in /proc")),
        (["predict", ckpt, data, "--output", tmp / "a-folder"], ("--output",)),
        (["predict", ckpt, data, "--output", tmp / "a-file" / "rows.csv"], ("a-file is a file, not a folder",)),
        (["predict", ckpt, data, "--cam", tmp / "a-file"], ("--cam", "is a file, not a folder")),
        (["predict", ckpt, data, "--output", "/proc/resnet-test/rows.csv"], ("cannot write in /proc",)),
        (["train", data, "--out", run], ("already holds a run", f"--resume {run / 'last.pt'}")),
        (["train", data, "--out", data], ("--out", "is an input")),
        (["experiment", "degradation", data, "--epochs", "1", "--out", tmp / "a-file"], ("--out", "is a file")),
    ]


def test_output_mistakes_are_one_line_before_any_work(run_a, tmp_path, capsys, monkeypatch):
    from resnet.training import loop
    from resnet.inference import predict

    # Any work at all would load a model or start training: both fail the test if reached.
    monkeypatch.setattr(predict, "load_checkpoint", lambda *a: pytest.fail("a model was loaded"))
    monkeypatch.setattr(loop, "set_up", lambda *a: pytest.fail("training started"))
    data = run_a.parent / "data"
    for args, needles in output_mistakes(run_a, data, tmp_path):
        fails(capsys, args, *needles)


def test_no_output_flag_changes_a_checkpoint(run_a, tmp_path, capsys):
    """Every output flag pointed at the checkpoint itself: refused, and its bytes unchanged."""
    import hashlib

    ckpt = run_a / "best.pt"
    before = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    data = run_a.parent / "data"
    for args in (["evaluate", ckpt, data, "--json", ckpt], ["evaluate", ckpt, data, "--report", ckpt],
                 ["export", ckpt, "--output", ckpt], ["export", ckpt, "--format", "safetensors", "--output", ckpt],
                 ["predict", ckpt, data, "--output", ckpt], ["predict", ckpt, data, "--cam", ckpt],
                 ["train", data, "--out", run_a], ["experiment", "degradation", data, "--epochs", "1", "--out", ckpt]):
        assert main([str(a) for a in args]) == 2, args
        capsys.readouterr()
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == before


def test_mistakes_with_a_trained_model_are_one_line(run_a, tmp_path, capsys):
    ckpt, data = run_a / "best.pt", run_a.parent / "data"
    (tmp_path / "gone.csv").write_text("path,label\n/no/such/a.png,a\n/no/such/b.png,b\n")
    photo(40, 40).save(tmp_path / "photo.png")
    (tmp_path / "m.onnx").write_bytes(b"not read")
    cases = [
        (["evaluate", ckpt, tmp_path / "gone.csv"], ("none of the 2 images", "/no/such/a.png")),
        (["evaluate", ckpt, data / "a", "--label-pattern", "("], ("--label-pattern", "not a regular expression")),
        (["evaluate", tmp_path / "photo.png", data], ("photo.png is not a resnet checkpoint",)),
        (["evaluate", run_a, data], ("is a folder", "best.pt")),
        (["export", tmp_path / "m.onnx"], ("is an ONNX export, not a checkpoint",)),
        (["export", ckpt, "--opset", "17", "--output", tmp_path / "o.onnx"], ("--opset 17", "opset 18")),
        (["experiment", "degradation", data, "--depths", "21", "--epochs", "1", "--out", tmp_path / "x"],
         ("--depths 21", "20, 32, 44, 56, 110")),
        (["experiment", "degradation", data, "--depths", "20,x", "--epochs", "1", "--out", tmp_path / "y"],
         ("'20,x'", "whole numbers separated by commas")),
        (["benchmark", "train", "--img-size", "5"], ("--img-size must be at least 16, not 5",)),
        (["benchmark", "infer", "--img-size", "5"], ("--img-size must be at least 16, not 5",)),
        (["serve", ckpt, "--port", "99999"], ("--port must be in 1..65535",)),
        (["serve", ckpt, "--port", "-1"], ("--port must be in 1..65535",)),
        (["serve", ckpt, "--max-upload-mb", "0"], ("--max-upload-mb must be positive",)),
        (["serve", ckpt, "--host", "no-such-host.invalid"], ("--host no-such-host.invalid",)),
    ]
    for args, needles in cases:
        fails(capsys, args, *needles)


def test_a_port_in_use_is_one_line_and_exit_1(run_a, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(run_a / "best.pt"), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0], err


# 2. Tracebacks that were


@pytest.mark.parametrize("how", ["ENOSPC", "torch"])
def test_full_disk_while_saving(tiny_folder, tmp_path, monkeypatch, capsys, how):
    """The machine's fault, so exit 1, in one line that says the disk is full, which file and how
    much it needs — whether the write failed with ENOSPC or with torch's own words for a short
    write ("enforce fail at inline_container.cc ... unexpected pos"); no temporary file is left."""
    import shutil
    from collections import namedtuple

    def full(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 half a checkpoint")
        if how == "ENOSPC":
            raise OSError(28, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1228224 vs 1228112")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: namedtuple("usage", "total used free")(10**9, 10**9, 4096))
    assert main(small_run(tiny_folder, tmp_path / "run")) == 1
    err = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.strip()][-1]
    assert err.startswith("resnet train: cannot write checkpoint") and "last.pt" in err, err
    assert "the disk is full" in err and "MiB are free" in err and "inline_container" not in err, err
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".") and p.name != WRITER_LOCK]  # no temporaries


def test_out_that_is_a_file(tiny_folder, tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    fails(capsys, small_run(tiny_folder, tmp_path / "taken"), "--out", "is a file")
    fails(capsys, small_run(tiny_folder, tmp_path / "taken" / "run"), "taken is a file, not a folder")
    fails(capsys, small_run(tiny_folder, Path("/proc/resnet-test/run")), "--out", "cannot write in /proc")


@pytest.mark.parametrize("flag,value,needle", [
    ("--label-pattern", "(", "not a regular expression"),
    ("--label-pattern", "[a-z]+", "needs a group"),
    ("--label-smoothing", "2", "--label-smoothing must be in [0, 1)"),
    ("--scale-min", "2", "--scale-min must be in (0, 1]"),
    ("--scale-min", "-1", "--scale-min must be in (0, 1]"),
    ("--img-size", "1", "--img-size must be at least 16"),
    ("--width", "0", "--width must be in (0, 4.0]"),
    ("--width", "-1", "--width must be in (0, 4.0]"),
    ("--save-every", "-5", "--save-every must be 0"),
    ("--max-minutes", "-1", "--max-minutes must be positive"),
    ("--warmup-epochs", "-1", "--warmup-epochs must be 0 or more"),
    ("--lr", "-1", "--lr must be positive"),
    ("--workers", "-2", "--workers must be 0 or more"),
    ("--padding", "-1", "--padding must be 0 or more"),
    ("--cutout", "-1", "--cutout must be 0 (off) or more pixels"),
])
def test_out_of_range_options_are_refused_before_anything_is_written(tiny_folder, tmp_path, capsys, flag,
                                                                      value, needle):
    fails(capsys, small_run(tiny_folder, tmp_path / "run", flag, value), needle, repr(float(value))
          if flag not in ("--label-pattern", "--img-size", "--save-every", "--workers", "--padding", "--cutout")
          else value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "xdg-cache").exists()


@pytest.mark.parametrize("extra, needles", [
    (("--preset", "seed", "--cutout", "4"), ("--cutout", "not with the seed preset")),
    (("--preset", "seed", "--auto-augment", "ta_wide"), ("--auto-augment", "not with the seed preset")),
    (("--augment", "pad-crop", "--in-memory", "--auto-augment", "ta_wide"), ("--auto-augment ta_wide", "--in-memory")),
])
def test_crop_changes_are_refused_where_no_crop_is_augmented_image_by_image(tiny_folder, tmp_path, capsys, extra,
                                                                              needles):
    """The seed preset trains on the evaluation's centre crops; the in-memory path augments whole
    batches as tensors, where Pillow's operations cannot run."""
    fails(capsys, small_run(tiny_folder, tmp_path / "run", *extra), *needles)
    assert not (tmp_path / "run").exists()


def test_bad_pretrained_file_is_refused_before_the_cache_is_built(tiny_folder, tmp_path, capsys):
    (tmp_path / "w.pth").write_bytes(b"not weights")
    fails(capsys, small_run(tiny_folder, tmp_path / "run", "--pretrained", tmp_path / "w.pth"), "w.pth")
    assert not (tmp_path / "xdg-cache").exists() and not (tmp_path / "run").exists()


def crafted(run_a: Path, tmp_path: Path, **changes) -> Path:
    state = read_checkpoint(run_a / "best.pt")
    state.update(changes)
    path = tmp_path / "crafted.pt"
    save_checkpoint(path, state)
    return path


@pytest.mark.parametrize("changes,needle", [
    ({"arch": "resnet56"}, "do not fit resnet56"),
    ({"classes": 3}, "classes must be a list"),
    ({"classes": ["a", "b", "c"]}, "do not fit resnet20 with 3 classes"),
    ({"eval_size": "32"}, "eval_size must be a whole number"),
    ({"model_options": {"width": 1.0, "depth": 3}}, "unknown model options ['depth']"),
    ({"model_options": {"width": 1000.0}}, "width=1000.0 is outside"),
    ({"model_options": {"width": 1.0, "pool_first": True}}, "resnet20 has no option pool_first"),
    ({"model_options": {"width": 1.0, "act": "swish"}}, "act='swish' is not one of relu, gelu"),
    ({"model_options": {"width": 1.0, "act": "gelu"}}, "resnet20 has no option act"),
    ({"tta": "yes"}, "tta must be true or false"),
    ({"tta_shift": 99}, "tta_shift must be a whole number of pixels"),
])
def test_checkpoints_that_read_but_do_not_fit(run_a, tiny_folder, tmp_path, capsys, changes, needle):
    path = crafted(run_a, tmp_path, **changes)
    fails(capsys, ["predict", path, tiny_folder], needle)
    fails(capsys, ["evaluate", path, tiny_folder], needle)


def test_missing_keys_and_older_img_size_name(run_a, tiny_folder, tmp_path, capsys):
    state = read_checkpoint(run_a / "best.pt")
    del state["model"]["fc.weight"]
    save_checkpoint(tmp_path / "missing.pt", state)
    fails(capsys, ["predict", tmp_path / "missing.pt", tiny_folder], "fc.weight")
    state = read_checkpoint(run_a / "best.pt")
    state["img_size"] = state.pop("eval_size")  # as checkpoints were written before
    save_checkpoint(tmp_path / "old.pt", state)
    assert main(["predict", str(tmp_path / "old.pt"), str(tiny_folder), "--output", str(tmp_path / "p.csv")]) == 0


# 3. Settings are not bad images


def test_a_failing_transform_is_an_error_not_a_skipped_file(tiny_folder):
    samples = [D.Sample(str(p), 0) for p in sorted(tiny_folder.rglob("*.png"))[:2]]
    broken = EvalTransform(img_size=64, resize_size=32)  # a crop larger than the resize: a bug
    with pytest.raises(ValueError, match="smaller than the crop"):
        D.ImageDataset(samples, broken)[0]


# 4. Degenerate data


def folder(tmp_path: Path, layout: dict[str, int], flat: bool = False) -> Path:
    root = tmp_path / "data"
    for name, n in layout.items():
        for i in range(n):
            path = root / f"{name}_{i}.png" if flat else root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo(32, 32, seed=i).save(path)
    return root


def test_one_class(tmp_path, capsys):
    fails(capsys, small_run(folder(tmp_path, {"cats": 6}), tmp_path / "run"), "single class (cats)")
    assert not (tmp_path / "run").exists()


def test_flat_folder_without_labels(tmp_path, capsys):
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(8):
        photo(32, 32, seed=i).save(root / f"IMG_{i:04d}.png")
    fails(capsys, small_run(root, tmp_path / "run"), "do not carry labels", "--label-pattern")


def test_a_class_with_one_image_trains_and_is_named_in_the_plan(tmp_path, capsys):
    """A class with a single photo does not stop the run (it was refused: "every class needs 2
    images"): it trains, is not validated, and the plan says so by name."""
    out = tmp_path / "run"
    assert main([str(a) for a in small_run(folder(tmp_path, {"cats": 6, "dogs": 6, "owls": 1}), out)]) == 0
    assert "plan: 1 class with a single image, trained on and not validated: owls" in capsys.readouterr().out
    train, val = ((out / f).read_text() for f in ("train.csv", "val.csv"))
    assert train.count(",owls") == 1 and ",owls" not in val and ",cats" in val and ",dogs" in val


def test_csv_with_an_empty_label(tmp_path, capsys):
    root = folder(tmp_path, {"a": 3, "b": 3})
    rows = [f"{p},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
    rows[2] = rows[2].split(",")[0] + ","
    (tmp_path / "d.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    fails(capsys, small_run(tmp_path / "d.csv", tmp_path / "run"), "d.csv:4", "neither empty")


def test_val_split_zero_says_there_is_no_validation(tiny_folder, tmp_path, capsys):
    assert main(small_run(tiny_folder, tmp_path / "run", "--val-split", "0")) == 0
    out = capsys.readouterr().out
    assert "no validation set" in out and "best validation accuracy" not in out
    assert not (tmp_path / "run" / "evaluation.json").exists()


# 5. A crafted "safe" checkpoint cannot make us allocate without bound (see the width case above).


# 6. Smaller ones


def test_finetune_evaluates_at_the_size_it_trains():
    assert TC.make_config("finetune", img_size=160).eval_size == 160
    assert TC.make_config("finetune", img_size=160, eval_size=192).eval_size == 192
    assert TC.make_config("finetune").eval_size == 224


def test_weights_of_another_width_are_not_called_a_new_head(tmp_path):
    from resnet import create_model
    from resnet.errors import WeightsError
    from resnet.models import load_pretrained

    torch.save(create_model("resnet18", num_classes=2).state_dict(), tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="wrong shapes") as e:
        load_pretrained(create_model("resnet18", num_classes=2, width=0.5), str(tmp_path / "w.pth"), "resnet18")
    assert "replacing" not in str(e.value)


def test_import_and_cli_help_load_no_torch_and_no_inference_engine():
    code = ("import sys, resnet; from resnet.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'openvino', 'onnxruntime') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]", r.stderr


def test_dir_of_the_package_lists_its_api_not_its_imports():
    """What a notebook's `resnet.<Tab>` offers: every public name (each of which loads), none of
    the module's own helpers."""
    import resnet

    names = dir(resnet)
    assert set(resnet.__all__) <= set(names) and "__version__" in names
    assert not {"Any", "annotations", "importlib"} & set(names)
    assert all(getattr(resnet, name) is not None for name in resnet.__all__)


def package_imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in it, lazy imports included)."""
    import ast

    import resnet

    root = Path(resnet.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, node.module] if node.module else base)
                for alias in node.names:  # `from . import data` names a module, `from .x import y` a name in x
                    sub = f"{target}.{alias.name}" if target else alias.name
                    edges.add(sub if (root / (sub.replace(".", "/") + ".py")).exists()
                              or (root / sub.replace(".", "/")).is_dir() else target)
    return {k: {e for e in v if e and e != k} for k, v in graph.items()}


def test_the_package_has_no_import_circle():
    """export and predict once imported each other; any cycle would be found here, with its path."""
    graph = package_imports()
    exports = graph["inference.exports"]
    assert exports and "inference.predict" not in exports  # the graph is really read

    def visit(node: str, path: list[str]) -> None:
        assert node not in path, " -> ".join(path[path.index(node):] + [node])
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, path + [node])

    for module in graph:
        visit(module, [])


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "resnet20", "plain_resnet34", "resnet50d",
                                  "resnetblur50d"])
def test_flops_without_a_forward_pass_equal_torchs_counter(name):
    from torch.utils.flop_counter import FlopCounterMode

    from resnet import create_model
    from resnet.models import count_flops, model_spec

    size = model_spec(name).input_size
    model = create_model(name).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    assert count_flops(name)[1] == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-9)


def test_no_traceback_from_a_subprocess(run_a, tmp_path):
    """The same, end to end, as a user sees it."""
    r = subprocess.run([sys.executable, "-m", "resnet", "predict", str(crafted(run_a, tmp_path, classes=3)), "x.jpg"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_an_empty_output_path_is_refused_on_every_command(trained, tmp_path, monkeypatch, capsys):
    """`--out ""` once trained into the current folder: every flag that names an output, on every
    command that has one, is refused in one line before any work, and nothing is written."""
    data, run = trained
    ckpt = str(run / "best.pt")
    monkeypatch.chdir(tmp_path)
    for argv, flag in ((["train", str(data), "--out", ""], "--out"),
                       (["train", str(data), "--out", "x", "--cache-dir", " "], "--cache-dir"),
                       (["evaluate", ckpt, str(data), "--json", ""], "--json"),
                       (["evaluate", ckpt, str(data), "--report", ""], "--report"),
                       (["predict", ckpt, str(data), "--output", ""], "--output"),
                       (["predict", ckpt, str(data), "--cam", ""], "--cam"),
                       (["export", ckpt, "--output", ""], "--output"),
                       (["experiment", "degradation", str(data), "--epochs", "1", "--out", ""], "--out")):
        fails(capsys, argv, f"{flag} is empty")
    assert list(tmp_path.iterdir()) == []


def test_a_url_is_said_to_be_not_fetched(trained, tmp_path, capsys):
    from resnet.cli import main

    data, run = trained
    url = "https://example.com/cat.jpg"
    assert main(["predict", str(run / "best.pt"), url]) == 2
    err = capsys.readouterr().err
    assert "URLs are not fetched" in err and url in err and err.count("\n") == 1
    good = next(data.rglob("*.png"))
    assert main(["predict", str(run / "best.pt"), url, str(good), "--output", str(tmp_path / "p.json")]) == 0
    rows = {r["path"]: r for r in json.loads((tmp_path / "p.json").read_text())}
    assert "URLs are not fetched" in rows[url]["error"] and "label" in rows[str(good)]


def test_an_impossible_batch_is_capped_or_refused_before_the_first_step(tiny_folder, tmp_path, monkeypatch, capsys):
    """`--batch-size 100000` on 32 images once had the kernel kill the process: the batch is capped
    at the training images, saying so; a batch whose step cannot fit in the memory there is is
    refused in one line (exit 2) before any step is taken — the precision's timed step included."""
    run = tmp_path / "run"
    assert main(small_run(tiny_folder, run, "--batch-size", "100000", "--epochs", "1", "--val-split", "0.25")) == 0
    out = capsys.readouterr().out
    assert "batch: 100000 is more than the 24 training images: 24" in out
    assert json.loads((run / "config.json").read_text())["batch_size"] == 24

    from resnet import device as dev

    monkeypatch.setattr(dev, "available_bytes", lambda device: 512 * 2**20)  # 512 MiB free
    monkeypatch.setattr(TR, "step_seconds", lambda *a, **k: pytest.fail("a step was taken"))
    err = fails(capsys, small_run(tiny_folder, tmp_path / "big", "--img-size", "224", "--batch-size", "16"),
                "--batch-size 16", "GiB free on cpu", "images per process fit")
    assert not (tmp_path / "big").exists()
    need = float(err.split("needs ~")[1].split()[0]) * 2**30
    fit = int(err.split("at most ~")[1].split()[0])
    assert 1 <= fit < 16 and abs(fit - 16 * 512 * 2**20 / need) <= 1  # the batch that fits, about linearly


def test_the_memory_check_takes_a_network_whose_last_map_is_one_pixel(tiny_folder, tmp_path, monkeypatch):
    """ResNet-18 at 32 px ends on a 1x1 map: the check's shape pass once fed it one image, which a
    training-mode BatchNorm refuses (a traceback before any step). The batch that fits is still
    worked out per image: 4 images' worth of memory free, so at most 4 fit."""
    from resnet import create_model
    from resnet import device as dev

    assert main(small_run(tiny_folder, tmp_path / "run", "--arch", "resnet18", "--width", "0.25", "--img-size", "32",
                          "--epochs", "1", "--val-split", "0.25")) == 0
    with torch.device("meta"):
        model = create_model("resnet18", num_classes=2, width=0.25)
    per_image, fixed = dev.step_bytes(model, 32)
    assert per_image > 0 and fixed == 3 * sum(p.numel() * 4 for p in model.parameters())
    monkeypatch.setattr(dev, "available_bytes", lambda device: fixed + 4 * per_image)
    with pytest.raises(ConfigError, match="at most ~4 images per process fit"):
        dev.check_step_memory("resnet18", 0.25, 32, 2, torch.device("cpu"), 8, 8)


@pytest.mark.parametrize("task", ["train", "infer"])
def test_a_benchmark_batch_that_cannot_fit_is_refused_before_any_tensor(task, monkeypatch, capsys):
    """`resnet benchmark train|infer --batch-size 100000` would have the kernel kill the process
    (60 GB of input alone at 224 px): refused in one line, exit 2, before a model is built."""
    from resnet import device as dev
    from resnet import throughput

    monkeypatch.setattr(dev, "available_bytes", lambda device: 512 * 2**20)
    monkeypatch.setattr(throughput, "create_model", lambda *a, **k: pytest.fail("a model was built"))
    fails(capsys, ["benchmark", task, "--arch", "resnet18", "--batch-size", "100000", "--device", "cpu"],
          "--batch-size 100000", f"{'a training' if task == 'train' else 'an inference'} step of resnet18 at 224 px",
          "GiB free on cpu")


def test_a_damaged_model_card_in_an_onnx_file_is_one_line_naming_the_field(run_a, tmp_path, capsys):
    """An export whose card was damaged or hand-edited is checked as a checkpoint's card is:
    one line naming the field (it was a JSONDecodeError, a TypeError or onnxruntime's traceback)."""
    import onnx

    from resnet.inference.exports import export_onnx

    good = export_onnx(run_a / "best.pt", tmp_path / "good.onnx")
    photo(40, 40).save(tmp_path / "p.png")
    for key, value, needle in (("classes", "not json{", "its classes is not JSON"),
                               ("classes", "3", "classes must be a list"),
                               ("eval_size", "0", "eval_size must be a whole number"),
                               ("mean", '"x"', "mean must be 3 numbers"),
                               ("trained_precision", '{"dtype": "q"}', "trained_precision must record a dtype")):
        model = onnx.load(str(good))
        for prop in model.metadata_props:
            if prop.key == key:
                prop.value = value
        bad = tmp_path / f"bad_{key}.onnx"
        onnx.save(model, str(bad))
        fails(capsys, ["predict", bad, tmp_path / "p.png"], f"{bad} is not a usable resnet export", needle)


def test_what_the_plan_chooses_is_held_to_the_network_as_a_typed_flag_is(tmp_path, capsys):
    """Small images plan the whitened stem, which a deep stem (resnet18d) cannot take: typed, it
    is refused; planned, it is left out (it was an AttributeError after the data was read), and
    the run trains. `--zero-init-residual` on a plain network would zero every block with no
    shortcut to carry the signal (a dead network, loss at chance): refused in one line."""
    from resnet.training import config as TC
    from resnet.data import DataStats
    from resnet.training.recipe import apply_recipe

    stats = DataStats(images=64, classes=2, short_side=16, short_side_p10=16, short_side_p90=16, grey=0.0,
                      smallest_class=32, largest_class=32)
    cfg, _, lines = apply_recipe(TC.make_config(data=str(tmp_path), arch="resnet18d", img_size=16,
                                                out=str(tmp_path / "o")), stats)
    assert cfg.whiten is False and not any("whitening" in line for line in lines)
    assert apply_recipe(TC.make_config(data=str(tmp_path), out=str(tmp_path / "o")), stats)[0].whiten is True
    data = tmp_path / "data"
    for c, bright in (("a", False), ("b", True)):
        (data / c).mkdir(parents=True)
        for i in range(8):
            photo(16, 16, seed=i, bright=bright).save(data / c / f"{i}.png")
    args = ["train", data, "--img-size", "16", "--epochs", "1", "--workers", "0", "--batch-size", "8"]
    assert main([str(a) for a in [*args, "--arch", "resnet18d", "--out", tmp_path / "deep"]]) == 0
    fails(capsys, [*args, "--arch", "resnet18d", "--whiten", "--out", tmp_path / "typed"], "--whiten", "deep stem")
    fails(capsys, [*args, "--arch", "plain20", "--zero-init-residual", "--out", tmp_path / "plain"],
          "--zero-init-residual", "plain20 is a plain network")
    assert not (tmp_path / "typed").exists() and not (tmp_path / "plain").exists()


def test_hints_name_what_is_there(run_a, tmp_path, capsys, monkeypatch):
    """A run folder whose best.pt was deleted: the hint names the checkpoint that is there, not
    best.pt. `serve --host 0.0.0.0` says in one line that the page is open to the network."""
    from resnet.inference import serve as S

    run = tmp_path / "run"
    shutil.copytree(run_a, run)
    (run / "best.pt").unlink()
    err = fails(capsys, ["evaluate", run, run_a.parent / "data"], "is a folder", str(run / "last.pt"))
    assert "best.pt" not in err
    err = fails(capsys, ["evaluate", run / "best.pt", run_a.parent / "data"], "not found", str(run / "last.pt"))
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: None)
    clf = S.Classifier.load(run / "last.pt")
    for host, warned in (("0.0.0.0", True), ("127.0.0.1", False), ("localhost", False), ("::1", False)):
        S.serve(clf, host, 8000)
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == warned and (not warned or "reachable from the network, without authentication" in lines[0])
