"""Faults, limits and misuse: every one stops cleanly with one message, loses nothing, and never
scores training images as test images. Each test here failed (a traceback, a wrong number, or
a silent success) before the fix it covers."""

import errno
import gzip
import json
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_forked as run_cli
from conftest import write_image_folder
from PIL import Image
from safetensors.torch import load_file, save_file

from squeezenet.errors import SqueezeNetError

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--train-size", "96", "--batch-size", "32", "--epochs", "1", "--no-progress"]


# ----------------------------------------------------------------------------- training images as test images

def test_a_class_folder_run_has_no_test_split_to_score(tmp_path, cli):
    root = write_image_folder(tmp_path / "photos", per_class=8, size=24)  # DIR/<class>/, no DIR/test
    code, _, err = cli("train", "--dataset", "folder", "--data-dir", root, "--image-size", "24", "--small-input",
                       "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25", "--out", tmp_path / "run",
                       "--no-progress")
    assert code == 0, err
    for command in (["eval", tmp_path / "run"], ["quantize", tmp_path / "run", "--out", tmp_path / "q.onnx"],
                    ["compress", tmp_path / "run", "--steps", "1", "--out", tmp_path / "c.sqz"]):
        code, out, err = cli(*command)
        assert code == 1 and "holds the images this model trained on" in err and "Traceback" not in err, err
        assert "top-1" not in out
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "c.sqz").exists()
    assert cli("eval", tmp_path / "run", "--split", "val")[0] == 0  # its validation split is fine


def test_test_images_that_are_training_images_are_found_by_content(tmp_path, cli):
    root = write_image_folder(tmp_path / "photos", per_class=8, size=24)
    code, _, err = cli("train", "--dataset", "folder", "--data-dir", root, "--image-size", "24", "--small-input",
                       "--epochs", "1", "--batch-size", "4", "--val-fraction", "0", "--out", tmp_path / "run",
                       "--no-progress")
    assert code == 0, err
    copy = tmp_path / "copy"  # the same images under other names: a "test set" that is the training set
    for f in root.rglob("*.png"):
        (copy / f.parent.name).mkdir(parents=True, exist_ok=True)
        os.link(f, copy / f.parent.name / f"renamed-{f.name}")
    code, out, err = cli("eval", tmp_path / "run", "--data-dir", copy)
    assert code == 1 and "16 of the 16 test images are images this model trained on" in err, err
    fresh = write_image_folder(tmp_path / "fresh", per_class=4, size=24, seed=9)
    os.link(root / "cat" / "0.png", fresh / "cat" / "dup.png")  # one duplicate among 9
    code, out, err = cli("eval", tmp_path / "run", "--data-dir", fresh)
    assert code == 0 and "warning: 1 of the 9 test images are also in the training images" in err, err


# ----------------------------------------------------------------------------- resume

