"""Choosing the precision and the inference fast path: bf16 only where this CPU has the kernels
and measures faster, the choice recorded; BatchNorm folded without changing a logit; freed tensor
memory kept for the next step."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet import create_model
from resnet import data as D
from resnet.inference import policy, runtime
from resnet.training import config as TC, loop as TL, run as TR
from resnet.checkpoint import read_checkpoint, save_checkpoint
from resnet.errors import ConfigError
from resnet.inference.evaluate import evaluate

from conftest import logits_tolerance

CPU = torch.device("cpu")

# Page faults of three training steps of a small net whose activations (38 MB each) are above
# glibc's largest mmap threshold, after three steps to settle, in a fresh process; with argv[1] ==
# "cpu" the device is picked first.
STEP_FAULTS = """
import resource, sys, torch
from torch import nn
from resnet import device
if sys.argv[1] == "cpu":
    device.pick_device("cpu")
net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
x = torch.randn(4, 3, 384, 384)
for _ in range(3):
    net(x).square().mean().backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    net(x).square().mean().backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def timings(fp32: float, bf16: float):
    calls = []

    def seconds_with(dtype):
        calls.append(dtype)
        return bf16 if dtype == torch.bfloat16 else fp32

    return seconds_with, calls


def one_epoch(data, out, **options) -> TC.TrainConfig:
    return TC.make_config("default", data=str(data), arch="resnet20", img_size=24, epochs=1, batch_size=8, workers=0,
                         out=str(out), val_split=0.25, **options)


@pytest.fixture
def autocasts(monkeypatch) -> list:
    """The autocast dtype of every training step, in order."""
    used = []
    real = TL.forward_loss

    def forward_loss(net, criterion, batch, device, dtype, *args):
        used.append(dtype)
        return real(net, criterion, batch, device, dtype, *args)

    monkeypatch.setattr(TL, "forward_loss", forward_loss)
    return used


@pytest.fixture
def detected(monkeypatch):
    """The decision as made on a CPU with nothing forced (.ci/run also runs the suite with
    RESNET_CPU_BF16=1): the tests below fake the capability themselves."""
    monkeypatch.delenv(policy.CPU_BF16_ENV, raising=False)


