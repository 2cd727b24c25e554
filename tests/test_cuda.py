"""The CUDA paths: autocast, GradScaler, channels_last, torch.compile, NCCL. Skipped where there is
no GPU (CI has none); `benchmarks/cuda_check.sh` runs them on a GPU machine."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet import Classifier, create_model
from resnet.training import config as TC, loop as TL
from resnet.checkpoint import read_checkpoint
from resnet.data.transforms import normalize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def no_tf32():
    """Compare against true fp32: TF32 convolutions alone are ~1e-3 off."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_normalize_on_gpu_equals_cpu():
    x = torch.randint(0, 256, (4, 3, 17, 19), dtype=torch.uint8)
    gpu = normalize(x, device="cuda", channels_last=True)
    assert gpu.is_cuda and gpu.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(gpu.cpu(), normalize(x), atol=1e-6)


def test_compiled_model_matches_eager():
    torch.manual_seed(0)
    model = create_model("resnet20").cuda().eval()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.no_grad():
        assert rel_err(torch.compile(model)(x), model(x)) < 1e-4


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_train_on_gpu_with_amp_then_resume(tiny_folder, tmp_path, amp):
    """A mixed-precision run on the GPU, resumed, and its checkpoint used on the CPU."""
    out = tmp_path / amp
    cfg = TC.make_config("default", data=str(tiny_folder), arch="resnet20", img_size=24, epochs=1,
                        batch_size=8, workers=1, out=str(out), device="cuda", amp=amp, val_split=0.25)
    TL.train(cfg)
    saved = read_checkpoint(out / "last.pt")["scaler"]
    summary = TL.train(*TC.resume_config(out / "last.pt", {"epochs": 2}))
    assert summary["epochs"] == 2
    state = read_checkpoint(out / "last.pt")
    assert all(not v.is_cuda for v in state["model"].values())  # loads on a machine without a GPU
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())
    if amp == "fp16":  # the loss scale goes on from the checkpoint's: 3 more clean steps, or halved by an overflow
        scaler, steps = state["scaler"], 3  # a scaler started afresh would be back at 65536 with 3 steps counted
        assert (scaler["scale"] == saved["scale"] and scaler["_growth_tracker"] == saved["_growth_tracker"] + steps
                or scaler["scale"] < saved["scale"])
    image = next(tiny_folder.rglob("*.png"))
    top = Classifier.from_checkpoint(out / "best.pt", device="cpu").predict([image])[0]
    assert top["label"] in state["classes"]


def test_torchrun_one_gpu_uses_nccl_ddp(tiny_folder, tmp_path):
    """One GPU: torchrun still starts a process group, so the DDP + NCCL path is exercised."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    r = subprocess.run(cmd + ["--nproc-per-node", "1", "-m", "resnet", "train", str(tiny_folder),
                              "--arch", "resnet20", "--img-size", "24", "--epochs", "2", "--batch-size", "8",
                              "--workers", "1", "--device", "cuda", "--compile", "--out", str(tmp_path / "ddp")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DDP over 1 process(es) (nccl)" in r.stdout + r.stderr
    assert len((tmp_path / "ddp" / "metrics.csv").read_text().splitlines()) == 3