def test_resume_refuses_settings_that_define_the_run(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("train", "--train-size", "96", "--batch-size", "32", "--epochs", "3", "--stop-after", "1",
               "--out", run, "--no-progress")[0] == 0
    state = (run / "last.state.pt").read_bytes()
    for flags, named in ([["--batch-size", "64"], "--batch-size 64"], [["--seed", "4"], "--seed 4"],
                         [["--arch", "squeezenet1_0"], "--arch"], [["--no-batch-norm"], "--batch-norm False"],
                         [["--train-size", "90"], "--train-size 90"], [["--dataset", "noise"], "--dataset 'noise'"]):
        code, _, err = cli("train", "--resume", run, *flags)
        assert code == 2 and named in err and "cannot resume" in err and "Traceback" not in err, (flags, err)
    assert (run / "last.state.pt").read_bytes() == state
    code, out, err = cli("train", "--resume", run, "--epochs", "2", "--no-progress")  # how long: may change
    assert code == 0 and "epoch   2/2" in out, err


def test_resume_refuses_training_images_that_changed(tmp_path, cli):
    root = write_image_folder(tmp_path / "photos", per_class=8, size=24)
    args = ["--dataset", "folder", "--data-dir", root, "--image-size", "24", "--small-input", "--batch-size", "4"]
    assert cli("train", *args, "--epochs", "2", "--stop-after", "1", "--out", tmp_path / "run", "--no-progress")[0] == 0
    Image.new("RGB", (24, 24), (9, 9, 9)).save(root / "cat" / "0.png")  # the data set is another now
    code, _, err = cli("train", "--resume", tmp_path / "run", "--no-progress")
    assert code == 1 and "the training images differ from those" in err, err


# ----------------------------------------------------------------------------- signals

REF = ["train", "--train-size", "128", "--batch-size", "32", "--epochs", "3", "--lr", "0.02", "--no-progress"]


def test_sigterm_stops_after_the_step_and_resume_is_exact(tmp_path):
    assert run_cli(*REF, "--out", tmp_path / "ref")[0] == 0
    code, out, err = run_cli(*REF, "--out", tmp_path / "run", env={"SQUEEZENET_SIGNAL_AT": "epoch2-step2"})
    assert code == 143, err
    assert "stopped by SIGTERM at epoch 2, step 2" in err and f"squeezenet train --resume {tmp_path / 'run'}" in err
    state = torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2)  # mid-epoch: nothing of epoch 2's two steps lost
    assert run_cli("train", "--resume", tmp_path / "run")[0] == 0
    a, b = load_file(tmp_path / "ref" / "last.safetensors"), load_file(tmp_path / "run" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda p: [{k: v for k, v in json.loads(x).items() if k not in ("seconds", "images_per_s")}  # noqa: E731
                      for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert rows(tmp_path / "ref") == rows(tmp_path / "run")


def test_ctrl_c_from_outside_saves_and_exits_130(tmp_path):
    import time

    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "squeezenet", "train", "--dataset", "noise", "--image-size", "64",
                          "--train-size", "4000", "--batch-size", "32", "--epochs", "2", "--out", str(tmp_path / "run"),
                          "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "parameters |" in p.stdout.readline()  # the line just before the first step
    time.sleep(1.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "stopped by SIGINT" in err and "--resume" in err, err
    state = torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)
    assert state["step"] > 0 and "Traceback" not in err


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_every_rank_and_resumes_exactly(tmp_path):
    args = ["train", "--dataset", "shapes", "--train-size", "250", "--batch-size", "32", "--epochs", "2",
            "--no-batch-norm", "--dropout", "0", "--augment", "none", "--bypass", "none", "--lr", "0.002",
            "--amp", "off", "--no-progress"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "squeezenet"]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}

    def go(*extra, **more):
        return subprocess.run([*torchrun, *args, *extra], env={**env, **more}, capture_output=True, text=True,
                              timeout=240)

    assert go("--out", str(tmp_path / "ref")).returncode == 0
    r = go("--out", str(tmp_path / "run"), SQUEEZENET_SIGNAL_AT="epoch2-step3@1")  # rank 1 alone gets it
    assert r.returncode != 0 and r.stderr.count("stopped by SIGTERM at epoch 2, step 3") == 2, r.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 3)
    assert go("--resume", str(tmp_path / "run")).returncode == 0
    a, b = load_file(tmp_path / "ref" / "last.safetensors"), load_file(tmp_path / "run" / "last.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0


# ----------------------------------------------------------------------------- two writers, foreign files

def test_a_second_trainer_on_the_same_run_is_refused(tmp_path, cli):
    import fcntl

    run = tmp_path / "run"
    assert cli("train", *TINY, "--epochs", "2", "--stop-after", "1", "--out", run)[0] == 0
    fd = os.open(run, os.O_RDONLY)  # as a first trainer still running holds it
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        code, _, err = cli("train", "--resume", run, "--no-progress")
        assert code == 1 and "another `squeezenet train` is writing to" in err, err
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    finally:
        os.close(fd)
    assert cli("train", "--resume", run, "--no-progress")[0] == 0


def test_only_our_own_temporary_files_are_removed(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("train", *TINY, "--epochs", "2", "--stop-after", "1", "--out", run)[0] == 0
    (run / ".last.state.pt.abc.squeezenet-tmp").write_bytes(b"a killed write of ours")
    (run / ".editor-swap.tmp").write_bytes(b"someone else's")
    assert cli("train", "--resume", run, "--no-progress")[0] == 0
    assert not (run / ".last.state.pt.abc.squeezenet-tmp").exists() and (run / ".editor-swap.tmp").exists()
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.txt").write_text("not a run")
    code, _, err = cli("train", *TINY, "--out", folder)
    assert code == 1 and "is not empty and is not a run directory" in err
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]


# ----------------------------------------------------------------------------- disks and permissions

@pytest.fixture
def tiny_disk(tmp_path):
    """A 16 MB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_keeps_the_last_good_files_and_says_so(tmp_path, tiny_disk, cli):
    run = tiny_disk / "run"
    code, _, err = cli("train", *TINY, "--epochs", "3", "--stop-after", "1", "--out", run)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    (tiny_disk / "filler").write_bytes(b"\0" * (free - 1_000_000))  # 1 MB left: less than one checkpoint
    code, out, err = cli("train", "--resume", run, "--no-progress")
    assert code == 1 and "the disk is full" in err and "Traceback" not in err, err
    assert err.count("\n") == 1  # one line
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before  # byte-identical, and no temporary file left


def test_disk_errors_on_every_artifact_are_one_line(tmp_path, cli, monkeypatch):
    import squeezenet.files as files

    for target, code_expected in (("last.state.pt", 1), ("metrics.jsonl", 1), ("loss.png", 1)):
        out = tmp_path / f"run-{target}"
        real = os.replace

        def failing(src, dst, target=target, real=real):
            if Path(dst).name == target:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
            return real(src, dst)

        monkeypatch.setattr(files.os, "replace", failing)
        code, _, err = cli("train", *TINY, "--out", out)
        monkeypatch.setattr(files.os, "replace", real)
        assert code == code_expected and f"cannot write {out / target}: the disk is full" in err, err
        assert not [p for p in out.iterdir() if p.name.endswith(".squeezenet-tmp")]
    (tmp_path / "file.txt").write_text("x")
    code, _, err = cli("export", tmp_path / "run-loss.png" / "last.safetensors", "--format", "onnx",
                       "--out", tmp_path / "file.txt" / "m.onnx")
    assert code == 1 and "a parent path is a file" in err and "Traceback" not in err, err
    real = os.replace
    monkeypatch.setattr(files.os, "replace", lambda src, dst: (_ for _ in ()).throw(
        OSError(errno.EDQUOT, "Disk quota exceeded", dst)) if str(dst).endswith(".onnx") else real(src, dst))
    code, _, err = cli("export", tmp_path / "run-loss.png" / "last.safetensors", "--format", "onnx",
                       "--out", tmp_path / "m.onnx")
    assert code == 1 and "the disk quota is exceeded" in err and not list(tmp_path.glob("*onnx*")), err


def test_out_under_a_regular_file(tmp_path, cli):
    (tmp_path / "file.txt").write_text("x")
    code, _, err = cli("train", *TINY, "--out", tmp_path / "file.txt" / "run")
    assert code == 1 and "cannot write" in err and "a parent path is a file" in err and "Traceback" not in err


def test_a_cache_that_cannot_be_written_only_warns(tmp_path, tiny_disk, cli, monkeypatch):
    monkeypatch.setenv("SQUEEZENET_CACHE", str(tiny_disk / "cache"))
    root = write_image_folder(tmp_path / "photos", per_class=30, size=300)  # 60 x 3 x 300 x 300 > 16 MB
    code, out, err = cli("train", "--dataset", "folder", "--data-dir", root, "--image-size", "300",
                         "--epochs", "1", "--batch-size", "4", "--out", tmp_path / "run", "--no-progress")
    assert code == 0, err
    assert re.search(r"warning: cannot cache the decoded images .*\(the disk is full.*decoding into memory", err), err
    assert not list((tiny_disk / "cache" / "decoded").glob("*"))  # nothing half-written left in the cache


def test_artifacts_honour_the_umask(tmp_path, cli):
    old = os.umask(0o027)
    try:
        assert cli("train", *TINY, "--out", tmp_path / "run")[0] == 0
    finally:
        os.umask(old)
    assert (tmp_path / "run" / "best.safetensors").stat().st_mode & 0o777 == 0o640


# ----------------------------------------------------------------------------- memory and bombs

def test_a_data_set_too_large_for_memory_fails_up_front(tmp_path, monkeypatch):
    from squeezenet.data import load_folder, store

    monkeypatch.setattr(store, "memory_available", lambda: 10_000)
    root = write_image_folder(tmp_path / "photos", per_class=2, size=40)
    with pytest.raises(SqueezeNetError, match="the decoded images need .* GB, more than the .* GB of memory"):
        load_folder(root, 64, cache=False)


def test_train_and_val_are_views_of_one_copy():
    from squeezenet.data import load_dataset, train_val_split

    full = load_dataset("shapes", size=200)
    train, val = train_val_split(full, 0.2, 0)
    assert train.images is full.images and val.images is full.images


def _limited(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python whose data segment is capped at 1.5 GB."""
    prelude = ("import resource; resource.setrlimit(resource.RLIMIT_DATA, (1_500_000_000, 1_500_000_000))\n")
    return subprocess.run([sys.executable, "-c", prelude + code], env={**os.environ, "PYTHONPATH": SRC},
                          capture_output=True, text=True, timeout=120)


def test_a_gzip_bomb_posing_as_fashion_mnist_stops_at_its_header(tmp_path):
    header = bytes([0, 0, 8, 3]) + struct.pack(">III", 60000, 28, 28)
    member = gzip.compress(b"\0" * (1 << 24), compresslevel=1)
    with open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:  # gzip members concatenate into one stream
        f.write(gzip.compress(header))
        for _ in range(256):  # 4 GB of pixels behind a 47 MB header
            f.write(member)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 60000)
                                                                         + bytes(60000)))
    r = _limited(f"from squeezenet.cli import main; import sys; sys.exit(main(['train', '--dataset', 'fashion-mnist', "
                 f"'--data-dir', '{tmp_path}', '--out', '{tmp_path / 'run'}']))")
    assert r.returncode == 1 and "truncated or corrupt" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_a_model_file_that_lies_about_its_sizes_is_refused(tmp_path, trained_run):
    """A compressed model (the C engine's model file) whose header or layers point past its end,
    or that is another format altogether, gets one clear message, from PyTorch's reader and the C engine's."""
    from squeezenet.checkpoint import load_checkpoint
    from squeezenet.errors import SqueezeNetError
    from squeezenet.lowering import lower

    model, meta = load_checkpoint(trained_run)
    good = bytearray(lower(model, meta))
    cases = {"truncated": good[:len(good) // 2], "old": b"SQZC2\n" + bytes(64)}
    lying = bytearray(good)
    lying[128 + 160 + 64:128 + 160 + 68] = (len(good) * 4).to_bytes(4, "little")  # layer 1's weights_off
    cases["offsets"] = lying
    for name, data in cases.items():
        (tmp_path / f"{name}.sqz").write_bytes(bytes(data))
        with pytest.raises(SqueezeNetError) as e:
            load_checkpoint(tmp_path / f"{name}.sqz")
        assert "Traceback" not in str(e.value) and str(tmp_path) in str(e.value), (name, e.value)


HOSTILE = [
    ({"class_names": 5}, "class_names must be"),
    ({"arch": None}, "lacks arch"),
    ({"model_kwargs": {"num_classes": 100_000_000}}, "differs from the 10 class names"),
    ({"model_kwargs": {"squeeze_ratio": 0.5, "num_classes": 10}}, "does not describe its weights"),
    ({"model_kwargs": {"exec": "os.system"}}, "model_kwargs may only hold"),
]


def test_hostile_checkpoint_metadata_is_refused_before_building(tmp_path, trained_run):
    from safetensors import safe_open

    with safe_open(str(trained_run / "best.safetensors"), framework="pt") as f:
        raw, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    files = []
    for i, (change, _) in enumerate(HOSTILE):
        meta = {k: json.loads(v) for k, v in raw.items() if k != "format"}
        for key, value in change.items():
            if value is None:
                meta.pop(key)
            elif isinstance(value, dict):
                meta[key] = {**meta[key], **value}
            else:
                meta[key] = value
        files.append(str(tmp_path / f"evil{i}.safetensors"))
        save_file(tensors, files[-1], {"format": raw["format"], **{k: json.dumps(v) for k, v in meta.items()}})
    # every file through the CLI in one memory-capped process: an exit code and a message each
    r = _limited("import contextlib, io, json\nfrom squeezenet.cli import main\nout = []\n"
                 f"for f in {files!r}:\n"
                 "    err = io.StringIO()\n"
                 "    with contextlib.redirect_stderr(err):\n"
                 "        out.append((main(['eval', f]), err.getvalue()))\n"
                 "print(json.dumps(out))")
    results = json.loads(r.stdout.splitlines()[-1])
    for (code, err), (_, message) in zip(results, HOSTILE):
        assert code == 1 and message in err and "Traceback" not in err, err


# ----------------------------------------------------------------------------- the decode cache

def test_the_decode_cache_follows_the_files_and_its_own_record(tmp_path, monkeypatch):
    from squeezenet.data import load_folder, store

    root = write_image_folder(tmp_path / "photos", per_class=4, size=24)
    first = load_folder(root, 24)
    path = root / "cat" / "0.png"
    stat = path.stat()
    Image.new("RGB", (24, 24), (1, 2, 3)).save(path)  # rewritten ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... with its old mtime kept
    second = load_folder(root, 24)
    assert torch.equal(second.uint8(torch.tensor([0]))[0, :, 0, 0], torch.tensor([1, 2, 3], dtype=torch.uint8))
    assert not torch.equal(first.images, second.images)
    files = [(p, 0) for p in sorted(root.rglob("*.png"))]
    key = store.store_key(root, files, 24, 3)
    monkeypatch.setattr(store, "DECODER_VERSION", store.DECODER_VERSION + 1)  # a new decoder never reads old pixels
    assert key != store.store_key(root, files, 24, 3)
    monkeypatch.setattr(store, "DECODER_VERSION", store.DECODER_VERSION - 1)
    expected = second.images.clone()
    del first, second  # their memory maps read the file damaged below (reading past its end: SIGBUS)
    folder = max(store.stores_dir().glob("[0-9a-f]*"), key=lambda p: p.stat().st_mtime)
    with open(folder / "images.u8", "r+b") as f:  # damaged: shorter than its record says
        f.truncate(100)
    with pytest.warns(UserWarning, match="does not match its record: decoding again"):
        third = load_folder(root, 24)
    assert torch.equal(third.images, expected)


def test_strict_holds_with_a_warm_cache(tmp_path):
    from squeezenet.data import load_folder

    root = write_image_folder(tmp_path / "photos", per_class=4, size=24)
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        load_folder(root, 24)  # warms the cache
    with pytest.raises(SqueezeNetError, match="unreadable image"):
        load_folder(root, 24, strict=True)


def test_the_cache_is_capped_and_can_be_listed_and_cleared(tmp_path, cli, monkeypatch):
    from squeezenet.data import load_folder, store

    for i in range(3):
        load_folder(write_image_folder(tmp_path / f"set{i}", per_class=4, size=24), 24)
    assert len(store.list_stores()) == 3
    code, out, _ = cli("cache", "list")
    assert code == 0 and "3 decoded data sets" in out and "8x3x24x24" in out
    monkeypatch.setenv("SQUEEZENET_CACHE_MAX_GB", str(2 * 8 * 3 * 24 * 24 / 1e9))  # room for two
    load_folder(write_image_folder(tmp_path / "set3", per_class=4, size=24), 24)
    assert len(store.list_stores()) == 2
    code, out, _ = cli("cache", "clear")
    assert code == 0 and "removed" in out and store.list_stores() == []


# ----------------------------------------------------------------------------- names and folders

def test_odd_file_names_hidden_folders_and_links(tmp_path, cli):
    root = write_image_folder(tmp_path / "photos", per_class=4, size=24)
    Image.new("RGB", (24, 24), (200, 0, 0)).save(os.fsdecode(bytes(root / "cat") + b"/caf\xe9-latin1.png"))
    for hidden in (".thumbnails", "@eaDir"):
        (root / "dog" / hidden).mkdir()
        Image.new("RGB", (24, 24)).save(root / "dog" / hidden / "thumb.png")
    (root / ".hidden-class").mkdir()
    elsewhere = write_image_folder(tmp_path / "elsewhere", classes=("x",), per_class=3, size=24)
    (root / "dog" / "linked").symlink_to(elsewhere / "x", target_is_directory=True)  # a folder link: not followed
    (root / "cat" / "file-link.png").symlink_to(root / "cat" / "0.png")  # a file link: read
    code, out, err = cli("train", "--dataset", "folder", "--data-dir", root, "--image-size", "24", "--small-input",
                         "--epochs", "1", "--batch-size", "4", "--out", tmp_path / "run", "--no-progress")
    assert code == 0 and "Traceback" not in err, err
    assert "2 hidden" in err and "1 linked folders" in err
    assert "cat:" not in out  # no class named after the hidden folder
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["dataset"] == "folder"
    code, out, err = cli("predict", tmp_path / "run", os.fsdecode(bytes(root / "cat") + b"/caf\xe9-latin1.png"))
    assert code == 0 and "caf\\xe9-latin1.png" in out, err


# ----------------------------------------------------------------------------- weights and metrics

def test_nan_weights_after_a_finite_loss_are_never_saved(tmp_path, cli, monkeypatch):
    import squeezenet.train as training

    real = training.create_optimizer

    def poisoning(cfg, model):
        opt, count = real(cfg, model), [0]

        def poison(*_):
            count[0] += 1
            if count[0] == 4:  # in epoch 2: a BatchNorm statistic turns NaN, the loss stays finite
                model.features[1].running_var.fill_(float("nan"))
        opt.register_step_post_hook(poison)
        return opt

    monkeypatch.setattr(training, "create_optimizer", poisoning)
    run = tmp_path / "run"
    code, _, err = cli("train", "--train-size", "96", "--batch-size", "32", "--epochs", "2", "--val-fraction", "0",
                       "--out", run, "--no-progress")
    assert code == 1 and "the weights hold NaN or inf after epoch 2" in err and "epoch 1" in err, err
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in load_file(run / "last.safetensors").values())


def test_metrics_are_strict_json_even_with_a_non_finite_value(tmp_path):
    from squeezenet.rundir import write_metrics

    write_metrics([{"epoch": 1, "train_loss": float("inf"), "val_acc": float("nan")}], tmp_path)
    row = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert row == {"epoch": 1, "train_loss": None, "val_acc": None}


# ----------------------------------------------------------------------------- downloads

def test_a_download_that_does_not_match_its_checksum_is_not_kept(tmp_path, monkeypatch):
    import io
    import urllib.request

    from squeezenet.data import readers

    assert all(u.startswith("https://") for u in (readers.FASHION_URL, readers.CIFAR_URL))
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"a short body"))
    with pytest.raises(SqueezeNetError, match="Fashion-MNIST not found"):
        readers.load_fashion_mnist(tmp_path, "train")
    with pytest.raises(SqueezeNetError, match="does not match its published SHA-256"):
        readers.verified_download(readers.FASHION_URL.format(file="x"), tmp_path / "x.gz", "0" * 64)
    assert list(tmp_path.iterdir()) == []  # nothing moved into place, no partial file
    with pytest.raises(SqueezeNetError, match="does not match its published SHA-256"):
        readers.download_cifar10(tmp_path / "c10")
    assert list((tmp_path / "c10").iterdir()) == []  # no half-extracted batches to find later


