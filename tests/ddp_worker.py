"""`resnet train` under torchrun, as the CLI runs it, plus what the distributed tests need to see
from inside each rank (set through the environment):

- RESNET_TEST_RECORD=DIR: each rank writes DIR/rank{R}.attempt{A}.json (the files it loaded, per
  epoch and split, and the caches it decoded) and DIR/rank{R}.pt (its own final weights);
- RESNET_TEST_KILL_AFTER_EPOCH=N: in torchrun's first attempt, rank 1 copies OUT/metrics.csv to
  DIR/metrics_at_kill.csv once epoch N is saved, then SIGKILLs itself;
- RESNET_TEST_SIGTERM_AT_STEP=N: in the first attempt, rank 1 sends itself SIGTERM during its N-th
  training step;
- RESNET_TEST_UNEVEN_TIMING=1: choosing the size under `--max-minutes`, a three-size ladder up to
  32 px timed cheap on rank 0 and dear on rank 1, so that only rank 0's timings would grow; the
  budget's clock is conftest's `StepClock` (time passes with the steps only).
"""

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import torch

from resnet import data as D
from resnet.training import budget as TB, loop as TL, recipe as TP, run as TR
from resnet.cli import main

from conftest import StepClock
from resnet.training.recipe import Recipe
from resnet.data.transforms import EvalTransform

RECORD = Path(os.environ["RESNET_TEST_RECORD"])
KILL_AFTER = int(os.environ.get("RESNET_TEST_KILL_AFTER_EPOCH", "0"))
RANK = int(os.environ.get("RANK", "0"))
ATTEMPT = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
seen: dict = {"loaded": {}, "built": []}
epoch = [0]


def save_record() -> None:
    RECORD.mkdir(parents=True, exist_ok=True)
    (RECORD / f"rank{RANK}.attempt{ATTEMPT}.json").write_text(json.dumps(seen))


def getitem(self, item, _orig=D.ImageDataset.__getitem__):
    split = "val" if isinstance(self.transform, EvalTransform) else "train"
    index = item.index if isinstance(item, D.Draw) else item
    seen["loaded"].setdefault(f"{split}{epoch[0]}", []).append(self.samples[index].path)
    return _orig(self, item)


class RecordedTensorLoader(D.TensorLoader):
    """The in-memory loader, recording the files of the images it hands out as `getitem` does."""

    paths: list[str] = []

    def __iter__(self):
        for batch in super().__iter__():
            seen["loaded"].setdefault(f"train{epoch[0]}", []).extend(self.paths[i] for i in batch.indices.tolist())
            yield batch


def make_loaders(cfg, split, *args, _orig=TR.make_loaders):
    train_loader, val_loader, workers = _orig(cfg, split, *args)
    if isinstance(train_loader, D.TensorLoader):
        train_loader.__class__ = RecordedTensorLoader
        train_loader.paths = [s.path for s in split.train]
    return train_loader, val_loader, workers


def build(self, *args, _orig=D.DecodedCache.build, **kwargs):
    seen["built"].append(self.dir.name)
    return _orig(self, *args, **kwargs)


def train_epoch(run, progress, *args, _orig=TL.train_epoch):
    epoch[0] = progress.epoch
    return _orig(run, progress, *args)


def should_stop(run, progress, *args, _orig=TL.should_stop):
    decided = _orig(run, progress, *args)  # rank 0 has saved the epoch when this returns
    if RANK == 1 and ATTEMPT == 0 and progress.epoch == KILL_AFTER:
        save_record()
        shutil.copy(Path(run.cfg.out) / "metrics.csv", RECORD / "metrics_at_kill.csv")
        os.kill(os.getpid(), signal.SIGKILL)
    return decided


def train(cfg, state=None, _orig=TL.train):
    summary = _orig(cfg, state)
    save_record()
    torch.save(summary["model"].state_dict(), RECORD / f"rank{RANK}.pt")
    return summary


def terminated_at_step(n: int, _orig=TL.forward_loss):
    """`forward_loss` that sends this process SIGTERM during its n-th training step, as a
    scheduler would, mid-step."""
    steps = [0]

    def forward_loss(*args):
        steps[0] += 1
        if steps[0] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return _orig(*args)

    return forward_loss


def uneven_compute(model, sizes, *args):
    return (0.02 if RANK == 0 else 10.0), 2.0


D.ImageDataset.__getitem__ = getitem
D.DecodedCache.build = build
TL.train_epoch, TL.should_stop, TL.train, TR.make_loaders = train_epoch, should_stop, train, make_loaders
if os.environ.get("RESNET_TEST_SIGTERM_AT_STEP") and RANK == 1 and ATTEMPT == 0:
    TL.forward_loss = terminated_at_step(int(os.environ["RESNET_TEST_SIGTERM_AT_STEP"]))
if os.environ.get("RESNET_TEST_UNEVEN_TIMING"):
    StepClock().install()  # the budget's time passes with the steps, not the wall clock
    TB.compute_time_by_size = uneven_compute
    TP.plan_recipe = lambda stats, budget, epochs: Recipe("photos", {}, ((0.5, 24), (0.5, 32), (1.0, 32)), 5)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
