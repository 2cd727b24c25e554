"""The engines a stored model runs on — PyTorch, onnxruntime and OpenVINO — and how `auto` picks:
only engines that compute the model in its own precision, the fastest of them as timed (fake
timings here: no clock), the same labels whichever runs it; OpenVINO told its precision, never
left to turn an fp32 model into bf16."""

import json
import math
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
import torch

from resnet import Classifier
from resnet.inference import engines, policy
from resnet import data as D
from resnet.inference import exports as X
from resnet.inference import predict
from resnet.checkpoint import read_checkpoint, save_checkpoint
from resnet.cli import main
from resnet.errors import CheckpointError, ConfigError
from resnet.inference.evaluate import evaluate

from conftest import logits_tolerance

CPU = torch.device("cpu")
FP32, BF16 = policy.Precision(None, ""), policy.Precision(torch.bfloat16, "")


def with_precision(run: Path, tmp_path: Path, dtype: str) -> Path:
    """The trained run's best.pt as if its run had chosen `dtype`."""
    state = read_checkpoint(run / "best.pt")
    state["precision"] = {"dtype": dtype, "reason": "test"}
    save_checkpoint(tmp_path / f"{dtype}.pt", state)
    return tmp_path / f"{dtype}.pt"


def engine_of(net) -> str:
    return getattr(net, "name", "torch")


def test_where_each_engine_runs_and_what_auto_decides_untimed():
    """The ONNX engines run on the CPU, without --compile, and an ONNX file on them only; `auto`
    makes an export only when the work pays for it; onnxruntime computes fp32 and int8 only."""
    cuda = torch.device("cuda")
    for engine in ("onnxruntime", "openvino"):
        assert policy.choose_engine(engine, CPU, False, 1, False).name == engine  # asked for
        for device, compile in ((cuda, False), (CPU, True)):
            with pytest.raises(ConfigError, match=engine):
                policy.check_engine(engine, device, compile)
    for device, compile in ((cuda, False), (CPU, True)):
        assert policy.choose_engine("auto", device, compile, math.inf, True).name == "torch"
        with pytest.raises(ConfigError, match="ONNX file"):
            policy.check_engine("auto", device, compile, onnx_file=True)
    with pytest.raises(ConfigError, match="--engine torch runs checkpoints"):
        policy.check_engine("torch", CPU, False, onnx_file=True)
    with pytest.raises(ConfigError, match="--engine must be one of"):
        policy.check_engine("tensorrt", CPU, False)
    from resnet.constants import ONNX_MIN_IMAGES

    few = policy.choose_engine("auto", CPU, False, ONNX_MIN_IMAGES - 1, False)
    assert few.name == "torch" and str(ONNX_MIN_IMAGES) in few.reason
    assert policy.choose_engine("auto", CPU, False, ONNX_MIN_IMAGES - 1, True) is None  # exported: timed
    assert policy.choose_engine("auto", CPU, False, math.inf, False) is None
    assert policy.onnx_engines(FP32) == ("onnxruntime", "openvino")
    assert policy.onnx_engines(BF16) == ("openvino",)  # onnxruntime would compute it in fp32
    assert policy.onnx_engines(replace(BF16, int8=True)) == ("onnxruntime", "openvino")
    # Asked for by name, onnxruntime runs a bf16 model's fp32 export, and says so; the others keep it.
    assert policy.precision_on(BF16, "onnxruntime").name == "fp32" and "fp32 export" in policy.precision_on(
        BF16, "onnxruntime").reason
    assert policy.precision_on(BF16, "openvino") == policy.precision_on(BF16, "torch") == BF16
    assert policy.precision_on(FP32, "onnxruntime") == FP32
    assert policy.precision_on(replace(BF16, int8=True), "onnxruntime").name == "int8"
    assert policy.export_too_dear(2000, 0.023).name == "torch"  # ResNet-18 at 224 px: ~46 s
    assert policy.export_too_dear(5000, 0.023) is None  # ~115 s: the export pays
    fast = policy.faster_engine({"torch": 0.2, "onnxruntime": 0.15, "openvino": 0.1}, 16, ["x left out: y"])
    assert fast.name == "openvino" and "torch 200 ms, onnxruntime 150 ms, openvino 100 ms per 16 images" in fast.reason
    assert "x left out: y" in fast.reason


