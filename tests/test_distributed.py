"""``torchrun --nproc-per-node=2 -m squeezenet train`` on CPU (gloo) computes what one process
computes with the same global batch, writes its artifacts once, and counts every validation
sample exactly once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from squeezenet import create_model

SRC = str(Path(__file__).resolve().parents[1] / "src")
# Per-rank randomness differs from one process's (dropout masks, augmentation draws, BatchNorm
# statistics of half a batch), so those are off; a small LR keeps 14 steps far from chaos, where
# float summation order alone (one 32-image batch vs two 16-image halves) would be amplified.
ARGS = ["train", "--dataset", "shapes", "--train-size", "250", "--val-fraction", "0.1",
        "--batch-size", "32", "--epochs", "2", "--no-batch-norm", "--dropout", "0", "--augment", "none",
        "--bypass", "none", "--final-relu", "--lr", "0.002", "--amp", "off", "--no-progress"]
VAL_SIZE = 25  # odd: a padding sampler would hand one rank a duplicate


def run(cmd, out):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*cmd, *ARGS, "--out", str(out)], env=env, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    one = run([sys.executable, "-m", "squeezenet"], tmp_path / "one")
    two = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "squeezenet"], tmp_path / "two")
    assert "cpu x2" in two.stdout and "cpu x1" in one.stdout

    a, b = load_file(tmp_path / "one" / "last.safetensors"), load_file(tmp_path / "two" / "last.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    torch.manual_seed(0)  # the trainer's initial weights: training moved them far more than 1e-5
    init = create_model("squeezenet1_1", num_classes=10, dropout=0, small_input=True).state_dict()
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-3

    # Artifacts and log lines come from rank 0 only: one record per epoch, one summary line each.
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert two.stdout.count("epoch   1/2") == 1 and two.stdout.count("done: best") == 1
    assert len((tmp_path / "two" / "metrics.csv").read_text().splitlines()) == 3
    assert not [p for p in (tmp_path / "two").iterdir() if p.name.startswith(".")]  # no stray temp files
    # Validation counts every sample once (no padding duplicates), and agrees with one process.
    one_records = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_count"] for r in records] == [VAL_SIZE, VAL_SIZE]
    assert json.loads((tmp_path / "two" / "best_val.json").read_text())["count"] == VAL_SIZE
    for r1, r2 in zip(one_records, records):
        assert abs(r1["train_loss"] - r2["train_loss"]) < 1e-4 and abs(r1["val_loss"] - r2["val_loss"]) < 1e-4
        assert r1["val_acc"] == r2["val_acc"]
