"""Crashes: SIGKILL at several points, then ``--resume``, gives the uninterrupted run's weights and
metrics exactly; a diverging loss stops training promptly and keeps the last good checkpoint."""

import json
import signal
from pathlib import Path

import torch
from conftest import run_forked
from safetensors.torch import load_file

# The shapes recipe (BatchNorm, flip augmentation, dropout), tiny: 3 epochs of 3 steps.
ARGS = ["--train-size", "128", "--batch-size", "32", "--epochs", "3", "--lr", "0.02", "--no-progress"]
TIMING = ("seconds", "images_per_s")


def train(*argv, kill_at=None) -> int:
    """The CLI's exit code in a forked child, -9 when SIGKILLed."""
    return run_forked("train", *argv, env={"SQUEEZENET_KILL_AT": kill_at} if kill_at else None)[0]


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_tensors(a: Path, b: Path):
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta), f"{a.name} differs"


def test_sigkill_at_many_points_then_resume_equals_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    assert train(*ARGS, "--out", reference) == 0

    run = tmp_path / "crashed"
    kill_points = [  # in order of when they happen
        "before-rename:last.safetensors",  # epoch 1, before any checkpoint exists
        "epoch2-step2",                    # in the middle of an epoch
        "before-rename:last.state.pt",     # writing epoch 2's checkpoint (temp file complete, not renamed)
        "after-rename:last.state.pt",      # just after epoch 2's checkpoint
        "before-rename:metrics.jsonl",     # epoch 3: weights written, metrics and state not yet
    ]
    for i, point in enumerate(kill_points):
        code = train(*ARGS, "--out", run, kill_at=point) if i == 0 else train("--resume", run, kill_at=point)
        assert code == -signal.SIGKILL, point
    assert torch.load(run / "last.state.pt", weights_only=True)["epoch"] == 2
    assert train("--resume", run) == 0

    for name in ("last.safetensors", "best.safetensors"):
        assert_same_tensors(run / name, reference / name)
    assert metrics(run) == metrics(reference) and len(metrics(run)) == 3
    assert json.loads((run / "best_val.json").read_text()) == json.loads((reference / "best_val.json").read_text())
    # Killed writes left only temporary files, never a half-written real one; resume removed them.
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference.iterdir())


def _poison_lr(state_path: Path, lr: float):
    """Make the next epoch diverge: the saved optimizer/scheduler state carries an absurd LR."""
    state = torch.load(state_path, weights_only=True)
    for group in state["optimizer"]["param_groups"]:
        group["lr"] = group["initial_lr"] = lr
    state["scheduler"]["base_lrs"] = [lr] * len(state["scheduler"]["base_lrs"])
    state["scheduler"]["_last_lr"] = [lr] * len(state["scheduler"]["_last_lr"])
    torch.save(state, state_path)


def test_nan_loss_stops_at_once_with_a_clear_message(tmp_path, cli):
    out = tmp_path / "run"
    code, _, err = cli("train", *ARGS, "--lr", "1e9", "--out", out)
    assert code == 1 and "Traceback" not in err
    assert "training diverged at epoch 1, step" in err and "no checkpoint yet" in err
    assert "Lower --lr (now 1000000000.0)" in err
    step = int(err.split("step ")[1].split(":")[0])
    assert step <= 3  # promptly: within a few steps, not at the end of the epoch
    assert not (out / "last.safetensors").exists()


def test_nan_loss_keeps_the_last_good_checkpoint(tmp_path, cli):
    out = tmp_path / "run"
    assert cli("train", *ARGS, "--stop-after", "1", "--out", out)[0] == 0
    good = {name: (out / name).read_bytes() for name in ("last.safetensors", "best.safetensors",
                                                         "metrics.jsonl")}
    _poison_lr(out / "last.state.pt", 1e9)
    state_before = (out / "last.state.pt").read_bytes()
    code, _, err = cli("train", "--resume", out)
    assert code == 1 and "Traceback" not in err
    assert "training diverged at epoch 2, step" in err
    assert f"the last good checkpoint (epoch 1) is kept in {out}" in err
    assert all((out / name).read_bytes() == data for name, data in good.items())
    assert (out / "last.state.pt").read_bytes() == state_before