@pytest.mark.parametrize("fastest", ["torch", "onnxruntime", "openvino"])
def test_auto_takes_the_engine_the_timings_say_among_those_of_the_models_precision(trained, tmp_path, monkeypatch,
                                                                                  fastest):
    """Fake timings: whichever engine times fastest runs an fp32 model; a bf16 model never goes to
    onnxruntime (it would compute in fp32), however fast it times; an int8 file runs on the faster
    of its two engines. The export is made once and found again (no second export)."""
    _, run = trained
    fp32 = with_precision(run, tmp_path, "fp32")
    monkeypatch.setattr(predict.runtime, "net_seconds", lambda net, *a: 0.1 if engine_of(net) == fastest else 0.2)
    clf = Classifier.from_checkpoint(fp32, images=math.inf)
    assert clf.engine.name == fastest == engine_of(clf.net) and "measured here" in clf.engine.reason
    assert clf.precision.name == "fp32" and clf.describe()["engine"] == fastest
    assert clf.explain(D.load_image(next(trained[0].rglob("*.png")))).heatmap.max() > 0  # PyTorch behind it

    monkeypatch.setattr(X, "write_onnx", lambda *a: pytest.fail("exported twice"))
    monkeypatch.setenv(policy.CPU_BF16_ENV, "1")  # a CPU with bf16 kernels (faked where it has none)
    bf16 = Classifier.from_checkpoint(with_precision(run, tmp_path, "bfloat16"), images=math.inf)
    assert bf16.precision.name == "bfloat16"
    assert bf16.engine.name == ("torch" if fastest == "onnxruntime" else fastest)
    assert "onnxruntime" not in bf16.engine.reason  # not even timed

    monkeypatch.undo()
    int8 = X.quantize_onnx(X.export_onnx(fp32, tmp_path / "m.onnx"), tmp_path / "m.int8.onnx",
                           [str(p) for p in sorted(trained[0].rglob("*.png"))])
    monkeypatch.setattr(predict.runtime, "net_seconds", lambda net, *a: 0.1 if engine_of(net) == fastest else 0.2)
    q = Classifier.load(int8)
    assert q.precision.name == "int8"
    if fastest != "torch":
        assert q.engine.name == fastest and "measured here" in q.engine.reason


def test_an_engine_that_fails_or_computes_something_else_is_left_out(trained, tmp_path, monkeypatch):
    _, run = trained
    fp32 = with_precision(run, tmp_path, "fp32")
    monkeypatch.setattr(predict.runtime, "net_seconds", lambda net, *a: 0.2 if engine_of(net) == "torch" else 0.1)
    real_open = predict.open_onnx

    def broken(path, engine, bf16=False):
        if engine == "openvino":
            raise RuntimeError("no CPU plugin")
        return real_open(path, engine, bf16)

    monkeypatch.setattr(predict, "open_onnx", broken)
    clf = Classifier.from_checkpoint(fp32, images=math.inf)
    assert clf.engine.name == "onnxruntime" and "openvino left out: no CPU plugin" in clf.engine.reason
    with pytest.raises(CheckpointError, match="no CPU plugin"):  # asked for by name: an error
        Classifier.from_checkpoint(fp32, engine="openvino")
    monkeypatch.setattr(predict, "open_onnx", real_open)
    real_call = engines.OnnxRuntimeNet.__call__
    monkeypatch.setattr(engines.OnnxRuntimeNet, "__call__", lambda self, x: real_call(self, x) + 0.5)
    clf = Classifier.from_checkpoint(fp32, images=math.inf)
    assert clf.engine.name == "openvino" and "onnxruntime left out: its logits differ" in clf.engine.reason


