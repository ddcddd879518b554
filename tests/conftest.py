import os

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
