"""Append one finished training run to benchmarks/results/runs.jsonl, the table of every run that
benchmarks/RESULTS.md quotes (benchmarks/tables.py makes its tables from it).

    python benchmarks/record.py RUN_DIR --id cifar10-muon-final-s3 --group cifar10-budget \\
        --eval split=holdout,views=6v2px,file=e.json [--eval ...] [--command "squeezenet train ..."] \\
        [--note "..."] [--curve]

RUN_DIR is a `squeezenet train --out` directory: its config.json and metrics.jsonl give the
settings, the epochs, the seconds of training and the images per second; its best_val.json (the
best epoch on the validation split) and the last epoch's validation score become evals beside the
`squeezenet eval --json` files given with --eval. ``split`` and ``views`` default to what the eval
file says (a CIFAR-10 "test" split is the holdout of benchmarks/make_cifar_holdout.py). --curve
also keeps metrics.jsonl as benchmarks/results/curves/ID.jsonl. Without --command the train
command is rebuilt from the config: the recipe plus every flag whose value differs from it.
The row records today's date, `git rev-parse --short HEAD` and this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "runs.jsonl"
REQUIRED = ("id", "dataset", "recipe", "group", "date", "commit", "machine", "command", "config", "params",
            "train_seconds", "epochs", "images_per_s", "evals", "curve")
SPLITS = ("val", "holdout", "test")
# Training images before the validation split is carved (CIFAR-10: make_cifar_holdout.py keeps 45,000).
TRAIN_IMAGES = {"cifar10": 45_000, "fashion-mnist": 60_000}
# Not training settings: where and how a run was written, not what it trained.
MACHINERY = {"recipe", "out", "device", "progress", "resume", "stop_after", "strict", "tensorboard"}
# The values v1.1 uses where a config leaves them unset.
V11 = {"squeeze_ratio": 0.125, "pool_after": "conv1,fire3,fire5"}


# ----------------------------------------------------------------------------- views and evals
def views_name(text: str) -> str:
    """'6v2px', '6 views 2 px', 'flip', 'one' -> the names runs.jsonl uses."""
    t = text.strip().lower().replace(" ", "")
    if t in ("one", "none", "1", "noflip"):
        return "one"
    if t in ("flip", "2", "2v", "2views"):
        return "flip"
    if t.startswith("6v") and t.endswith("px"):
        return f"6 views {int(t[2:-2].removeprefix('iews'))} px"
    return text.strip()


def eval_views(d: dict) -> str:
    """The views a `squeezenet eval --json` result averaged: one image, + its mirror, + shifts."""
    if not d.get("tta"):
        return "one"
    shift = d.get("tta_shift") or 0
    return "flip" if shift == 0 else f"6 views {shift} px"


def eval_entry(path: Path, dataset: str, split: str | None = None, views: str | None = None) -> dict:
    d = json.loads(path.read_text())
    if "top1" not in d:
        raise SystemExit(f"{path}: not a `squeezenet eval --json` result (no top1)")
    if split is None:
        split = "holdout" if d.get("split") == "test" and dataset == "cifar10" else d.get("split", "val")
    if split not in SPLITS:
        raise SystemExit(f"{path}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    e = {"split": split, "views": views_name(views) if views else eval_views(d), "top1": d["top1"],
         "top5": d.get("top5"), "count": d.get("count"), "file": path.name}
    if d.get("loss") is not None:
        e["loss"] = round(d["loss"], 4)
    return e


def epoch_evals(run: Path, metrics: list[dict], tta: bool) -> list[dict]:
    """The per-epoch validation's best epoch (best_val.json) and last epoch; it averages the image
    and its mirror when the run has --tta."""
    views = "flip" if tta else "one"
    out = []
    best = run / "best_val.json"
    if best.is_file():
        d = json.loads(best.read_text())
        if d.get("top1") is not None:
            out.append({"split": "val", "views": views, "top1": d["top1"], "top5": d.get("top5"),
                        "count": d.get("count"), "file": best.name, "epoch": d.get("epoch"),
                        **({"loss": round(d["loss"], 4)} if d.get("loss") is not None else {})})
    last = metrics[-1] if metrics else {}
    if last.get("val_acc") is not None:
        out.append({"split": "val", "views": views, "top1": last["val_acc"], "top5": last.get("val_top5"),
                    "count": last.get("val_count"), "file": "metrics.jsonl", "epoch": last["epoch"],
                    **({"loss": last["val_loss"]} if last.get("val_loss") is not None else {})})
    return out


# ----------------------------------------------------------------------------- the run itself
def summary(metrics: list[dict], config: dict | None) -> dict:
    """Seconds of training (evaluation excluded), epochs, and images per second over the whole run
    (each epoch's rate weighted by its seconds); with --time-budget also the epochs' worth of images."""
    seconds = sum(m["seconds"] for m in metrics)
    images = sum(m["seconds"] * m["images_per_s"] for m in metrics)
    out = {"train_seconds": round(seconds, 1), "epochs": len(metrics),
           "images_per_s": round(images / seconds, 1) if seconds else None,
           "train_acc_last": metrics[-1]["train_acc"] if metrics else None, "epochs_worth": None}
    dataset = (config or {}).get("dataset")
    if config and config.get("time_budget") and dataset in TRAIN_IMAGES and not config.get("train_size"):
        n = TRAIN_IMAGES[dataset]
        out["epochs_worth"] = round(images / (n - round(n * config.get("val_fraction", 0.1))), 1)
    return out


def safetensors_params(path: Path) -> int | None:
    """Trainable parameters in a checkpoint, read from the safetensors header (no torch needed):
    every tensor but BatchNorm's running statistics."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    total = 0
    for name, t in header.items():
        if name == "__metadata__" or name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        size = 1
        for s in t["shape"]:
            size *= s
        total += size
    return total


def machine() -> str:
    """CPU model, core count, the matrix units that set its speed, and torch's version, e.g.
    'Intel(R) Xeon(R) Processor (2 cores, AMX-BF16/INT8), torch 2.13.0+cpu'."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    units = ("AMX-BF16/INT8" if {"amx_bf16", "amx_int8"} <= flags else
             "AVX512-BF16" if "avx512_bf16" in flags else "AVX512-VNNI" if "avx512_vnni" in flags else "")
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return f"{model or 'unknown CPU'} ({os.cpu_count()} cores{', ' + units if units else ''}), torch {torch}"


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None


# ----------------------------------------------------------------------------- the command
def _normalised(values: dict, image_size: int | None) -> dict:
    v = dict(values)
    if v.get("arch", "squeezenet1_1") == "squeezenet1_1":
        for k, default in V11.items():
            if v.get(k) is None:
                v[k] = default
    if v.get("crop_pad") is None and image_size:
        v["crop_pad"] = max(1, round(image_size / 8))  # data.py's default: 1/8 of the image
    if v.get("split_seed") is not None and v.get("split_seed") == v.get("seed"):
        v["split_seed"] = None
    return v


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:g}m" if abs(minutes * 2 - round(minutes * 2)) < 1e-9 else f"{seconds:g}s"


def train_command(config: dict, defaults: dict | None = None, recipes: dict | None = None) -> str | None:
    """`squeezenet train --recipe R` plus each flag whose value in ``config`` differs from what the
    recipe now gives (``defaults``: TrainConfig's, ``recipes``: squeezenet.recipes.RECIPES); None
    when a value cannot be given as a flag."""
    if defaults is None or recipes is None:
        from squeezenet.config import TrainConfig
        from squeezenet.recipes import RECIPES

        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        recipes = RECIPES
    recipe = config.get("recipe") or config.get("dataset") or "shapes"
    if recipe not in recipes:
        return None
    base = {**defaults, **recipes[recipe]}
    size = config.get("image_size") or base.get("image_size")
    run, now = _normalised(config, size), _normalised(base, size)
    flags, tail = [], {}
    for key in defaults:
        if key in MACHINERY:
            continue
        a, b = run.get(key, defaults[key]), now.get(key)
        if key.startswith("muon_") and run.get("optimizer") != "muon":
            continue
        if key == "crop_pad" and not str(run.get("augment", "")).startswith("crop"):
            continue
        if key == "time_budget" and a is None and b is not None:
            tail["epochs"] = ["--epochs", str(run["epochs"])]  # an explicit length drops the recipe's budget
            continue
        if a == b:
            continue
        name = "--" + key.replace("_", "-")
        if isinstance(a, bool):
            item = [name if a else "--no-" + key.replace("_", "-")]
        elif a is None:
            return None  # unset in the run, set in the recipe: no flag says "unset"
        elif key == "time_budget":
            item = [name, _duration(a)]
        else:
            item = [name, f"{a:g}" if isinstance(a, float) else str(a)]
        if key in ("data_dir", "val_fraction", "epochs", "time_budget", "train_size", "seed", "split_seed"):
            tail[key] = item
        else:
            flags += item
    order = ("data_dir", "val_fraction", "epochs", "time_budget", "train_size", "seed", "split_seed")
    tail_flags = [x for k in order if k in tail for x in tail[k]]
    out = ["--out", config["out"]] if config.get("out") else []
    return " ".join(["squeezenet", "train", "--recipe", recipe, *flags, *tail_flags, *out])


# ----------------------------------------------------------------------------- the row
def slug(name: str) -> str:
    """A row name as an id part: 'fashion-mnist recipe + 1 px crops (`--crop-pad 1`)' ->
    'fashion-mnist-recipe-1-px-crops'."""
    name = re.sub(r"\([^)]*\)|`[^`]*`", "", name.lower())
    return re.sub(r"[^a-z0-9.]+", "-", name).strip("-.")


def load_runs(path: Path = RUNS) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record(run_dir: str | Path, id: str, group: str, evals: list[dict] | None = None, command: str | None = None,
           note: str | None = None, curve: bool = False, runs: Path = RUNS, machine_name: str | None = None,
           **extra) -> dict:
    """Append the row of the run in ``run_dir`` to ``runs`` and return it. ``evals``: dicts with
    ``file`` (a `squeezenet eval --json` result) and optionally ``split`` and ``views``."""
    run = Path(run_dir)
    config_path, metrics_path = run / "config.json", run / "metrics.jsonl"
    if not config_path.is_file() or not metrics_path.is_file():
        raise SystemExit(f"{run}: not a finished run directory (needs config.json and metrics.jsonl)")
    if any(r["id"] == id for r in load_runs(runs)):
        raise SystemExit(f"{runs} already has a run with id {id!r}: ids are unique")
    config = json.loads(config_path.read_text())
    metrics = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    dataset = config.get("dataset")
    scored = epoch_evals(run, metrics, bool(config.get("tta")))
    for e in evals or []:
        scored.append(eval_entry(Path(e["file"]), dataset, e.get("split"), e.get("views")))
    checkpoint = run / "best.safetensors"
    row = {"id": id, "dataset": dataset, "recipe": config.get("recipe"), "group": group,
           "date": datetime.date.today().isoformat(), "commit": git_commit(), "machine": machine_name or machine(),
           "command": command or train_command(config), "config": config,
           "params": safetensors_params(checkpoint) if checkpoint.is_file() else None,
           **summary(metrics, config), "evals": scored, "curve": f"curves/{id}.jsonl" if curve else None,
           **extra}
    if note:
        row["note"] = note
    if curve:
        (runs.parent / "curves").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(metrics_path, runs.parent / row["curve"])
    runs.parent.mkdir(parents=True, exist_ok=True)
    with open(runs, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def parse_eval(text: str) -> dict:
    """'split=holdout,views=6v2px,file=e.json' (or just the file) -> a dict."""
    if "=" not in text:
        return {"file": text}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in ("split", "views", "file"):
            raise argparse.ArgumentTypeError(f"--eval takes split=, views= and file=, got {key!r}")
        out[key] = value
    if "file" not in out:
        raise argparse.ArgumentTypeError(f"--eval needs file=..., got {text!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("run_dir")
    p.add_argument("--id", required=True, help="short, unique, readable: dataset-what[-final][-sN]")
    p.add_argument("--group", required=True, help="the experiment or table the run belongs to")
    p.add_argument("--eval", action="append", default=[], type=parse_eval, metavar="split=S,views=V,file=F")
    p.add_argument("--command", help="default: rebuilt from the config")
    p.add_argument("--note", help="one sentence: what changed against the recipe of its date")
    p.add_argument("--machine", help="default: this machine's CPU model, cores and torch version")
    p.add_argument("--curve", action="store_true", help="keep metrics.jsonl as curves/ID.jsonl")
    p.add_argument("--runs", type=Path, default=RUNS, help=f"default: {RUNS}")
    args = p.parse_args(argv)
    row = record(args.run_dir, args.id, args.group, args.eval, args.command, args.note, args.curve, args.runs,
                 args.machine)
    print(json.dumps({k: row[k] for k in ("id", "group", "date", "commit", "machine", "command")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