def test_every_engine_gives_the_same_labels(trained, tmp_path):
    """The same images, the same model: PyTorch, onnxruntime and OpenVINO agree within fp32's
    tolerance in fp32, and PyTorch's bf16 autocast and OpenVINO's bf16 within bf16's; an exported
    file gives what its checkpoint gives on the same engine."""
    data, run = trained
    images = [D.load_image(p) for p in sorted(data.rglob("*.png"))]
    fp32 = with_precision(run, tmp_path, "fp32")
    logits = {e: Classifier.from_checkpoint(fp32, engine=e).logits(images) for e in ("torch", "onnxruntime", "openvino")}
    for e in ("onnxruntime", "openvino"):
        assert (logits[e] - logits["torch"]).abs().max() < logits_tolerance(None, logits["torch"]), e
    onnx_file = X.export_onnx(fp32, tmp_path / "m.onnx")
    for e in ("onnxruntime", "openvino"):
        assert torch.allclose(Classifier.load(onnx_file, engine=e).logits(images), logits[e], atol=1e-5), e
    torch_bf16 = Classifier.from_checkpoint(fp32, amp="bf16", engine="torch").logits(images)
    ov_bf16 = Classifier.from_checkpoint(fp32, amp="bf16", engine="openvino")
    assert ov_bf16.precision.name == "bfloat16"
    assert (ov_bf16.logits(images) - torch_bf16).abs().max() < logits_tolerance(torch.bfloat16, torch_bf16)
    clear = (logits["torch"].softmax(1).max(1).values - 0.5).abs() > 0.01  # not a tie within bf16's rounding
    assert clear.sum() >= len(images) // 2
    assert torch.equal(ov_bf16.logits(images).argmax(1)[clear], logits["torch"].argmax(1)[clear])


@pytest.mark.parametrize("capable", ["0", "1"])
def test_openvino_runs_a_model_in_its_own_precision_never_its_default(trained, tmp_path, monkeypatch, capable):
    """Left to itself, OpenVINO runs fp32 models in bf16 on a CPU with bf16 kernels. An fp32 model
    (checkpoint, export, int8 export) is compiled with f32 whatever the CPU, the capability faked
    both ways; a bf16 model with bf16 only where the CPU has the kernels. The precision OpenVINO
    reports having compiled for is checked, not only what it was asked."""
    _, run = trained
    monkeypatch.setenv(policy.CPU_BF16_ENV, capable)
    fp32 = with_precision(run, tmp_path, "fp32")
    onnx_file = X.export_onnx(fp32, tmp_path / "m.onnx")
    int8 = X.quantize_onnx(onnx_file, tmp_path / "m.int8.onnx", [str(p) for p in sorted(trained[0].rglob("*.png"))])
    for clf in (Classifier.from_checkpoint(fp32, engine="openvino"), Classifier.load(onnx_file, engine="openvino"),
                Classifier.load(int8, engine="openvino")):
        assert isinstance(clf.net, engines.OpenVinoNet) and clf.net.inference_precision == "f32"
    bf16 = Classifier.from_checkpoint(with_precision(run, tmp_path, "bfloat16"), engine="openvino")
    assert bf16.precision.name == ("bfloat16" if capable == "1" else "fp32")
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # OpenVINO itself falls back where it has no bf16
    assert bf16.net.inference_precision == ("bf16" if capable == "1" and native else "f32")
    exported = X.export_onnx(with_precision(run, tmp_path, "bfloat16"), tmp_path / "b.onnx")
    assert Classifier.load(exported).precision.name == bf16.precision.name  # the export keeps its rule


def test_few_images_make_no_export(trained):
    """`evaluate` of a few images with `--engine auto` runs PyTorch and writes nothing to the
    cache, nor does a long job of a model so small that its export would cost more than it saves;
    with an ONNX engine by name the result is the same, saying which engine ran."""
    from resnet.constants import ONNX_MIN_IMAGES

    data, run = trained
    torch_run, _, p_torch = evaluate(run / "best.pt", data, workers=0, amp="off")
    assert torch_run["engine"] == "torch" and "pays from" in torch_run["engine_reason"]
    small = Classifier.from_checkpoint(run / "best.pt", images=ONNX_MIN_IMAGES, amp="off")  # ResNet-20 at 24 px
    assert small.engine.name == "torch" and "less than making one costs" in small.engine.reason
    assert not Path(D.default_cache_dir("onnx")).exists()
    for engine in ("onnxruntime", "openvino"):
        run_, _, probs = evaluate(run / "best.pt", data, workers=0, engine=engine, amp="off")
        assert run_["engine"] == engine and run_["accuracy"] == torch_run["accuracy"]
        assert (p_torch - probs).abs().max() < 1e-5


