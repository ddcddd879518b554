"""The run directory: one object owns what ``train`` writes and reads back in ``--out``.

It holds a lock for the run's life (a second trainer on the same directory is refused), writes
each epoch's artifacts (checkpoints, metrics, plots, the trainer state last, as the commit point),
and restores that state on ``--resume``. Only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_state, save_checkpoint, save_state
from .data import image_hashes
from .errors import SqueezeNetError
from .files import atomic_path, mkdir, remove_stale_temporaries, write_text_atomic
from .plots import plot_confusion, plot_curves
from .runs import RunMeta

log = logging.getLogger("squeezenet")
STATE = "last.state.pt"
HASHES = "train_hashes.npy"


def train_hashes(checkpoint: str | Path) -> np.ndarray | None:
    """The content hashes of a run's training images, kept beside its checkpoints (None: absent)."""
    path = Path(checkpoint)
    path = (path if path.is_dir() else path.parent) / HASHES
    try:
        return np.load(path, allow_pickle=False) if path.is_file() else None
    except (OSError, ValueError):
        return None


@dataclass
class Progress:
    """Where a run stands: completed epochs, steps done in the next one, and its history."""

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    partial: dict = field(default_factory=dict)  # the interrupted epoch's running sums
    spent: float = 0.0

    @property
    def best_acc(self) -> float:
        return max((h["val_acc"] for h in self.history if h["val_acc"] is not None), default=-1.0)


