"""torchrun + DDP on the CPU (Gloo, localhost): ranks see disjoint halves and stay in step, N
processes train what one process does, two "nodes" over a real network path, and a killed worker
ends in a finished run with the uninterrupted run's weights. Each rank is `resnet train` as the CLI
runs it (tests/ddp_worker.py), recording from inside what it loaded and its own final weights."""

import csv
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from resnet.checkpoint import read_checkpoint
from resnet.inference.evaluate import evaluate

from conftest import photo, write_tiny

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
WORKER = str(Path(__file__).with_name("ddp_worker.py"))
# 32 images, a quarter held out: 24 to train on (3 steps of 4 per rank), 8 to validate on.
QUICK = ["--arch", "resnet20", "--img-size", "24", "--batch-size", "8", "--workers", "0", "--val-split", "0.25"]


def run(cmd: list[str], record: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RESNET_TEST_RECORD": str(record), **env})


def torchrun(args: list[str], record: Path, restarts: int = 0, **env: str):
    """One machine, two ranks, as docs/distributed.md launches it (--standalone: a free port)."""
    return run([TORCHRUN, "--standalone", "--nproc-per-node", "2", "--max-restarts", str(restarts), WORKER,
                "train", *args], record, **env)


def final_weights(record: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(record / f"rank{rank}.pt", weights_only=True)


def loaded(record: Path, rank: int, attempt: int = 0) -> dict:
    return json.loads((record / f"rank{rank}.attempt{attempt}.json").read_text())


def rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_two_ranks_load_disjoint_halves_and_end_with_identical_weights(tiny_folder, tmp_path):
    """Each rank trains on its own half: only the gradient all-reduce can keep their weights
    equal, and each rank's own copy is compared (parameters and BatchNorm statistics). The cache
    is decoded by one process of the machine. The validation folder (`--val DIR`) holds 9 images:
    the ranks score 5 and 4 of them, none twice and none left out, and the epoch's figure is the
    one `evaluate` gives for the saved weights (a padded shard would count an image twice)."""
    val = tmp_path / "val"
    for c, n, bright in (("a", 5, False), ("b", 4, True)):
        (val / c).mkdir(parents=True)
        for i in range(n):
            photo(40, 40, seed=200 + i + 10 * bright, bright=bright).save(val / c / f"{i}.png")
    out, record = tmp_path / "out", tmp_path / "record"
    quick = [a for a in QUICK if a not in ("--val-split", "0.25")]
    r = torchrun([str(tiny_folder), "--val", str(val), *quick, "--epochs", "2", "--cache", "--out", str(out)], record)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [loaded(record, 0), loaded(record, 1)]
    train_files = {row.split(",")[0] for row in (out / "train.csv").read_text().splitlines()[1:]}
    val_files = {row.split(",")[0] for row in (out / "val.csv").read_text().splitlines()[1:]}
    assert len(train_files) == 32 and val_files == {str(p) for p in val.rglob("*.png")}
    for epoch in (0, 1):
        a, b = (set(rank["loaded"][f"train{epoch}"]) for rank in ranks)
        assert len(a) == len(b) == 16 and not a & b and a | b == train_files
        a, b = (rank["loaded"][f"val{epoch}"] for rank in ranks)
        assert sorted([len(a), len(b)]) == [4, 5] and not set(a) & set(b) and set(a) | set(b) == val_files
    assert len(ranks[0]["built"]) == 2 and ranks[1]["built"] == []  # train and val caches, once

    assert_same_weights(final_weights(record, 0), final_weights(record, 1))
    last = read_checkpoint(out / "last.pt")
    assert_same_weights(last["model"], final_weights(record, 0))
    assert last["progress"]["step"] == 2 * 4
    result, _, _ = evaluate(out / "last.pt", out / "val.csv", workers=0)
    assert result["num_images"] == 9
    assert float(rows(out)[-1]["val_acc"]) == pytest.approx(result["accuracy"], abs=1e-9)
    assert r.stdout.count("best validation accuracy") == 1  # one report, from rank 0


def test_ranks_that_time_sizes_differently_all_train_rank_0s_choice(tiny_folder, tmp_path):
    """`--max-minutes` with the size left open: every rank times the candidate sizes, and their
    timings can disagree (here rank 1's say nothing larger fits); all must build rank 0's choice,
    or DDP would pair different networks."""
    out, record = tmp_path / "out", tmp_path / "record"
    r = torchrun([str(tiny_folder), "--arch", "resnet20", "--batch-size", "8", "--workers", "0", "--val-split", "0.25",
                  "--max-minutes", "0.1", "--out", str(out)], record, RESNET_TEST_UNEVEN_TIMING="1")
    assert r.returncode == 0, r.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert (config["width"], config["img_size"]) == (1.0, 32)
    assert_same_weights(final_weights(record, 0), final_weights(record, 1))


def test_two_ranks_with_half_the_batch_train_what_one_process_does(tiny_folder, tmp_path):
    """2 ranks x batch 4 == 1 process x batch 8, same seed, after 6 steps: weights within 1e-5 and
    the same epoch figures (training sums and validation reduced over the ranks). --sync-bn makes
    BatchNorm see the global batch; without it the statistics of half batches differ, and so do
    the weights (the control: this test can tell). Contiguous layout: channels_last's CPU
    BatchNorm backward sums in a different order, a difference of 1e-4 after a few steps between
    one and two threads of the same process, which would hide what is compared here; fp32 for the
    same reason: bf16 rounds half batches' gradients otherwise than whole ones (3.6e-2 apart after
    6 steps on an AVX-512-BF16 CPU). Two ranks in bf16 are checked by the tests around this one.
    A small learning rate for the same reason again: at the small-image recipe's 0.8 per 256, six
    steps amplify the summation order's last bits to 1e-3 (0.1: below 1e-5). The images are 40 px,
    so the in-memory loader serves both runs, and its crops must not depend on the batch split."""
    args = [str(tiny_folder), *QUICK, "--epochs", "2", "--no-channels-last", "--seed", "4", "--amp", "off", "--lr", "0.1"]
    one = run([sys.executable, WORKER, "train", *args, "--out", str(tmp_path / "one")], tmp_path / "r1")
    two = torchrun([*args, "--sync-bn", "--out", str(tmp_path / "two")], tmp_path / "r2")
    unsynced = torchrun([*args, "--out", str(tmp_path / "unsynced")], tmp_path / "r3")
    assert one.returncode == two.returncode == unsynced.returncode == 0, two.stderr[-3000:]
    assert "synchronised BatchNorm" in two.stdout + two.stderr

    def gap(a: dict, b: dict) -> float:
        return max((a[k].double() - b[k].double()).abs().max().item() for k in a)

    single = final_weights(tmp_path / "r1", 0)
    assert gap(single, final_weights(tmp_path / "r2", 0)) < 1e-5
    assert gap(single, final_weights(tmp_path / "r2", 1)) < 1e-5
    assert gap(single, final_weights(tmp_path / "r3", 0)) > 1e-4
    for a, b in zip(rows(tmp_path / "one"), rows(tmp_path / "two"), strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-5), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[list[str], Path]:
    """(the command line, last.pt) of a 3-epoch 2-rank run that nothing stopped, to which the
    interrupted runs below are compared (--deterministic: the precision is chosen without timing,
    the same in every run)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    args = [str(write_tiny(root / "tiny")), *QUICK, "--epochs", "3", "--resume", "auto", "--deterministic"]
    straight = torchrun([*args, "--out", str(root / "straight")], root / "r1", XDG_CACHE_HOME=str(root / "cache"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    return args, root / "straight" / "last.pt"


def test_killed_rank_restarts_and_ends_as_an_uninterrupted_run(uninterrupted, tmp_path):
    """SIGKILL rank 1 after epoch 1 under `--max-restarts 1 --resume auto`: torchrun restarts the
    group, which resumes from last.pt (epoch 1 is not trained again: its metrics row is the one
    written before the kill, timings included), and the weights equal an uninterrupted run's."""
    args, straight = uninterrupted
    out, record = tmp_path / "killed", tmp_path / "r2"
    r = torchrun([*args, "--out", str(out)], record, restarts=1, RESNET_TEST_KILL_AFTER_EPOCH="1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (record / "metrics_at_kill.csv").is_file() and (record / "rank1.attempt1.json").is_file()
    assert "train0" not in loaded(record, 0, attempt=1)["loaded"]  # the second attempt began at epoch 2
    assert "train1" in loaded(record, 0, attempt=1)["loaded"]

    before = (record / "metrics_at_kill.csv").read_text().splitlines()
    after = (out / "metrics.csv").read_text().splitlines()
    assert len(before) == 2 and len(after) == 4 and after[:2] == before
    assert [row["epoch"] for row in rows(out)] == ["1", "2", "3"]
    last = read_checkpoint(out / "last.pt")
    assert last["progress"]["epoch"] == 3 and len(last["progress"]["history"]) == 3
    assert not list(out.rglob("*.tmp")) and (out / "evaluation.json").is_file()
    assert_same_weights(last["model"], read_checkpoint(straight)["model"])


def test_sigterm_to_one_rank_stops_every_rank_at_one_step_with_exit_143(uninterrupted, tmp_path):
    """SLURM's notice before a preemption, `docker stop`: SIGTERM reaches rank 1 during step 5
    (epoch 2 of 3). Every rank finishes that step and exits 143 (a rank that stopped alone would
    leave the other waiting in the next all-reduce), last.pt holds step 5, and the same command
    run again (`--resume auto`) ends with the uninterrupted run's weights, bit for bit."""
    args, straight = uninterrupted
    out = tmp_path / "stopped"
    r = torchrun([*args, "--out", str(out)], tmp_path / "r", RESNET_TEST_SIGTERM_AT_STEP="5")
    assert r.returncode != 0
    assert r.stderr.count("exitcode  : 143") == 2, r.stderr[-3000:]  # torchrun's report of both ranks
    assert r.stderr.count("stopped by SIGTERM after step 5 (epoch 2)") == 2
    last = read_checkpoint(out / "last.pt")
    assert last["scheduler"]["step"] == 5 and last["progress"]["epoch"] == 1 and len(rows(out)) == 1
    again = torchrun([*args, "--out", str(out)], tmp_path / "r")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [row["epoch"] for row in rows(out)] == ["1", "2", "3"]
    assert_same_weights(read_checkpoint(out / "last.pt")["model"], read_checkpoint(straight)["model"])


def test_without_restarts_a_killed_rank_ends_the_job(tiny_folder, tmp_path):
    """Rank 1 killed after epoch 1: the job ends, saying so, and rank 0 trains no further alone
    (a job that hung in a collective instead would run into `run`'s timeout and fail)."""
    r = torchrun([str(tiny_folder), *QUICK, "--epochs", "3", "--out", str(tmp_path / "out")], tmp_path / "r",
                 RESNET_TEST_KILL_AFTER_EPOCH="1")
    assert r.returncode != 0 and "SIGKILL" in r.stderr
    assert len(rows(tmp_path / "out")) == 1  # epoch 1, saved before the kill; no epoch after it


def test_a_global_batch_that_does_not_divide_is_a_one_line_error(tiny_folder, tmp_path):
    r = torchrun([str(tiny_folder), "--arch", "resnet20", "--batch-size", "7", "--out", str(tmp_path / "out")],
                 tmp_path / "r")
    assert r.returncode != 0  # torchrun's own, after each rank's one line (exit 2):
    assert "resnet train: error: --batch-size 7 is the global batch: it must divide evenly over 2 processes" in r.stderr
    assert not re.search(r'File "[^"]*/resnet/[\w/]+\.py"', r.stderr), r.stderr  # no traceback through our code


def make_namespaces(tag: str) -> list[str] | None:
    """Two network namespaces joined by a veth pair (10.231.0.1 and .2); None if they cannot be made."""
    names = [f"rn{tag}a", f"rn{tag}b"]
    steps = [["ip", "netns", "add", names[0]], ["ip", "netns", "add", names[1]],
             ["ip", "link", "add", f"rv{tag}a", "type", "veth", "peer", "name", f"rv{tag}b"]]
    for i, ns in enumerate(names):
        dev = f"rv{tag}{'ab'[i]}"
        steps += [["ip", "link", "set", dev, "netns", ns], ["ip", "-n", ns, "addr", "add", f"10.231.0.{i + 1}/24", "dev", dev],
                  ["ip", "-n", ns, "link", "set", dev, "up"], ["ip", "-n", ns, "link", "set", "lo", "up"]]
    for step in steps:
        if subprocess.run(step, capture_output=True).returncode != 0:
            remove_namespaces(names)
            return None
    return names


def remove_namespaces(names: list[str]) -> None:
    for ns in names:  # deleting a namespace deletes its end of the veth pair, and so the pair
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def test_two_nodes_over_a_network_path_end_with_identical_weights(tiny_folder, tmp_path):
    """Two single-process "nodes" in two network namespaces, a veth pair between them: torchrun
    --nnodes 2 with c10d rendezvous, Gloo over that link."""
    tag = uuid.uuid4().hex[:6]
    names = make_namespaces(tag)
    if names is None:
        pytest.skip("cannot make network namespaces here (needs root or CAP_NET_ADMIN and iproute2)")
    record = tmp_path / "record"
    env = {**os.environ, "RESNET_TEST_RECORD": str(record)}
    nodes: list[subprocess.Popen] = []
    try:
        nodes = [subprocess.Popen(
            ["ip", "netns", "exec", ns, "env", f"GLOO_SOCKET_IFNAME=rv{tag}{'ab'[i]}", TORCHRUN,
             "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-id", tag,
             "--rdzv-endpoint", "10.231.0.1:29461", "--local-addr", f"10.231.0.{i + 1}",
             # both "nodes" share one hostname, which torchrun would otherwise use to find the store's host
             "--rdzv-conf", f"is_host={int(i == 0)}", WORKER, "train",
             str(tiny_folder), *QUICK, "--epochs", "2", "--out", str(tmp_path / "out")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i, ns in enumerate(names)]
        results = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
        remove_namespaces(names)
    assert [node.returncode for node in nodes] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert "DDP over 2 process(es) (gloo)" in "".join(results[0] + results[1])
    a, b = (set(loaded(record, rank)["loaded"]["train0"]) for rank in (0, 1))
    assert len(a) == len(b) == 12 and not a & b
    assert_same_weights(final_weights(record, 0), final_weights(record, 1))