def test_int8_calibrates_on_the_runs_own_images_and_records_its_check(trained, tmp_path, capsys, engine_clock,
                                                                       monkeypatch):
    """`export --quantize int8` with no --calib: calibrated on the run's training images (its
    train.csv), scored on its validation images against the checkpoint, the check printed and
    kept in the file's model card, its accuracy the one an evaluation of the file on its own
    gives; `resnet.export` from Python writes what the command writes, reading the checkpoint once
    for the export, the check and `--verify`. A checkpoint whose training
    images are gone asks for --calib, in one line, before any work."""
    import resnet

    engine_clock("openvino")
    data, run = trained
    out = tmp_path / "m.int8.onnx"
    assert main(["export", str(run / "best.pt"), "--quantize", "int8", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"calibrated on 19 images ({run / 'train.csv'})" in text and "on 5 validation images" in text
    _, metadata = engines.read_card(out)
    check = json.loads(metadata["int8_check"])
    assert check["images"] == 5 and check["calibration_images"] == 19 and check["engine"] == "openvino"
    alone, _, _ = evaluate(out, run / "val.csv", workers=0, engine="openvino")  # the file scored by itself
    assert (alone["num_images"], alone["accuracy"]) == (5, check["accuracy"])
    reference, _, _ = evaluate(run / "best.pt", run / "val.csv", workers=0)
    assert check["reference_accuracy"] == reference["accuracy"]
    reads = []  # the export, the check and --verify share one read of the checkpoint
    with monkeypatch.context() as m:
        m.setattr("resnet.checkpoint.read_checkpoint", lambda path, real=read_checkpoint: reads.append(path)
                  or real(path))
        via_api = resnet.export(run / "best.pt", quantize="int8", output=tmp_path / "api.int8.onnx", verify=True)
    assert reads == [run / "best.pt"] and via_api["verify"]["images"] > 0
    assert json.loads(engines.read_card(via_api["output"])[1]["int8_check"])["accuracy"] == check["accuracy"]
    a, b = onnx.load(str(out)), onnx.load(via_api["output"])
    assert [i.raw_data for i in a.graph.initializer] == [i.raw_data for i in b.graph.initializer]

    state = read_checkpoint(run / "best.pt")
    state["config"] = {**state["config"], "out": str(tmp_path / "gone")}
    (tmp_path / "moved").mkdir()
    save_checkpoint(tmp_path / "moved" / "best.pt", state)
    assert main(["export", str(tmp_path / "moved" / "best.pt"), "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert "give --calib DIR" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "moved" / "best.int8.onnx").exists()


def test_a_blurred_network_runs_alike_on_every_engine(tmp_path):
    """resnetblur's mirrored padding and per-channel filter (`BlurPool`) survive the export: the
    ONNX file gives PyTorch's logits on onnxruntime and on OpenVINO (at an odd size, where a
    padding off by one would show)."""
    from resnet import create_model
    from resnet.inference.runtime import fold_batchnorm

    torch.manual_seed(0)
    model = create_model("resnetblur18", num_classes=5, width=0.25)
    model(torch.randn(8, 3, 75, 75))  # running statistics that are not the identity
    model = fold_batchnorm(model.eval())
    path = X.write_onnx(model, {"eval_size": 75, "classes": list("abcde")}, tmp_path / "blur.onnx")
    x = torch.randn(3, 3, 75, 75)
    with torch.no_grad():
        expected = model(x)
    for engine in ("onnxruntime", "openvino"):
        got = engines.open_onnx(path, engine)(x)
        assert (got - expected).abs().max() < 1e-4 * expected.abs().max(), engine