# ----------------------------------------------------------------------------- everything else

def test_unexpected_errors_are_one_line_unless_debug(tmp_path, cli, monkeypatch, trained_run):
    import squeezenet.evaluate as evaluate

    monkeypatch.setattr(evaluate, "evaluate_raw", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom\ndetail")))
    code, _, err = cli("eval", trained_run, "--split", "val")
    assert code == 1 and err.strip() == "squeezenet eval: error: unexpected RuntimeError: boom (run with --debug " \
                                        "for the traceback; please report it)"
    with pytest.raises(RuntimeError):
        cli("--debug", "eval", trained_run, "--split", "val")
    monkeypatch.setattr(evaluate, "evaluate_raw", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    code, _, err = cli("eval", trained_run, "--split", "val")
    assert code == 1 and "out of memory" in err and "--batch-size" in err


def test_predict_reads_folders_in_batches(tmp_path, cli, trained_run, monkeypatch):
    import squeezenet.predict as predict
    from squeezenet.data import make_shapes

    shapes = make_shapes(10, 32, seed=3)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for i in range(10):
        folder = tmp_path / "imgs" / ("sub" if i % 2 else "")
        Image.fromarray(shapes.images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    calls = []
    real = predict.load_image_files
    monkeypatch.setattr(predict, "load_image_files", lambda paths, *a: calls.append(len(paths)) or real(paths, *a))
    code, out, err = cli("predict", trained_run, tmp_path / "imgs", "--json", tmp_path / "p.json", "--runtime", "torch")
    assert code == 0, err
    assert len(json.loads((tmp_path / "p.json").read_text())["predictions"]) == 10
    assert max(calls) <= predict.BATCH and sum(calls) == 10


@pytest.mark.parametrize("argv, message", [
    (["predict", "RUN", "IMG", "--top-k", "-1"], "expected a whole number of at least 1"),
    (["train", "--train-size", "-5"], "--train-size must be at least 1"),
    (["train", "--dropout", "2"], "--dropout must be in [0, 1)"),
    (["train", "--recipe", "nope"], "unknown recipe 'nope'"),
])
def test_bad_values_exit_2_with_a_message(cli, trained_run, tmp_path, argv, message):
    argv = [str(trained_run) if a == "RUN" else str(tmp_path / "x.png") if a == "IMG" else a for a in argv]
    code, _, err = cli(*argv, *(["--out", tmp_path / "run"] if argv[0] == "train" else []))
    assert code == 2 and message in err and "Traceback" not in err, err
