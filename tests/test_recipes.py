"""Each real-data recipe, run for a few hundred steps on a small subset: the loss falls and
accuracy rises well above chance (10%). Uses the real files where this machine has them."""

import json
import tarfile
from pathlib import Path

import pytest

from squeezenet.recipes import RECIPES
from squeezenet.train import make_config, train

CIFAR_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.tar.gz"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def short_run(recipe: str, out: Path, **overrides) -> list[dict]:
    # batch 48 (vs 256) with the peak lr scaled linearly: about 300 steps in 4 epochs of 4,000 images
    lr = RECIPES[recipe]["lr"] * 48 / RECIPES[recipe]["batch_size"]
    cfg = make_config({"recipe": recipe, "train_size": 4000, "epochs": 4, "batch_size": 48, "lr": lr,
                       "out": str(out), "progress": False, **overrides})
    train(cfg, log=lambda *a, **k: None)
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def check(rows: list[dict]) -> None:
    assert sum(r["seconds"] * r["images_per_s"] for r in rows) / 48 >= 250  # steps taken
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_acc"] > 30  # chance is 10%


@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_recipe_learns(tmp_path):
    check(short_run("fashion-mnist", tmp_path / "fm"))


@pytest.mark.skipif(not CIFAR_TAR.is_file(), reason="../shared/data/cifar10-jpeg-train.tar.gz not here")
def test_cifar10_recipe_learns(tmp_path):
    root = tmp_path / "cifar"
    taken: dict[str, int] = {}
    with tarfile.open(CIFAR_TAR) as t:  # 450 images per class from the real JPEG copy
        for m in t:
            cls = Path(m.name).parent.name
            if m.isfile() and taken.get(cls, 0) < 450:
                taken[cls] = taken.get(cls, 0) + 1
                t.extract(m, root, filter="data")
    check(short_run("cifar10", tmp_path / "c10", data_dir=str(root)))


def test_cifar10_recipe_is_backed_by_saved_runs():
    """The recipe's values are the ones its saved budget runs trained with: a run with a validation
    split and a final fit, both scored on the holdout (benchmarks/budget_table.py reads them)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "budget_table.py"
    spec = importlib.util.spec_from_file_location("budget_table", path)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    rows = table.runs(path.parent / "results")
    now = [r for r in rows if not r["change"]]
    assert {r["final_fit"] for r in now} == {False, True}, [r["run"] for r in now]
    for r in now:
        view = f"test 6 views {RECIPES['cifar10']['tta_shift']} px"
        assert r["accuracy"][view] is not None, (r["run"], view)
    assert "| `cifar10_budget_sr25` | optimizer sgd, erase 0.0 |" in table.markdown(rows)
