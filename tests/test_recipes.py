"""Each real-data recipe, run for a few hundred steps on a small subset: the loss falls and
accuracy rises well above chance (10%). Uses the real files where this machine has them."""

import importlib.util
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from squeezenet.config import make_config
from squeezenet.recipes import RECIPES
from squeezenet.train import train

CIFAR_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.tar.gz"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def short_run(recipe: str, out: Path, **overrides) -> list[dict]:
    # batch 32 (vs 256) with the peak lr scaled linearly: 135 steps in 3 epochs of 1,440 images
    lr = RECIPES[recipe]["lr"] * 32 / RECIPES[recipe]["batch_size"]
    cfg = make_config({"recipe": recipe, "train_size": 1600, "epochs": 3, "batch_size": 32, "lr": lr,
                       "val_fraction": 0.1, "out": str(out), "progress": False, **overrides})
    train(cfg)
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def check(rows: list[dict]) -> None:
    assert sum(r["seconds"] * r["images_per_s"] for r in rows) / 32 >= 120  # steps taken
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_acc"] > 30  # chance is 10%


@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_recipe_learns(tmp_path):
    check(short_run("fashion-mnist", tmp_path / "fm"))


@pytest.mark.skipif(not CIFAR_TAR.is_file(), reason="../shared/data/cifar10-jpeg-train.tar.gz not here")
def test_cifar10_recipe_learns(tmp_path):
    root = tmp_path / "cifar"
    taken: dict[str, int] = {}
    with tarfile.open(CIFAR_TAR) as t:  # 160 images per class from the real JPEG copy
        for m in t:
            cls = Path(m.name).parent.name
            if m.isfile() and taken.get(cls, 0) < 160:
                taken[cls] = taken.get(cls, 0) + 1
                t.extract(m, root, filter="data")
    check(short_run("cifar10", tmp_path / "c10", data_dir=str(root)))


IMAGEWOOF_TAR = CIFAR_TAR.parent / "imagewoof2-160.tar"


@pytest.mark.skipif(not IMAGEWOOF_TAR.is_file(), reason="../shared/data/imagewoof2-160.tar not here")
def test_folder_recipe_learns_on_real_photos(tmp_path):
    """The photos recipe (128 px crops of 146 px images, Muon) on 60 Imagewoof photos per breed."""
    root = tmp_path / "woof"
    taken: dict[str, int] = {}
    with tarfile.open(IMAGEWOOF_TAR) as t:
        for m in t:
            parts = Path(m.name).parts
            if m.isfile() and "train" in parts and taken.get(parts[-2], 0) < 60:
                taken[parts[-2]] = taken.get(parts[-2], 0) + 1
                t.extract(m, root, filter="data")
    cfg = make_config({"recipe": "folder", "data_dir": str(next(root.rglob("train"))), "epochs": 5,
                       "batch_size": 32, "val_fraction": 0.2, "out": str(tmp_path / "run"), "progress": False})
    train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] and rows[-1]["val_count"] == 120
    assert max(r["val_acc"] for r in rows) > 20  # 10 dog breeds: chance is 10%


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RUNS = BENCHMARKS / "results" / "runs.jsonl"
REQUIRED = ("id", "dataset", "recipe", "group", "date", "commit", "machine", "command", "config", "params",
            "train_seconds", "epochs", "images_per_s", "evals", "curve")
# What a run trains with, as opposed to for how long and on which images (the final fit or a
# validation split, the time budget): a saved run is "of the recipe" when these match it.
MODEL_OPTIMIZER = ("arch", "image_size", "small_input", "batch_norm", "bypass", "final_relu", "dropout",
                   "squeeze_ratio", "pool_after", "stem_channels", "optimizer", "batch_size", "lr", "momentum",
                   "weight_decay", "muon_lr", "muon_momentum", "schedule", "warmup_epochs", "label_smoothing")


def saved_runs() -> list[dict]:
    return [json.loads(line) for line in RUNS.read_text().splitlines() if line.strip()]


def test_saved_runs_parse_and_have_every_field():
    rows = saved_runs()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "run ids are unique"
    for r in rows:
        assert not [k for k in REQUIRED if k not in r], r["id"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["date"]), r["id"]
        for e in r["evals"]:
            assert e["split"] in ("val", "holdout", "test") and e["views"] and 0 <= e["top1"] <= 100, (r["id"], e)
        if r["curve"]:
            assert (RUNS.parent / r["curve"]).is_file(), r["id"]


def test_cifar10_recipe_is_backed_by_saved_runs():
    """The recipe's values are the ones saved runs trained with: a run with a validation split and
    a final fit, both scored on the holdout with the recipe's own test-time views."""
    recipe = RECIPES["cifar10"]
    keys = [k for k in MODEL_OPTIMIZER if k in recipe]
    assert "optimizer" in keys and "squeeze_ratio" in keys
    views = f"6 views {recipe['tta_shift']} px"
    ours = [r for r in saved_runs() if r["recipe"] == "cifar10" and r["config"]
            and all(r["config"].get(k, "unset") == recipe[k] for k in keys)]
    on_holdout = [r for r in ours if any(e["split"] == "holdout" and e["views"] == views for e in r["evals"])]
    assert {r["config"]["val_fraction"] == 0 for r in on_holdout} == {False, True}, [r["id"] for r in ours]


def test_results_md_tables_are_made_from_the_saved_runs():
    r = subprocess.run([sys.executable, str(BENCHMARKS / "tables.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_record_appends_a_finished_run(tmp_path):
    """benchmarks/record.py: one row from a run directory and an eval file, with the evals of the
    per-epoch validation beside it."""
    spec = importlib.util.spec_from_file_location("record", BENCHMARKS / "record.py")
    record = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(record)
    run = tmp_path / "run"
    run.mkdir()
    config = {"recipe": "cifar10", "dataset": "cifar10", "val_fraction": 0.1111, "time_budget": 600.0,
              "tta": True, "tta_shift": 2, "seed": 0, "out": str(run)}
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": i, "train_acc": 50.0 + i, "val_acc": 60.0 + i, "val_top5": 95.0, "val_count": 5000, "val_loss": 1.0,
         "images_per_s": 500.0, "seconds": 200.0}) + "\n" for i in (1, 2, 3)))
    (tmp_path / "e.json").write_text(json.dumps({"split": "test", "tta": True, "tta_shift": 2, "top1": 70.5,
                                                 "top5": 98.0, "count": 5000, "loss": 0.9}))
    runs = tmp_path / "results" / "runs.jsonl"
    row = record.record(run, "cifar10-test-run", "tests", [{"file": str(tmp_path / "e.json")}],
                        command="squeezenet train --recipe cifar10", curve=True, runs=runs)
    assert [json.loads(x)["id"] for x in runs.read_text().splitlines()] == ["cifar10-test-run"]
    assert not [k for k in REQUIRED if k not in row]
    assert (row["train_seconds"], row["epochs"], row["images_per_s"]) == (600.0, 3, 500.0)
    assert row["epochs_worth"] == round(3 * 200 * 500 / 40_000, 1)
    assert {"split": "holdout", "views": "6 views 2 px", "top1": 70.5} == \
        {k: row["evals"][-1][k] for k in ("split", "views", "top1")}
    assert row["evals"][0]["epoch"] == 3 and row["evals"][0]["views"] == "flip"  # the last epoch's val
    assert (runs.parent / "curves" / "cifar10-test-run.jsonl").is_file()
    with pytest.raises(SystemExit):  # ids are unique
        record.record(run, "cifar10-test-run", "tests", runs=runs, command="x")
