"""Nothing a user made is lost or overwritten, whatever runs beside it: one writer per run
folder (a second is refused in one line before it touches a file), caches that are checked
before each use and rebuilt when damaged, temporary files that are each writer's own, memory
limits the process really has, and real signals to a real training process."""

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import resnet
from resnet import data as D
from resnet.inference import exports as X
from resnet.checkpoint import read_checkpoint
from resnet.cli import main
from resnet.errors import ConfigError
from resnet.outputs import WRITER_LOCK, replace_atomically
from resnet.inference.predict import Classifier

from conftest import photo

TINY = ["--arch", "resnet20", "--img-size", "24", "--batch-size", "8", "--workers", "0", "--seed", "3",
        "--val-split", "0.25", "--deterministic"]


def one_line_error(capsys, code: int, *needles: str) -> str:
    """The command's stderr ends in one `resnet train: error:` line holding every needle."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and lines and lines[-1].startswith("resnet train: error: "), lines
    assert not any(line.startswith(("Traceback", "resnet")) for line in lines[:-1]), lines
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def started(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "resnet", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def wait_for(proc: subprocess.Popen, path: Path) -> None:
    """Until `path` exists (the run got that far), the run still going."""
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        threading.Event().wait(0.05)


def test_a_second_writer_into_a_running_run_is_refused_and_changes_nothing(tiny_folder, tmp_path, capsys):
    """20 tries of a second writer into a run that is training (stopped with SIGSTOP after it wrote
    its first last.pt, so it holds the folder for as long as the tries take, with no clock): a new
    run, --resume, --resume auto and `resnet.train` from Python, five each, every one refused in
    one line naming the process that holds the folder, before it reads or writes a file; readers
    (predict, evaluate) of its last.pt go on. The first run then ends with the files of a run
    alone with the same seed."""
    out, alone = tmp_path / "run", tmp_path / "alone"
    proc = started(["train", str(tiny_folder), *TINY, "--epochs", "3", "--out", str(out)])
    try:
        wait_for(proc, out / "last.pt")
        proc.send_signal(signal.SIGSTOP)
        before = snapshot(out)
        tries = [["train", str(tiny_folder), *TINY, "--epochs", "2", "--seed", str(i), "--out", str(out)]
                 for i in range(5)]
        tries += [["train", "--resume", str(out / "last.pt")] + (["--epochs", "9"] if i % 2 else []) for i in range(5)]
        tries += [["train", str(tiny_folder), "--resume", "auto", "--out", str(out)] for _ in range(5)]
        for args in tries:
            one_line_error(capsys, main(args), str(out), f"process {proc.pid}", "another run")
        for i in range(5):
            with pytest.raises(ConfigError, match=f"process {proc.pid}"):
                if i % 2:
                    resnet.train(resume=out / "last.pt")
                else:
                    resnet.train(tiny_folder, out=out, arch="resnet20", epochs=1)
        assert snapshot(out) == before  # nothing read-modified, renamed, or left behind
        image = next(tiny_folder.rglob("*.png"))  # readers take no lock: they go on as the run trains
        assert main(["predict", str(out / "last.pt"), str(image)]) == 0
        assert main(["evaluate", str(out / "last.pt"), str(tiny_folder)]) == 0
        capsys.readouterr()
    finally:
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert main(["train", str(tiny_folder), *TINY, "--epochs", "3", "--out", str(alone)]) == 0
    for name in ("train.csv", "val.csv"):
        assert (out / name).read_bytes() == (alone / name).read_bytes()
    config, config_alone = (json.loads((d / "config.json").read_text()) for d in (out, alone))
    assert {**config, "out": ""} == {**config_alone, "out": ""} and config["epochs"] == 3 and config["seed"] == 3
    a, b = weights(out / "last.pt"), weights(alone / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((out / "metrics.csv").read_text().splitlines()) == 4  # its own 3 epochs, nobody else's


def test_a_killed_run_leaves_no_lock_and_a_finished_one_frees_its_folder(tiny_folder, tmp_path, capsys):
    """`kill -9` cannot run any clean-up: the kernel drops the lock, and --resume goes on at once.
    A run that failed before its first file leaves no folder behind (nor a lock in one)."""
    out = tmp_path / "run"
    proc = started(["train", str(tiny_folder), *TINY, "--epochs", "50", "--out", str(out)])
    wait_for(proc, out / "last.pt")
    proc.kill()
    proc.communicate()
    assert (out / WRITER_LOCK).read_text().strip() == str(proc.pid)  # the file stays; its lock does not
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "2"]) == 0
    assert main(["train", str(tmp_path / "nowhere"), *TINY, "--out", str(tmp_path / "never")]) == 2
    assert not (tmp_path / "never").exists()
    capsys.readouterr()


def test_two_writers_of_one_file_never_share_a_temporary_name(tmp_path):
    """metrics.csv, config.json and the rest are written under a temporary name and renamed: two
    writers of one path (two runs of old in one folder, a run and its resume) each had their own
    rename fail when they shared `metrics.tmp`. Now every write lands whole, and none is left."""
    path, errors = tmp_path / "metrics.csv", []

    def writer(tag: str) -> None:
        try:
            for i in range(200):
                replace_atomically(path, lambda tmp: tmp.write_text(f"{tag},{i}\n" * 100))
        except Exception as e:  # noqa: BLE001 - any failure of either writer fails the test
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    lines = path.read_text().splitlines()
    assert len(lines) == 100 and len(set(lines)) == 1  # one writer's whole file
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def damage_pixels_cut(cache: Path) -> None:
    pixels = cache / "pixels.u8"
    os.truncate(pixels, pixels.stat().st_size // 2)


def damage_pixels_zeroed(cache: Path) -> None:
    pixels = cache / "pixels.u8"
    pixels.write_bytes(bytes(pixels.stat().st_size))  # the right size, the wrong pixels


DAMAGES = {
    "garbled index": lambda cache: (cache / "index.json").write_text('{"entries": [[0, 24'),
    "index of another list": lambda cache: (cache / "index.json").write_text(json.dumps({"entries": [], "digest": ""})),
    "emptied pixels": lambda cache: (cache / "pixels.u8").write_bytes(b""),
    "pixels cut in half": damage_pixels_cut,
    "pixels zeroed in place": damage_pixels_zeroed,
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_decoded_cache_is_rebuilt_with_one_line(tiny_folder, tmp_path, capsys, damage):
    """Each kind of damage to the decoded cache: the next run says so in one line per cache,
    decodes again, and trains exactly the weights a fresh cache gives; the run after it finds the
    rebuilt cache whole."""
    args = ["train", str(tiny_folder), *TINY, "--epochs", "1", "--cache", "--cache-dir", str(tmp_path / "cache")]

    def rebuilt(out: str) -> list[str]:
        capsys.readouterr()
        assert main([*args, "--out", str(tmp_path / out)]) == 0
        return [line for line in capsys.readouterr().out.splitlines() if "decoding it again" in line]

    assert rebuilt("fresh") == []
    caches = sorted(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert len(caches) == 2  # the training images, the validation crops
    for cache in caches:
        DAMAGES[damage](cache)
    said = rebuilt("again")
    assert len(said) == 2 and all(line.startswith("decoded cache ") for line in said), said
    a, b = weights(tmp_path / "fresh" / "last.pt"), weights(tmp_path / "again" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rebuilt("third") == []


ONNX_DAMAGES = {"cut": lambda f: os.truncate(f, f.stat().st_size // 2), "emptied": lambda f: f.write_bytes(b""),
                "overwritten": lambda f: f.write_bytes(b"\x08\x07" + os.urandom(4000))}


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_a_damaged_cached_export_is_made_again_with_one_line(trained, capsys, engine):
    """A cached ONNX export cut short, emptied or overwritten: the next load says so in one line
    and exports again (the user's checkpoint is fine, so nothing is blamed on it), and the model
    answers as before."""
    data, run = trained
    images = [D.load_image(p) for p in sorted(data.rglob("*.png"))[:6]]
    expected = Classifier.from_checkpoint(run / "best.pt", engine=engine, amp="off").logits(images)
    [cached] = Path(D.default_cache_dir("onnx")).glob("*.onnx")
    for name, damage in ONNX_DAMAGES.items():
        damage(cached)
        capsys.readouterr()
        again = Classifier.from_checkpoint(run / "best.pt", engine=engine, amp="off")
        said = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
        assert len(said) == 1 and said[0].startswith(f"cached export {cached}:") and "exporting it again" in said[0], name
        assert again.engine.name == engine and torch.allclose(again.logits(images), expected, atol=1e-5), name
        assert X.cache_damage(cached, cached.stem) is None  # whole again


def test_two_processes_filling_one_cache_at_once_leave_it_valid(tiny_folder, tmp_path):
    """Two processes decode the same images into the same cache at the same moment (two runs
    started together): each writes under its own temporary names and renames, so the cache they
    leave is whole, and reads the pixels a cache built alone holds."""
    root = tmp_path / "cache"
    code = f"""
import sys
from resnet import data as D
samples = D.discover({str(tiny_folder)!r}, None, 0.0, 0).train
sys.stdin.readline()  # both start decoding together
cache = D.build_cache(samples, {str(root)!r}, 40)
print(cache.dir, cache.damage, len(cache.entries))
"""
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        p.stdin.write("\n")
        p.stdin.flush()
    outputs = [p.communicate()[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs) and outputs[0] == outputs[1]
    assert outputs[0][1:] == ["None", "32"]
    samples = D.discover(tiny_folder, None, 0.0, 0).train
    shared = D.DecodedCache(root, [s.path for s in samples], 40)
    alone = D.build_cache(samples, tmp_path / "alone", 40)
    assert shared.ready and shared.damage is None
    assert all((shared.get(i) == alone.get(i)).all() for i in range(len(samples)))
    assert not [p for p in Path(outputs[0][0]).iterdir() if p.name.endswith(".tmp")]


# What another process does to a cache while this one lists it: a second node's builder renames its
# index into place (two torchrun nodes on one machine); another server drops and makes exports.
CACHE_WRITERS = {
    "decoded": ("from resnet.outputs import write_text_atomically\n"
                "while True:\n    write_text_atomically(folder / 'abc' / 'index.json', 'x' * 100)\n",
                lambda root: D.cache_entries(root)),
    "onnx": ("while True:\n    (folder / 'a.onnx').write_text('x' * 100)\n    (folder / 'a.onnx').unlink()\n",
             lambda root: X.onnx_cache_entries(root)),
}


@pytest.mark.parametrize("kind", sorted(CACHE_WRITERS))
def test_listing_a_cache_while_another_process_writes_it_does_not_fail(tmp_path, kind):
    """A file renamed or removed between the listing and its size is left out, not a
    FileNotFoundError that ends the run (or the `resnet cache` listing) that was pruning."""
    code, listing = CACHE_WRITERS[kind]
    (tmp_path / "abc").mkdir()
    writer = subprocess.Popen([sys.executable, "-c", f"from pathlib import Path\nfolder = Path({str(tmp_path)!r})\n{code}"])
    try:
        while not any(tmp_path.rglob("*.*")):
            time.sleep(0.01)
        sizes = {sum(e["bytes"] for e in listing(tmp_path)) for _ in range(3000)}
    finally:
        writer.kill()
    assert sizes <= {0, 100, 200}  # the file, at moments none or its next copy beside it


def limited(gib: float):
    """A child process whose address space is capped, as a container's memory limit caps one."""
    cap = int(gib * 2**30)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def test_a_step_that_cannot_fit_under_the_address_space_limit_is_refused(tmp_path):
    """`ulimit -v` 4 GiB (the machine itself has plenty free): ResNet-50 at 224 px on 32 images
    with a batch of 30,000 (capped to the 32) needs ~4 GiB a step; refused in one line naming the
    batch that fits, before the first step, instead of the allocator's 25-line failure."""
    data = tmp_path / "data"
    for c, bright in (("a", False), ("b", True)):
        (data / c).mkdir(parents=True)
        for i in range(16):
            photo(40, 40, seed=i, bright=bright).save(data / c / f"{i}.png")
    r = subprocess.run([sys.executable, "-m", "resnet", "train", str(data), "--arch", "resnet50", "--img-size", "224",
                        "--batch-size", "30000", "--workers", "0", "--val-split", "0", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, preexec_fn=limited(4), timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and not any("Traceback" in line for line in lines), r.stderr[-3000:]
    assert lines[-1].startswith("resnet train: error: --batch-size 32: a training step of resnet50 at 224 px")
    assert "images per process fit" in lines[-1] and "free on cpu" in lines[-1]
    assert not (tmp_path / "run" / "last.pt").exists()


def test_an_allocation_that_fails_anyway_is_one_line_and_keeps_last_pt(tiny_folder, tmp_path, monkeypatch, capsys):
    """The estimate passed, and the allocator still refused (another process took the memory):
    one line, exit 1, naming a smaller batch; last.pt is the last one saved, whole."""
    from resnet.training import loop

    out = tmp_path / "run"
    assert main(["train", str(tiny_folder), *TINY, "--epochs", "1", "--out", str(out)]) == 0
    saved = weights(out / "last.pt")
    real = loop.take_step

    def refused(run, progress, batch):
        if progress.step == 4:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 3576846336 bytes. Error code 12 (Cannot allocate memory)")
        return real(run, progress, batch)

    monkeypatch.setattr(loop, "take_step", refused)
    capsys.readouterr()
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "2"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines[-1].startswith("resnet train: out of memory with --batch-size 8") and "try --batch-size" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    after = weights(out / "last.pt")
    assert all(torch.equal(saved[k], after[k]) for k in saved)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_real_signal_to_a_training_process_saves_the_step_and_sets_its_exit_status(tiny_folder, tmp_path, signum,
                                                                                     status):
    """Ctrl-C and `kill` sent to a real `resnet train` process while its step 5 runs (the step
    waits for the test's word, so no clock decides where it lands): the step finishes, last.pt
    holds it, and the process's own exit status is 130 / 143, with one line on stderr."""
    out = tmp_path / "run"
    code = f"""
import sys
from resnet.training import loop
from resnet.cli import main
real = loop.take_step
def step(run, progress, batch):
    if progress.step == 4:
        print("in step 5", flush=True)
        sys.stdin.readline()
    return real(run, progress, batch)
loop.take_step = step
sys.exit(main({["train", str(tiny_folder), *TINY, "--epochs", "3", "--out", str(out)]!r}))
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while "in step 5" not in proc.stdout.readline():
        assert proc.poll() is None, proc.communicate()
    proc.send_signal(signum)
    _, err = proc.communicate("\n", timeout=120)
    assert proc.returncode == status, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith(f"resnet train: stopped by {signal.Signals(signum).name} after step 5"), lines
    assert read_checkpoint(out / "last.pt")["progress"]["step"] == 5