class RunDir:
    def __init__(self, path: Path, writer: bool):
        self.path, self.writer = path, writer
        self._lock_fd: int | None = None
        self._tensorboard = None

    @classmethod
    def open(cls, cfg, writer: bool, barrier=lambda: None) -> RunDir:
        """The directory of a new run (``--out``) or of one to continue (``--resume``), checked on
        every rank (so all stop together) before the writer locks and prepares it."""
        run = cls(Path(cfg.resume or cfg.out or time.strftime("runs/%Y%m%d-%H%M%S")), writer)
        holds_run = (run.path / STATE).exists()
        if not cfg.resume and holds_run:
            raise SqueezeNetError(f"{run.path} already holds a run: pass --resume {run.path} to continue it, "
                                  f"or choose another --out")
        if not cfg.resume and run.path.is_dir() and not (run.path / "config.json").exists() \
                and any(p for p in run.path.iterdir() if p.name != "tensorboard"):
            raise SqueezeNetError(f"{run.path} is not empty and is not a run directory: choose another --out "
                                  f"(an empty or new folder)")
        barrier()  # every rank has looked before the writer adds files (else a late rank sees them)
        if writer:
            mkdir(run.path)
            run._lock()
            for stale in remove_stale_temporaries(run.path):  # a killed write of ours; never read
                log.debug("removed %s", stale)
            run._write_config(cfg)
            if cfg.tensorboard:
                run._tensorboard = _tensorboard_writer(run.path / "tensorboard")
        return run

    def _write_config(self, cfg) -> None:
        """config.json: every setting of the run; a resume rewrites it only where a setting changed."""
        values = dataclasses.asdict(cfg)
        path = self.path / "config.json"
        if cfg.resume and path.exists():
            passing = {"resume", "stop_after", "progress", "out"}  # this invocation's, not the run's
            try:
                before = json.loads(path.read_text())
            except (OSError, ValueError):
                before = {}
            if {k: v for k, v in before.items() if k not in passing} == {k: v for k, v in values.items()
                                                                           if k not in passing}:
                return
        write_text_atomic(path, json.dumps(values, indent=2) + "\n")

    def _lock(self) -> None:
        """flock on the directory itself: released by the kernel when this process ends, however."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SqueezeNetError(f"another `squeezenet train` is writing to {self.path}: wait for it to end, "
                                  f"or choose another --out") from None
        self._lock_fd = fd

    def check_training_images(self, data, resumed: bool) -> None:
        """Keep the training images' content hashes (so that ``eval`` can tell test images that
        are training images); on resume, refuse training images that changed since the start."""
        if not hasattr(data, "images"):
            return
        hashes = image_hashes(data)
        if resumed:
            before = train_hashes(self.path)
            if before is not None and not np.array_equal(np.sort(before), np.sort(hashes)):
                raise SqueezeNetError(f"the training images differ from those {self.path} started with "
                                      f"({len(before):,} then, {len(hashes):,} now, "
                                      f"{int(np.isin(hashes, before).sum()):,} in common): resuming would "
                                      f"train on other data. Restore them, or start a new run")
        if self.writer and (not resumed or train_hashes(self.path) is None):
            with atomic_path(self.path / HASHES) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, hashes, allow_pickle=False)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    def resume(self, objects: dict, budget=None) -> Progress:
        """Load the last state into ``objects`` (name -> module/optimizer/... with load_state_dict)."""
        if not (self.path / STATE).exists():
            if (self.path / "config.json").exists() and objects:
                log.info("%s has no checkpoint yet (it stopped during epoch 1): starting it over", self.path)
            return Progress()
        state = load_state(self.path / STATE)
        for name, obj in objects.items():
            if obj is not None and name in state:
                obj.load_state_dict(state[name])
        progress = Progress(int(state["epoch"]), int(state.get("step", 0)), list(state["history"]),
                            dict(state.get("partial", {})), float(state.get("spent", 0.0)))
        if "rng" in state:
            torch.set_rng_state(state["rng"])
        if budget is not None:
            budget.spent = progress.spent or sum(h["seconds"] for h in progress.history)
        return progress

    def save_state(self, progress: Progress, objects: dict, budget=None, mid_epoch: bool = False) -> None:
        """The trainer state, written last in an epoch: the commit point. A crash before it re-runs
        the epoch on resume, which rewrites every other file with the same values."""
        if not self.writer:
            return
        state = {"epoch": progress.epoch, "history": progress.history,
                 **{name: obj.state_dict() for name, obj in objects.items() if obj is not None}}
        if budget is not None:
            state["spent"] = budget.spent
        if mid_epoch:
            state.update(step=progress.step, partial=progress.partial, rng=torch.get_rng_state())
        save_state(self.path / STATE, state)

    def end_epoch(self, progress: Progress, record: dict, val: dict | None, model, meta: RunMeta) -> None:
        """Checkpoints (after checking the weights are finite), metrics, plots."""
        if not self.writer:
            return
        bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise SqueezeNetError(f"the weights hold NaN or inf after epoch {record['epoch']} ({bad[0]}, ...) "
                                  f"though every loss was finite; nothing of this epoch was saved, "
                                  f"{_kept(self.path, record['epoch'] - 1)}. Lower --lr or add --grad-clip 1")
        best_before = progress.best_acc
        progress.history.append(record)
        meta = meta.replace(epoch=record["epoch"], val_acc=val["top1"] if val else None)
        save_checkpoint(self.path / "last.safetensors", model, meta)
        improved = val is not None and record["val_acc"] > best_before  # rounded, as a resume reads it
        if improved or val is None:  # the final fit (no val split) ships its newest weights
            save_checkpoint(self.path / "best.safetensors", model, meta)
        if improved:
            write_text_atomic(self.path / "best_val.json", json.dumps(
                {"epoch": record["epoch"], **{k: val[k] for k in ("top1", "top5", "loss", "count")},
                 "per_class": val["per_class"], "confusion": val["confusion"]}) + "\n")
        write_metrics(progress.history, self.path)
        plot_curves(progress.history, self.path)
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, record["epoch"])
            self._tensorboard.flush()

    def finish(self, progress: Progress, title: str, classes: list[str]) -> str:
        """The closing line; with a validation split also the best epoch's confusion matrix."""
        total = sum(h["seconds"] for h in progress.history)
        if not (self.path / "best_val.json").exists():
            return (f"done: {len(progress.history)} epochs, training time {total:.0f}s -> {self.path}")
        best = json.loads((self.path / "best_val.json").read_text())
        if self.writer:
            plot_confusion(best["confusion"], classes, self.path / "confusion.png",
                           f"{title} validation (epoch {best['epoch']}, top-1 {best['top1']:.2f}%)")
        return (f"done: best val top-1 {best['top1']:.2f}% (epoch {best['epoch']}), last "
                f"{progress.history[-1]['val_acc']:.2f}%, training time {total:.0f}s -> {self.path}")


def _kept(path: Path, epoch: int) -> str:
    return f"the last good checkpoint (epoch {epoch}) is kept in {path}" if epoch else "no checkpoint yet"


def diverged_message(cfg, path: Path, epoch: int, step: int, loss: float) -> str:
    return (f"training diverged at epoch {epoch + 1}, step {step + 1}: the loss is {loss}; "
            f"{_kept(path, epoch)}. Lower --lr (now {cfg.lr}) or add --grad-clip 1")


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_metrics(history: list[dict], out: Path) -> None:
    """metrics.jsonl (strict JSON: a non-finite value is written as null) and metrics.csv."""
    rows = [{k: _finite(v) for k, v in h.items()} for h in history]
    keys = list(rows[0])
    write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))
    lines = [",".join(keys)] + [",".join("" if r.get(k) is None else str(r[k]) for k in keys) for r in rows]
    write_text_atomic(out / "metrics.csv", "\n".join(lines) + "\n")


def _tensorboard_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SqueezeNetError("--tensorboard needs the tensorboard package: "
                              "pip install 'squeezenet[tensorboard]'") from None
    return SummaryWriter(str(path))
