import json
import subprocess
import sys

import pytest

import resnet

from conftest import photo
from resnet.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnet", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args,needle", [
    (["train", "/no/such/folder"], "data not found"),
    (["train", ".", "--epochs", "0"], "--epochs"),
    (["train", ".", "--arch", "resnet19"], "unknown model"),
    (["train", ".", "--bogus"], "unrecognized arguments"),
    (["evaluate", "/no/such.pt", "."], "checkpoint not found"),
    (["benchmark", "data"], "needs an image folder"),
])
def test_user_errors_are_one_line_and_exit_2(args, needle, tmp_path):
    r = run_cli(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_wrong_pretrained_shapes_exit_2_naming_them(tmp_path):
    import torch

    from resnet import create_model

    state = create_model("resnet20").state_dict()
    state["conv1.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(state, tmp_path / "w.pth")
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b").mkdir()
    for c in "ab":
        for i in range(3):
            photo(30, 30, seed=i).save(tmp_path / "d" / c / f"{i}.png")
    r = run_cli("train", str(tmp_path / "d"), "--arch", "resnet20", "--pretrained", str(tmp_path / "w.pth"),
                "--out", str(tmp_path / "run"), "--workers", "0")
    assert r.returncode == 2 and "conv1.weight" in r.stderr and "Traceback" not in r.stderr


def test_evaluate_json_and_report(trained, tmp_path, capsys):
    root, out = trained
    assert main(["evaluate", str(out / "best.pt"), str(root), "--json", str(tmp_path / "e.json"),
                 "--report", str(tmp_path / "rep"), "--tta", "--workers", "0"]) == 0
    assert "accuracy:" in capsys.readouterr().out
    r = json.loads((tmp_path / "e.json").read_text())
    assert set(r) >= {"accuracy", "num_images", "per_class", "confusion_matrix", "classes", "skipped"}
    assert r["num_images"] == 24 and r["tta"] is True
    assert main(["evaluate", str(out / "best.pt"), str(root), "--json", str(tmp_path / "plain.json"),
                 "--no-tta", "--workers", "0"]) == 0
    assert json.loads((tmp_path / "plain.json").read_text())["loss"] != r["loss"]  # TTA did something
    assert set(r["per_class"]["a"]) == {"precision", "recall", "f1", "support"}
    cm = r["confusion_matrix"]
    assert sum(map(sum, cm)) == 24 and r["accuracy"] == pytest.approx((cm[0][0] + cm[1][1]) / 24)
    assert "top5_accuracy" not in r  # only 2 classes
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "confusion_matrix.png" in report and "training_curves.png" in report
    from PIL import Image
    for png in ("confusion_matrix.png", "training_curves.png"):
        with Image.open(tmp_path / "rep" / png) as im:
            assert im.size[0] > 200 and im.size[1] > 200


def test_evaluate_reports_unreadable_files(trained, tmp_path):
    root, out = trained
    data = tmp_path / "d"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    photo(40, 40).save(data / "a" / "ok.png")
    photo(40, 40, bright=True).save(data / "b" / "ok.png")
    (data / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    assert main(["evaluate", str(out / "best.pt"), str(data), "--json", str(tmp_path / "e.json"), "--workers", "0"]) == 0
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["num_images"] == 2 and [s["path"].endswith("broken.jpg") for s in r["skipped"]] == [True]


def test_models_table_lists_params_and_input_sizes(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["resnet50"]["params"] == 25_557_032 and rows["resnet20"]["input_size"] == 32


def test_benchmark_json_counts_every_image_and_only_the_timed_batches(tmp_path, tiny_folder):
    r = run_cli("benchmark", "data", str(tiny_folder), "--img-size", "32", "--json", "--workers", "0")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["images"] == 32  # every image of the folder went through the pipeline
    assert data["batch_size"] == 64  # the data benchmark's own default, and a batch given is the one used:
    assert resnet.benchmark("data", str(tiny_folder), img_size=32, batch_size=8)["batch_size"] == 8
    r = run_cli("benchmark", "infer", "--arch", "resnet20", "--img-size", "32", "--batch-size", "4",
                "--steps", "2", "--amp", "off", "--json")  # fp32: both engines are candidates
    assert r.returncode == 0, r.stderr
    infer = json.loads(r.stdout)
    assert (infer["arch"], infer["img_size"], infer["amp"]) == ("resnet20", 32, "fp32")
    assert "measured here" in infer["engine_reason"]  # a long-lived Classifier's engine, timed
    assert infer["engine"] in ("torch", "onnxruntime", "openvino")
    # the figure counts the 2 timed batches of 4 over the time they took (not the warm-up's)
    assert infer["images_per_second"] == pytest.approx(2 * 4 / infer["seconds"])


def emulated_bf16() -> bool:
    """RESNET_CPU_BF16=1 on a CPU whose oneDNN has no bf16 kernels: every bf16 step ~15x slower."""
    import torch

    from resnet.inference import policy

    return policy.cpu_has_bf16() and not torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.skipif(emulated_bf16(), reason="bf16 emulated on this CPU (RESNET_CPU_BF16=1 without bf16 kernels): "
                                            "the demo's 5 epochs would take minutes; it runs in bf16 where bf16 is native")
def test_demo_end_to_end_short(tmp_path):
    from resnet.demo import run_demo

    result = run_demo(tmp_path / "demo", epochs=5)
    assert (tmp_path / "demo" / "run" / "evaluation.json").is_file()
    assert (tmp_path / "demo" / "run" / "report" / "report.md").is_file()
    assert result["num_images"] == 360 and result["accuracy"] > 0.9  # 5 of the demo's 15 epochs
    # A second `make demo` starts its own run over; a run on other data in that folder is kept.
    from resnet.demo import previous_demo

    assert previous_demo(tmp_path / "demo" / "run", tmp_path / "demo" / "digits")
    assert not previous_demo(tmp_path / "demo" / "run", tmp_path / "elsewhere")
