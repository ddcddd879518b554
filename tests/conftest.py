import multiprocessing
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("SQUEEZENET_CACHE", "/tmp/squeezenet-test-cache")
torch.set_num_threads(2)
import torch._dynamo  # noqa: E402,F401  # the optimizers import it on first use: once here, not in every forked CLI


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZENET_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from squeezenet.cli import main

    def run(*argv):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse and parser.exit
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _forked_main(argv, env, out_path, err_path):
    os.environ.update(env)
    os.environ["OMP_NUM_THREADS"] = "1"  # one thread: the same arithmetic in every run
    torch.set_num_threads(1)
    for fd, path in ((1, out_path), (2, err_path)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
    from squeezenet.cli import main

    code = main([str(a) for a in argv])
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(code)


def run_forked(*argv, env=None, timeout=120):
    """The CLI in a real process, forked from this one (torch already imported: no start-up cost):
    (exit code, -9 when SIGKILLed; stdout; stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        child = multiprocessing.get_context("fork").Process(target=_forked_main, args=(argv, env or {}, out, err))
        child.start()
        child.join(timeout)
        return child.exitcode, out.read_text(), err.read_text()


def write_image_folder(root, classes=("cat", "dog"), per_class=6, size=40, seed=0):
    """A class_name/image tree with a learnable signal: class i is bright in channel i."""
    rng = np.random.default_rng(seed)
    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            arr[..., i % 3] += 150
            Image.fromarray(arr).save(root / name / f"{j}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One short shapes run shared by eval/predict/export tests."""
    from squeezenet.config import make_config
    from squeezenet.train import train

    out = tmp_path_factory.mktemp("run") / "shapes"
    cfg = make_config({"epochs": 2, "train_size": 1200, "out": str(out), "progress": False})
    train(cfg)
    return out