def test_bf16_only_where_the_cpu_has_the_kernels_and_it_measures_faster(monkeypatch, detected):
    monkeypatch.setattr(policy, "cpu_has_bf16", lambda: False)
    seconds_with, calls = timings(2.0, 1.0)
    p = policy.choose_precision("auto", CPU, seconds_with)
    assert p.dtype is None and calls == [] and "no bf16 kernels" in p.reason  # not even measured

    monkeypatch.setattr(policy, "cpu_has_bf16", lambda: True)
    seconds_with, calls = timings(2.0, 1.0)
    p = policy.choose_precision("auto", CPU, seconds_with)
    assert p.dtype == torch.bfloat16 and set(calls) == {None, torch.bfloat16}
    assert "2000 ms in fp32, 1000 ms with bf16" in p.reason
    assert policy.choose_precision("auto", CPU, timings(1.0, 1.5)[0]).dtype is None  # bf16 slower: fp32

    for amp, dtype in (("off", None), ("bf16", torch.bfloat16)):  # --amp overrides, without measuring
        seconds_with, calls = timings(1.0, 2.0)
        p = policy.choose_precision(amp, CPU, seconds_with)
        assert p.dtype == dtype and calls == [] and p.reason == f"--amp {amp}"

    # Untimed (--deterministic), by capability: bf16 kernels alone measured slower than fp32 (no AMX).
    for amx, dtype in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(policy.torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        assert policy.choose_precision("auto", CPU).dtype == dtype


@pytest.mark.parametrize("forced", ["0", "1"])
def test_the_switch_decides_auto_without_timing(monkeypatch, forced):
    """RESNET_CPU_BF16 is how the suite runs bf16 on any CPU: `auto` takes its answer untimed, for
    training and for a model that records no precision alike."""
    monkeypatch.setenv(policy.CPU_BF16_ENV, forced)
    seconds_with, calls = timings(1.0, 2.0 if forced == "1" else 0.5)  # timing would say the other
    dtype = torch.bfloat16 if forced == "1" else None
    assert policy.choose_precision("auto", CPU, seconds_with).dtype == dtype and calls == []
    assert policy.model_precision("auto", CPU, None).dtype == dtype
    assert policy.choose_precision("off", CPU).dtype is None  # --amp still overrides
    monkeypatch.setenv(policy.CPU_BF16_ENV, "yes")
    with pytest.raises(ConfigError, match="RESNET_CPU_BF16='yes'"):
        policy.choose_precision("auto", CPU, seconds_with)


def test_a_stored_model_runs_in_its_own_precision_where_the_cpu_can(monkeypatch, detected):
    """One precision per model, never timed: the precision it recorded, unless the CPU would only
    emulate it (then fp32, saying so); a model without a record takes the capability rule."""
    bf16, fp32 = {"dtype": "bfloat16", "reason": "measured"}, {"dtype": "fp32", "reason": "measured"}
    for has, prefers in ((True, True), (True, False), (False, False)):
        monkeypatch.setattr(policy, "cpu_has_bf16", lambda has=has: has)
        monkeypatch.setattr(policy, "cpu_prefers_bf16", lambda prefers=prefers: prefers)
        p = policy.model_precision("auto", CPU, bf16)
        assert p.dtype == (torch.bfloat16 if has else None), (has, prefers)
        assert has or "no bf16 kernels: fp32" in p.reason
        assert policy.model_precision("auto", CPU, fp32).dtype is None  # an fp32 model stays fp32
        assert policy.model_precision("auto", CPU, None).dtype == (torch.bfloat16 if prefers else None)
        assert policy.model_precision("off", CPU, bf16).dtype is None
        assert policy.model_precision("bf16", CPU, fp32).dtype == torch.bfloat16


def test_a_bf16_model_on_a_cpu_without_bf16_kernels_says_so_and_runs_fp32(trained, tmp_path, monkeypatch, caplog,
                                                                         detected):
    from resnet import Classifier

    state = read_checkpoint(trained[1] / "best.pt")
    state["precision"] = {"dtype": "bfloat16", "reason": "measured on an AMX CPU"}
    save_checkpoint(tmp_path / "bf16.pt", state)
    monkeypatch.setattr(policy, "cpu_has_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        clf = Classifier.from_checkpoint(tmp_path / "bf16.pt")
    assert clf.describe()["precision"] == "fp32" and "no bf16 kernels: fp32" in clf.precision.reason
    assert [r.getMessage() for r in caplog.records] == [f"{tmp_path / 'bf16.pt'}: {clf.precision.reason}"]
    monkeypatch.setattr(policy, "cpu_has_bf16", lambda: True)  # where it can: its own precision, silently
    caplog.clear()
    assert Classifier.from_checkpoint(tmp_path / "bf16.pt").describe()["precision"] == "bfloat16"
    assert not caplog.records


@pytest.mark.parametrize("capable", [False, True])
def test_training_says_and_records_the_precision_it_chose(tiny_folder, tmp_path, monkeypatch, capsys, capable,
                                                          detected, autocasts):
    """On a CPU with bf16 kernels (faked, with a faked measurement favouring bf16) the run trains
    under bf16 autocast; without them in fp32. Either way the first lines, config.json and every
    checkpoint say which and why."""
    monkeypatch.setattr(policy, "cpu_has_bf16", lambda: capable)
    monkeypatch.setattr(TR, "step_seconds", lambda *args: 1.0 if args[-1] == torch.bfloat16 else 2.0)
    out = tmp_path / "run"
    TL.train(one_epoch(tiny_folder, out))
    name = "bfloat16" if capable else "fp32"
    assert set(autocasts) == {torch.bfloat16 if capable else None}
    assert f"precision: {name} (" in capsys.readouterr().out
    for record in (json.loads((out / "config.json").read_text())["precision"],
                   read_checkpoint(out / "last.pt")["precision"]):
        assert record["dtype"] == name
        assert ("1000 ms with bf16" in record["reason"]) if capable else ("no bf16 kernels" in record["reason"])


def test_one_precision_for_the_whole_run_and_its_model(tiny_folder, tmp_path, monkeypatch, detected, autocasts):
    """Chosen once (bf16, timed faster on a faked bf16 CPU), then kept: a resume whose timing would
    now say fp32 still trains in bf16; the validation figures of metrics.csv are `evaluate`'s for
    the saved model, which runs in the precision it was trained in; `--amp` given anew overrides."""
    monkeypatch.setattr(policy, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(policy, "cpu_prefers_bf16", lambda: False)
    monkeypatch.setattr(TR, "step_seconds", lambda *args: 1.0 if args[-1] == torch.bfloat16 else 2.0)
    out = tmp_path / "run"
    TL.train(one_epoch(tiny_folder, out, seed=1))
    monkeypatch.setattr(TR, "step_seconds", lambda *args: 2.0 if args[-1] == torch.bfloat16 else 1.0)
    TL.train(*TC.resume_config(out / "last.pt", {"epochs": 2}))
    assert set(autocasts) == {torch.bfloat16}
    last = read_checkpoint(out / "last.pt")
    assert last["precision"]["dtype"] == "bfloat16" and "kept from the run's start: measured" in last["precision"]["reason"]
    result, _, _ = evaluate(out / "last.pt", out / "val.csv", workers=0)
    assert result["precision"] == "bfloat16" and "trained in bfloat16" in result["precision_reason"]
    assert (result["accuracy"], result["loss"]) == pytest.approx((last["metrics"]["val_acc"], last["metrics"]["val_loss"]),
                                                                 rel=1e-6)
    autocasts.clear()
    TL.train(*TC.resume_config(out / "last.pt", {"epochs": 3, "amp": "off"}))
    assert set(autocasts) == {None} and read_checkpoint(out / "last.pt")["precision"]["reason"] == "--amp off"


def test_benchmark_infer_measures_the_precision_a_model_trained_here_runs_in(monkeypatch, detected):
    """On a CPU with bf16 kernels but no AMX (Zen 4: bf16 1.9x faster), training times bf16 faster
    and records it, and the model runs in it; a random-weights model records none and ran in fp32
    by capability. `benchmark infer` measures the trained model's precision, and says why."""
    from resnet import throughput

    monkeypatch.setattr(policy, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(policy, "cpu_prefers_bf16", lambda: False)
    for bf16_s, expected in ((1.0, "bfloat16"), (3.0, "fp32")):
        monkeypatch.setattr(throughput, "step_seconds", lambda *args, s=bf16_s: s if args[-1] == torch.bfloat16 else 2.0)
        result = throughput.bench_network("infer", "resnet20", 32, 4, 1, "cpu", engine="torch")
        assert result["amp"] == expected and "what a model trained here records (measured here" in result["precision_reason"]
    monkeypatch.setattr(throughput, "step_seconds", lambda *args: pytest.fail("--amp given: nothing to time"))
    assert throughput.bench_network("infer", "resnet20", 32, 4, 1, "cpu", amp="off", engine="torch")["amp"] == "fp32"


@pytest.mark.parametrize("amx", [False, True])
def test_deterministic_runs_take_the_precision_without_timing(tiny_folder, tmp_path, monkeypatch, detected, amx):
    monkeypatch.setattr(policy, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(policy.torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(TR, "step_seconds", lambda *args: pytest.fail("--deterministic timed the precision"))
    out = tmp_path / "run"
    TL.train(one_epoch(tiny_folder, out, deterministic=True))
    assert read_checkpoint(out / "last.pt")["precision"]["dtype"] == ("bfloat16" if amx else "fp32")


def test_bf16_and_fp32_evaluation_agree(trained):
    """The same checkpoint evaluated in bf16 and fp32: probabilities within bf16's rounding, and the
    same label for every image whose fp32 answer is not a tie within that rounding (a model this
    briefly trained has images at 0.499 / 0.501: one of 24 flipping is 4 points of accuracy)."""
    data, run = trained
    fp32, _, p32 = evaluate(run / "best.pt", data, workers=0, amp="off")
    bf16, _, p16 = evaluate(run / "best.pt", data, workers=0, amp="bf16")
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bfloat16"
    rounding = (p32 - p16).abs().max()
    assert 0 < rounding < 0.05  # bf16 did run, and stayed close
    top2 = p32.topk(2, dim=1).values
    clear = top2[:, 0] - top2[:, 1] > 2 * rounding
    assert clear.sum() >= len(p32) // 2 and torch.equal(p32.argmax(1)[clear], p16.argmax(1)[clear])
    assert abs(fp32["accuracy"] - bf16["accuracy"]) <= (~clear).float().mean() + 1e-9


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet20", "plain20", "resnet9"])
def test_folding_batchnorm_keeps_the_logits(arch):
    """Every BatchNorm that follows a convolution folded into it, the logits unchanged, for basic
    and bottleneck blocks, projection and padding shortcuts, and plain nets. ResNet-9's three
    BatchNorms behind a max-pool stay: with a negative scale, folding one into the convolution
    before the pool would turn the pool's max into a min."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=5, width=0.25).eval()
    for m in model.modules():  # statistics a trained model would have, scales of either sign
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        net = runtime.TorchNet.prepare(model, CPU, None, channels_last=True)
        got = net(x.contiguous(memory_format=torch.channels_last))
    left = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.model.modules())
    assert left == (3 if arch == "resnet9" else 0)
    assert (got - expected).abs().max() < 1e-4 * expected.abs().max()


def test_compiled_inference_gives_the_eager_logits(trained):
    """`--compile` (Inductor with freezing) computes what the eager model does (in bf16, within
    bf16's measured rounding: other kernels round otherwise), and Grad-CAM, which needs autograd,
    still runs on the eager model behind it."""
    from resnet import Classifier

    data, run = trained
    images = sorted(data.rglob("*.png"))[:6]
    eager = Classifier.from_checkpoint(run / "best.pt")
    compiled = Classifier.from_checkpoint(run / "best.pt", compile=True)
    assert compiled.net.model is not compiled.model  # the compiled module runs, the eager one explains
    a = eager.logits([D.load_image(p) for p in images])
    b = compiled.logits([D.load_image(p) for p in images])
    assert compiled.net.dtype == eager.net.dtype  # the model's own precision, compiled or not
    assert (a - b).abs().max() < logits_tolerance(eager.net.dtype, a)
    assert compiled.explain(images[0]).heatmap.max() > 0


def test_export_cache_keeps_the_most_recently_used(tmp_path, monkeypatch):
    from resnet.inference import exports as X
    from resnet.constants import ONNX_CACHE_KEEP

    monkeypatch.setattr(X, "write_onnx", lambda model, meta, path: Path(path).write_bytes(b"onnx"))
    for i in range(ONNX_CACHE_KEEP + 3):
        X.cached_onnx(None, {}, f"key{i}", tmp_path)
        os.utime(tmp_path / f"key{i}.onnx", (1000 + i, 1000 + i))
    X.cached_onnx(None, {}, "key0", tmp_path)  # dropped already: made again, now the newest
    kept = {p.stem for p in tmp_path.glob("*.onnx")}
    assert len(kept) == ONNX_CACHE_KEEP and "key0" in kept and f"key{ONNX_CACHE_KEEP + 2}" in kept
    assert "key3" not in kept  # the least recently used when key0 came back


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="sets glibc's allocator")
def test_the_cpu_device_keeps_freed_tensor_memory_for_the_next_step():
    def faults(device: str) -> int:
        run = subprocess.run([sys.executable, "-c", STEP_FAULTS, device], capture_output=True, text=True, check=True)
        return int(run.stdout)

    unset = faults("none")
    if unset < 3 * 9_216:  # one 38 MB activation is 9,216 pages; fewer: this kernel maps huge pages itself
        pytest.skip(f"glibc's default faulted only {unset} pages here")
    assert faults("cpu") * 20 < unset  # the heap may still grow once: 9,216 faults against ~500,000
